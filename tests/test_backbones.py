"""The torchvision-layout ResNets, checked without torchvision: torchvision's published
parameter counts and key names, strict loading of a file in its layout, one-line errors
for wrong files, BN statistics kept as loaded, and the camera encoder running on them."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vexkd_core.config import Config, load_config
from vexkd_core.errors import CheckpointError
from vexkd_core.models.camera_encoder import CameraEncoder
from vexkd_core.models.resnet import ResNet, resnet

pytestmark = pytest.mark.unit

# torchvision.models.resnet*(num_classes=1000): parameters and state-dict entries, fc included
PUBLISHED = {"resnet18": (11_689_512, 122), "resnet34": (21_797_672, 218), "resnet50": (25_557_032, 320)}
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


def classifier(trunk: ResNet) -> nn.Linear:
    """torchvision's fc: what the trunk lacks to be the full ImageNet classifier."""
    return nn.Linear(trunk.out_channels[-1], 1000)


def torchvision_state(name: str, counters: bool = True) -> dict[str, torch.Tensor]:
    """A state dict as torchvision saves one for `name`: random values, fc.* and, unless
    `counters` is False (files older than PyTorch 0.4.1), the BN num_batches_tracked."""
    trunk = resnet(name)
    state = {key: torch.randn_like(value) if value.is_floating_point() else torch.randint_like(value, 1000)
             for key, value in trunk.state_dict().items() if counters or not key.endswith("num_batches_tracked")}
    state.update((f"fc.{key}", torch.randn_like(value)) for key, value in classifier(trunk).state_dict().items())
    return state


def saved(path: Path, state: object) -> str:
    torch.save(state, path)
    return str(path)


def camera_config(**fields) -> Config:
    return load_config("tiny", [f"model.camera.{key}={value}" for key, value in fields.items()])


def camera_encoder(config: Config) -> CameraEncoder:
    return CameraEncoder(config.model.camera, config.grid.bev, (config.grid.z_min_m, config.grid.z_max_m),
                         config.model.bev_channels)


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_and_key_counts_equal_torchvision(name):
    trunk = resnet(name)
    head = classifier(trunk)
    parameters, entries = PUBLISHED[name]
    assert sum(p.numel() for p in trunk.parameters()) + sum(p.numel() for p in head.parameters()) == parameters
    assert len(trunk.state_dict()) + len(head.state_dict()) == entries


@pytest.mark.parametrize("name, key, shape", [
    ("resnet50", "conv1.weight", (64, 3, 7, 7)),
    ("resnet50", "layer1.0.downsample.0.weight", (256, 64, 1, 1)),
    ("resnet50", "layer1.0.downsample.1.running_mean", (256,)),
    ("resnet50", "layer3.5.bn3.running_var", (1024,)),
    ("resnet50", "layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("resnet34", "layer3.5.conv2.weight", (256, 256, 3, 3)),
    ("resnet18", "layer2.0.downsample.1.num_batches_tracked", ()),
    ("resnet18", "layer4.1.conv2.weight", (512, 512, 3, 3)),
])
def test_well_known_keys_have_torchvision_shapes(name, key, shape):
    assert tuple(resnet(name).state_dict()[key].shape) == shape


def test_resnet_stages_have_strides_4_to_32():
    features = resnet("resnet18")(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]


@pytest.mark.parametrize("counters", [True, False])
def test_a_torchvision_file_loads_strictly_into_the_camera_encoder(tmp_path, counters):
    state = torchvision_state("resnet18", counters)
    encoder = camera_encoder(camera_config(backbone="resnet18",
                                           pretrained_backbone=saved(tmp_path / "resnet18-f37072fd.pth", state)))
    loaded = encoder.backbone.state_dict()
    assert {key for key in loaded if counters or not key.endswith("num_batches_tracked")} == \
        set(state) - set(CLASSIFIER_KEYS)
    for key, value in state.items():
        if key not in CLASSIFIER_KEYS:
            assert torch.equal(loaded[key], value), key


def batch_norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("pretrained, norm_eval, backbone_trains", [
    (True, True, False),  # pretrained statistics are kept as loaded
    (True, False, True),
    (False, True, True),  # a backbone trained from scratch must learn its statistics
])
def test_backbone_batch_norm_statistics(tmp_path, pretrained, norm_eval, backbone_trains):
    fields = {"backbone": "resnet18", "backbone_norm_eval": norm_eval}
    if pretrained:
        fields["pretrained_backbone"] = saved(tmp_path / "r18.pth", torchvision_state("resnet18"))
    encoder = camera_encoder(camera_config(**fields))
    for _ in range(2):  # also after eval(), as the frozen teacher is switched
        assert {m.training for m in batch_norms(encoder.backbone)} == {backbone_trains}
        assert {m.training for m in batch_norms(encoder.neck)} == {True}
        encoder.eval()
        assert not any(m.training for m in encoder.modules())
        encoder.train()


def wrong_files(tmp_path) -> dict[str, tuple[str, str, str]]:
    """Wrong file -> (the backbone it is given to, its path, what the error must say)."""
    resnet18 = torchvision_state("resnet18")
    whole = tmp_path / "resnet18.pth"
    torch.save(resnet18, whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a torch file\n")
    wider = {**resnet18, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    return {
        "resnet18 weights for resnet50": ("resnet50", str(whole), "does not fit resnet50: missing keys "
                                          "layer1.0.conv3.weight, layer1.0.bn3.weight, layer1.0.bn3.bias ("),
        "resnet34 weights for resnet18": ("resnet18", saved(tmp_path / "resnet34.pth", torchvision_state("resnet34")),
                                          "does not fit resnet18: unexpected keys layer1.2.conv1.weight, "
                                          "layer1.2.bn1.weight, layer1.2.bn1.bias ("),
        "a conv of another shape": ("resnet18", saved(tmp_path / "wider.pth", wider), "does not fit resnet18: shape "
                                    "mismatch at layer1.0.conv1.weight: file (64, 64, 1, 1), model (64, 64, 3, 3)"),
        "half the bytes": ("resnet18", str(truncated), "is not a readable torch file"),
        "a text file": ("resnet18", str(text), "is not a readable torch file"),
        "a list": ("resnet18", saved(tmp_path / "list.pth", list(resnet18.values())), "holds a list, not a state dict"),
        "a training checkpoint": ("resnet18", saved(tmp_path / "ckpt.pth", {"state_dict": resnet18, "epoch": 90}),
                                  "is not a state dict: 'state_dict' holds a dict, not a tensor"),
        "no file": ("resnet18", str(tmp_path / "absent.pth"), "does not exist"),
    }


def test_wrong_files_are_one_line_errors_naming_the_file(tmp_path):
    for case, (backbone, path, message) in wrong_files(tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            camera_encoder(camera_config(backbone=backbone, pretrained_backbone=path))
        assert "\n" not in str(error.value) and path in str(error.value) and message in str(error.value), case


def test_backbone_settings_are_validated():
    with pytest.raises(ValueError, match="model.camera.backbone must be one of small, resnet18, resnet34, resnet50"):
        camera_config(backbone="resnet101")
    with pytest.raises(ValueError, match="backbone_channels is for backbone=small only"):
        camera_config(backbone="resnet50", backbone_channels="[256, 512, 1024, 2048]")
    assert load_config("tiny").model.camera.backbone == "small"  # the demo's and existing checkpoints' network


def test_nuscenes_preset_feeds_resnet50_stages_to_the_neck():
    config = load_config("nuscenes")
    assert config.model.camera.backbone == "resnet50"
    assert [conv.in_channels for conv in camera_encoder(config).neck.lateral] == [512, 1024, 2048]


def camera_inputs(cameras: int = 2, height: int = 96, width: int = 256) -> tuple[torch.Tensor, ...]:
    """Images and calibration of cameras 1.5 m up, the first looking forward, the others turned about z."""
    intrinsics = torch.tensor([[120.0, 0, width / 2], [0, 120.0, height / 2], [0, 0, 1]]).expand(1, cameras, 3, 3)
    camera_axes_in_lidar = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # x right, y down, z forward
    camera_to_lidar = torch.eye(4).repeat(1, cameras, 1, 1)
    for index in range(cameras):
        yaw = 2 * math.pi * index / cameras
        turn = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        camera_to_lidar[0, index, :3, :3] = turn @ camera_axes_in_lidar
        camera_to_lidar[0, index, 2, 3] = 1.5
    image_transform = torch.eye(3).expand(1, cameras, 3, 3)
    return (torch.randn(1, cameras, 3, height, width), intrinsics, camera_to_lidar, image_transform, torch.eye(4)[None],
            torch.ones(1, cameras, dtype=torch.bool))


def test_resnet18_camera_encoder_gives_the_bev_map_the_model_expects():
    torch.manual_seed(0)
    config = camera_config(backbone="resnet18")
    inputs = camera_inputs()
    encoder = camera_encoder(config)
    bev = encoder(*inputs)
    grid = config.grid.bev
    assert bev.shape == (1, config.model.bev_channels, grid.height, grid.width)
    assert bev.shape == camera_encoder(load_config("tiny"))(*inputs).shape  # what the decoder and heads take today
    assert torch.isfinite(bev).all() and bev.abs().sum() > 0  # the frusta land on the grid
    bev.square().mean().backward()
    assert encoder.backbone.conv1.weight.grad.abs().sum() > 0  # the BEV map is trained through the backbone


def test_a_checkpoint_trained_from_imagenet_weights_loads_without_the_file(tmp_path):
    """The checkpoint holds the trained backbone; the robot that runs it has no ImageNet file."""
    from vexkd_core.checkpoint import model_from_checkpoint, save_checkpoint
    from vexkd_core.models.vexkd import build_model

    weights = tmp_path / "resnet18-f37072fd.pth"
    config = camera_config(backbone="resnet18", pretrained_backbone=saved(weights, torchvision_state("resnet18")))
    model = build_model(config, "camera")
    save_checkpoint(tmp_path / "camera.pt", model, config, "camera")
    weights.unlink()
    loaded, loaded_config, _ = model_from_checkpoint(tmp_path / "camera.pt")
    assert loaded_config.model.camera.pretrained_backbone == str(weights)  # the record of how it was trained
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
