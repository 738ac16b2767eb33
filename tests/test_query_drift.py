"""vexkd_train.distill_diagnostics.query_drift (tools/query_drift.py): the drift it reports
is measured from the initialisation the teacher command builds (so an untrained teacher has
not moved)."""
import pytest
import torch

from vexkd_core.config import load_config
from vexkd_core.models.vexkd import build_model
from vexkd_train.distill_diagnostics import query_drift

pytestmark = pytest.mark.unit

CONFIG = load_config("tiny")


def test_a_teacher_as_built_has_not_moved_and_a_moved_query_shows_it():
    torch.manual_seed(CONFIG.train.seed)  # as `vexkd-train teacher` builds it
    teacher = build_model(CONFIG, "fusion")
    drift = query_drift(teacher)
    assert drift["cosine_to_init"] == pytest.approx(1.0) and drift["relative_change"] == pytest.approx(0.0)
    with torch.no_grad():
        teacher.fuser.bev_query.add_(torch.randn_like(teacher.fuser.bev_query) * 0.02)
    moved = query_drift(teacher)
    assert moved["relative_change"] == pytest.approx(1.0, abs=0.05)  # an equal-sized offset
    assert moved["cosine_to_init"] == pytest.approx(2 ** -0.5, abs=0.05)  # orthogonal in expectation
