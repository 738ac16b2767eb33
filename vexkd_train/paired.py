"""Paired comparisons over seeds: how large a row's gain over its baseline is, how sure, and
the smallest gain the experiment could have detected.

Students of the same seed share their initialisation and data order, so a row is compared with
its baseline seed by seed: the differences d_i are what varies. With n seeds, mean d and
sample standard deviation s:

- the 95 % interval of the mean gain is mean +- t(0.975, n-1) s / sqrt(n);
- the minimum detectable difference (two-sided 5 % test, 80 % power) is
  (t(0.975, n-1) + t(0.80, n-1)) s / sqrt(n): a true gain this large is found four times in
  five; a smaller one mostly is not, so a row inside it is "no difference shown", not "no
  difference";
- several comparisons read together are judged by Holm's step-down, so that the chance of
  any false one stays at 5 %.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from scipy.stats import t as student_t

CONFIDENCE = 0.95
POWER = 0.80


@dataclass(frozen=True)
class PairedDifference:
    mean: float
    low: float  # the 95 % interval of the mean difference
    high: float
    sd: float  # sample standard deviation of the seed-by-seed differences
    seeds: int
    detectable: float  # minimum detectable difference at 80 % power
    p_value: float  # two-sided paired t-test of no difference

    @property
    def shown(self) -> bool:
        """The interval excludes zero: a difference at the 5 % level."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(values: list[float], reference: list[float]) -> PairedDifference:
    """`values` against `reference`, both in seed order; with one seed the interval and the
    detectable difference are unknown (nan)."""
    if len(values) != len(reference) or not values:
        raise ValueError(f"a paired difference needs the same seeds on both sides, not {len(values)} "
                         f"against {len(reference)}")
    differences = [value - base for value, base in zip(values, reference)]
    n, mean = len(differences), statistics.fmean(differences)
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n, math.nan, math.nan)
    sd = statistics.stdev(differences)
    error = sd / math.sqrt(n)
    critical = student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)
    p_value = (0.0 if mean else 1.0) if error == 0 else float(2 * student_t.sf(abs(mean) / error, n - 1))
    return PairedDifference(mean, mean - critical * error, mean + critical * error, sd, n,
                            (critical + student_t.ppf(POWER, n - 1)) * error, p_value)


def holm(p_values: list[float], family: float = 1 - CONFIDENCE, size: int | None = None) -> list[bool]:
    """Which of several comparisons show a difference when the chance of any false one is held
    at `family` (Holm's step-down: the k-th smallest p against family / (m - k + 1)). `size`
    (m): the comparisons fixed in advance, when some of them could not be made (default: these)."""
    shown = [False] * len(p_values)
    size = len(p_values) if size is None else size
    order = sorted(range(len(p_values)), key=lambda i: (math.isnan(p_values[i]), p_values[i]))  # unknown last
    for rank, index in enumerate(order):
        if math.isnan(p_values[index]) or p_values[index] > family / (size - rank):
            break
        shown[index] = True
    return shown


def seeds_needed(sd: float, target: float, most: int = 200) -> int | None:
    """The fewest seeds whose minimum detectable difference is at most `target` for differences
    of standard deviation `sd` (None: more than `most`)."""
    for n in range(2, most + 1):
        error = sd / math.sqrt(n)
        if (student_t.ppf(0.5 + CONFIDENCE / 2, n - 1) + student_t.ppf(POWER, n - 1)) * error <= target:
            return n
    return None
