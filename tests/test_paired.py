"""Paired differences over seeds (vexkd_train.paired): the interval covers the true gain 95 %
of the time, and a true gain as large as the minimum detectable difference is found 80 % of
the time, checked by drawing seed-by-seed differences many times."""
import math

import numpy as np
import pytest
from scipy.stats import ttest_1samp

from vexkd_train.paired import paired_difference, seeds_needed

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
