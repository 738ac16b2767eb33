"""Random-weight models whose heatmap logits are spread to mean -6, std 2 on a sample.

Untrained heads give nearly equal scores everywhere (std 1e-5), so which of two near-tied
cells peaks would be decided by float noise; spread scores make box comparisons between
two runs of the same model (node and eval, onnxruntime and torch) strict."""
import torch

from vexkd_core.models.vexkd import build_model


def spread_model(config, modality: str, batch, seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(config, modality).eval()
    classifier = model.heads["detection"].heatmap[-1]
    with torch.no_grad():
        logits = (model(batch).detection["heatmap"][0] - classifier.bias[:, None, None]).flatten(1)
        scale = 2.0 / logits.std(dim=1)
        classifier.weight *= scale[:, None, None, None]
        classifier.bias.copy_(-6.0 - scale * logits.mean(dim=1))
    return model
