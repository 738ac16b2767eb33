"""Masked attention transfer keeps the whole map's normalisation (docs/method.md): a mask of
all ones is whole-map AT bit for bit, a uniform mask of any value is the whole map, and how
the student spreads its energy between regions is distilled; soft masks count by their
token weights. MSE keeps MasKD's normalisation (a mean over the masked cells)."""
import pytest
import torch

from vexkd_core.distill.losses import MaskedDistillLoss, attention_distances, feature_distance

pytestmark = pytest.mark.unit


def _features(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, 6, 6, generator=generator), torch.randn(2, 8, 6, 6, generator=generator)


def test_a_mask_of_all_ones_is_whole_map_attention_transfer_bit_for_bit():
    student, teacher = _features()
    at = MaskedDistillLoss(8, 8, "at")
    whole = attention_distances(student, teacher).mean()
    assert torch.equal(at(student, teacher, torch.ones(2, 1, 6, 6)), whole)
    assert torch.equal(at(student, teacher, torch.ones(2, 1, 6, 6), torch.ones(2, 1)), whole)
    assert torch.equal(whole, feature_distance(student, teacher, "at"))
    # Of any value, a uniform mask is the whole map: it selects nothing.
    assert at(student, teacher, torch.full((2, 1, 6, 6), 0.02)).item() == pytest.approx(whole.item(), rel=1e-5)


def test_rescaling_one_region_of_the_student_changes_the_loss_of_a_mask_on_it():
    """Normalising each masked map on its own would match only the shape inside the mask:
    the student's energy in the masked region against the rest would never be distilled."""
    teacher = _features()[1]
    student = teacher.clone()
    region = torch.zeros(2, 1, 6, 6)
    region[..., :3, :3] = 1
    at = MaskedDistillLoss(8, 8, "at")
    assert at(student, teacher, region).item() == pytest.approx(0.0, abs=1e-12)
    louder = torch.where(region > 0, 2 * student, student)  # the same shape inside, twice the energy
    assert at(louder, teacher, region).item() > 1e-3
    quieter_outside = torch.where(region > 0, student, 0.5 * student)  # only the rest changes
    assert at(quieter_outside, teacher, region).item() > 1e-3


def test_soft_masks_count_by_their_token_weights():
    student, teacher = _features(1)
    left, right = torch.zeros(2, 1, 6, 6), torch.zeros(2, 1, 6, 6)
    left[..., :3] = 0.8
    right[..., 3:] = 0.3
    masks = torch.cat([left, right], 1)
    at = MaskedDistillLoss(8, 8, "at")
    alone = [at(student, teacher, mask[:, None]).item() for mask in masks.unbind(1)]
    weighted = at(student, teacher, masks, torch.tensor([[0.9, 0.1], [0.9, 0.1]])).item()
    assert weighted == pytest.approx(0.9 * alone[0] + 0.1 * alone[1], rel=1e-5)
    assert at(student, teacher, masks).item() == pytest.approx(sum(alone) / 2, rel=1e-5)  # no weights: the mean


def test_mse_is_a_mean_over_the_masked_cells_as_masked_kd_divides_it():
    student, teacher = _features(2)
    mse = MaskedDistillLoss(8, 8, "mse")
    assert mse(student, teacher, torch.ones(2, 1, 6, 6)).item() == pytest.approx(
        torch.nn.functional.mse_loss(student, teacher).item(), rel=1e-5)
    mask = torch.zeros(2, 1, 6, 6)
    mask[..., :2, :] = 0.5
    # sum over cells of (m (s - t))^2 / sum of m, then the mean over channels and samples (MasKD)
    expected = ((mask * (student - teacher)) ** 2).sum((2, 3)) / mask.sum((2, 3))
    assert mse(student, teacher, mask).item() == pytest.approx(expected.mean().item(), rel=1e-5)
