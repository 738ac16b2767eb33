"""Paired differences over seeds (vexkd_train.paired): the interval covers the true gain 95 %
of the time, and a true gain as large as the minimum detectable difference is found 80 % of
the time, checked by drawing seed-by-seed differences many times."""
import math

import cv2
import numpy as np
import pytest
from scipy.stats import ttest_1samp, ttest_rel

from vexkd_train.paired import holm, paired_difference, seeds_needed

pytestmark = pytest.mark.unit


def test_the_difference_is_paired_seed_by_seed():
    # The seeds differ by 0.05; the row is 0.02 better in each: no spread in the difference.
    difference = paired_difference([0.22, 0.27, 0.32], [0.20, 0.25, 0.30])
    assert difference.mean == pytest.approx(0.02) and difference.sd == pytest.approx(0.0, abs=1e-12)
    assert difference.low == pytest.approx(0.02) and difference.shown
    single = paired_difference([0.3], [0.2])
    assert single.mean == pytest.approx(0.1) and math.isnan(single.low) and math.isnan(single.detectable)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.1, 0.2], [0.1])


@pytest.mark.parametrize("seeds", [4, 8, 16])
def test_coverage_and_power_hold_when_drawn(seeds):
    generator = np.random.default_rng(seeds)
    sd, draws = 0.015, 2000
    # The MDD for this sd (the design figure: what a study of `seeds` seeds can find).
    detectable = paired_difference(list(generator.normal(0, sd, seeds)), [0.0] * seeds)
    design = detectable.detectable * sd / detectable.sd
    covered = found = 0
    for _ in range(draws):
        null = generator.normal(0.0, sd, seeds)
        interval = paired_difference(list(null), [0.0] * seeds)
        covered += interval.low <= 0.0 <= interval.high
        gain = generator.normal(design, sd, seeds)
        found += ttest_1samp(gain, 0.0).pvalue < 0.05
    assert abs(covered / draws - 0.95) < 0.02
    # The t-based formula is a close approximation of the noncentral t's power.
    assert abs(found / draws - 0.80) < 0.045


def test_the_p_value_is_the_paired_t_tests_and_holm_steps_down():
    values, reference = [0.31, 0.28, 0.35, 0.30], [0.29, 0.27, 0.30, 0.31]
    assert paired_difference(values, reference).p_value == pytest.approx(ttest_rel(values, reference).pvalue)
    # Against 0.05 / 4, 0.05 / 3, ...: the second smallest (0.03 > 0.0167) stops the steps.
    assert holm([0.01, 0.04, 0.03, 0.5]) == [True, False, False, False]
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]
    assert holm([float("nan"), 0.001]) == [False, True]
    # Two of four comparisons fixed in advance made: each is judged as one of four.
    assert holm([0.02, 0.013], size=4) == [False, False] and holm([0.016, 0.012], size=4) == [True, True]


def test_seeds_needed_reaches_the_target_and_no_fewer_do():
    def detectable(sd: float, n: int) -> float:
        """The MDD of n seeds whose differences have sample standard deviation `sd`."""
        spread = np.arange(n, dtype=float)
        values = sd * (spread - spread.mean()) / spread.std(ddof=1)
        return paired_difference(list(values), [0.0] * n).detectable

    needed = seeds_needed(0.015, 0.02)
    assert detectable(0.015, needed) <= 0.02 < detectable(0.015, needed - 1)
    assert seeds_needed(0.015, 0.02) < seeds_needed(0.03, 0.02)
    assert seeds_needed(1.0, 0.001, most=50) is None


def _row(values: dict[str, list[float]], baseline: str | None) -> dict:
    return {**{metric: {"values": seeds, "mean": float(np.mean(seeds)), "std": float(np.std(seeds))} if seeds else None
               for metric, seeds in values.items()}, "seeds": 3, "baseline": baseline}


def test_the_study_report_gives_each_row_its_interval_and_the_noise_by_world():
    from vexkd_train.pictures import gains_picture
    from vexkd_train.study_report import study_sections

    def table(shift: float) -> dict:  # seeds differ by 0.05; "whole map" is `shift` better in each
        base = [0.20, 0.25, 0.30]
        return {"no FD": _row({"mAP": base, "NDS": base, "mIoU": base}, None),
                "whole map": _row({"mAP": [v + shift + e for v, e in zip(base, (0.0, 0.01, -0.01))],
                                   "NDS": base, "mIoU": [v + shift for v in base]}, "no FD"),
                "generated, random query": _row({"mAP": base, "NDS": base, "mIoU": base}, "no FD"),
                "generated, fusion query (VeXKD)": _row({"mAP": base, "NDS": base,
                                                         "mIoU": [v + e for v, e in zip(base, (0.01, 0.0, 0.02))]},
                                                        "no FD")}

    results = {"tables": {"study-lidar": table(0.03)}, "val_samples": 16,
               "test": {"tables": {"study-lidar": table(0.03), "study-map-teacher": table(0.03)}, "val_samples": 512}}
    text = "\n".join(study_sections(results))
    row = next(line for line in text.splitlines() if line.startswith("| whole map"))
    # mAP gains 0.03, 0.04, 0.02: mean 0.03, sd 0.01, t(0.975, 2) = 4.303 -> +-0.0248; shown (bold)
    assert "**+0.0300 [+0.0052, +0.0548]**" in row
    # mIoU gains are 0.03 in every seed: no spread, an interval of one point, an MDD of 0
    assert "**+0.0300 [+0.0300, +0.0300]**, 0.0000" in row
    # The study's questions that this table holds, judged on the test world: VeXKD against the whole
    # map's mIoU (-0.02, -0.03, -0.01) and against the random query's (+0.01, 0, +0.02).
    questions = [line for line in text.splitlines() if line.startswith(("| do masks", "| does the teacher's"))]
    assert len(questions) == 2 and "## The study's questions, test world (3 seeds)" in text
    assert "| -0.0200 | [-0.0448, +0.0048] |" in questions[0] and "| +0.0100 |" in questions[1]
    # The map-only teacher's family, judged on its own: the three of its four questions its table holds.
    assert "## The map-only teacher's questions, test world (3 seeds)" in text
    assert text.count("over the 4 questions of this family") == 2  # each family's Holm counts all four
    helps = next(line for line in text.splitlines() if line.startswith("| does a map-only teacher's whole map"))
    assert "| study-map-teacher, mIoU | +0.0300 |" in helps
    noise = [line for line in text.splitlines() if line.startswith(("| test world", "| training world's val"))]
    assert len(noise) == 2 and "| 512 |" in noise[0] and "| 16 |" in noise[1]
    picture = cv2.imdecode(np.frombuffer(gains_picture(results["test"]["tables"], "test world"), np.uint8),
                           cv2.IMREAD_COLOR)
    assert picture.shape[:2] == (460, 6 * 420)  # a panel per metric of each table, 4.2 x 4.6 in at 100 dpi


def test_the_noise_inside_the_test_world_parts_shared_from_seed_specific_spread():
    """Two seeds, four parts; gain g[s, p] = seed effect (0.02, 0.03) + part effect shared by
    both seeds (-0.01, +0.01, -0.01, +0.01) + seed x part interaction (+-0.004, opposite in
    the two seeds). Whole-split gains 0.02 and 0.03 (sd 0.00707). Shared part sd 0.01155, its
    sampling error 0.01155 / sqrt(4); interaction variance 8 x 0.004^2 / 3 (residual df
    (2 - 1)(4 - 1)), of which a quarter reaches a whole-split gain: 21 % of the seed
    variance. The shared part effect moves no seed against another and counts for none."""
    from vexkd_train.study_report import evaluation_noise, study_sections

    def table(mAP_gains: list[float]) -> dict:
        base = [0.20, 0.30]
        return {"study-lidar": {"no FD": _row({"mAP": base, "NDS": None, "mIoU": None}, None),
                                "whole map": _row({"mAP": [b + g for b, g in zip(base, mAP_gains)],
                                                   "NDS": None, "mIoU": None}, "no FD")}}

    shared, interaction = (-0.01, 0.01, -0.01, 0.01), (0.004, -0.004, -0.004, 0.004)
    parts = [{"tables": table([0.02 + b + e, 0.03 + b - e])} for b, e in zip(shared, interaction)]
    world = {"tables": table([0.02, 0.03]), "val_samples": 512, "parts": parts}
    noise = evaluation_noise(world)["mAP"]
    assert noise["between_seeds"] == pytest.approx(0.01 / math.sqrt(2))
    assert noise["shared"] == pytest.approx(math.sqrt(0.0004 / 3))
    assert noise["sampling"] == pytest.approx(math.sqrt(0.0004 / 3) / 2)
    assert noise["interaction"] == pytest.approx(math.sqrt(8 * 0.004 ** 2 / 3))
    assert noise["share"] == pytest.approx((8 * 0.004 ** 2 / 3 / 4) / 0.00005)
    text = "\n".join(study_sections({"tables": world["tables"], "val_samples": 16, "test": world}))
    assert "## Evaluation noise inside the test world" in text and "(about 128 samples each)" in text
    assert "| mAP | 0.0071 | 0.0115 | 0.0058 | 0.0065 | 21 % |" in text
    # Without an interaction the seeds' spread holds no evaluation noise, however much parts differ.
    alike = [{"tables": table([0.02 + b, 0.03 + b])} for b in shared]
    assert evaluation_noise({**world, "parts": alike})["mAP"]["share"] == pytest.approx(0.0, abs=1e-12)
    # One seed: the shared spread is measured, the interaction and its share are not.
    single = evaluation_noise({"tables": table([0.02]),
                               "parts": [{"tables": table([0.02 + b])} for b in shared]})["mAP"]
    assert single["shared"] == pytest.approx(math.sqrt(0.0004 / 3)) and math.isnan(single["share"])
