"""Small statistics for the study: mean with a t-based confidence interval, and paired-difference verdicts.

A study trains every method once per seed. A cell of the report is the mean over seeds with the two-sided
95 % interval ``mean ± t(0.975, n - 1) · s / sqrt(n)`` (Student's t, ``s`` the sample standard deviation).
A claim "method is better than its baseline" is decided on the per-seed differences (method minus baseline,
same seed): it *agrees* or *disagrees* only when the interval of their mean excludes 0, otherwise it is
*within noise*. With one seed there is no interval, and no verdict. The seeds share their test images, so the
t intervals leave out image sampling; :func:`binomial_half_width` gives that part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t: ``q`` with P(|T| <= q) = level (12.706 for df = 1 at 95 %)."""
    from scipy.stats import t  # the train extra's dependency

    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(t.ppf(0.5 + level / 2, int(df)))


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the half-width of its confidence interval (None when n < 2)."""

    mean: float
    half_width: Optional[float]
    n: int

    @property
    def low(self) -> Optional[float]:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> Optional[float]:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """True when the interval exists and 0 lies outside it (a point interval at 0 includes 0)."""
        return self.half_width is not None and (self.low > 0 or self.high < 0)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and t-based two-sided ``level`` interval of ``values`` (NaN and None are dropped).

    Returns ``Interval(nan, None, 0)`` for no values and ``half_width=None`` for a single value.
    """
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return Interval(float("nan"), None, 0)
    mean = sum(vals) / n
    if n == 1:
        return Interval(mean, None, 1)
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return Interval(mean, t_quantile(n - 1, level) * math.sqrt(var / n), n)


AGREES, DISAGREES, WITHIN_NOISE, NO_INTERVAL = "agrees", "disagrees", "within noise", "one seed: no interval"


@dataclass(frozen=True)
class Verdict:
    """Paired comparison: the interval of the mean per-seed difference and what it says about the claim."""

    diff: Interval
    verdict: str  # AGREES, DISAGREES, WITHIN_NOISE or NO_INTERVAL
    seeds: tuple


def paired_verdict(method: dict, baseline: dict, expected: int, level: float = 0.95) -> Verdict:
    """Decide a claim on paired per-seed differences.

    Args:
        method, baseline: ``{seed: value}``; only seeds present (and finite) in both are paired.
        expected: +1 if the claim says the method's value is higher than the baseline's, -1 if lower.

    ``agrees`` / ``disagrees`` only when the interval of the mean difference excludes 0 (its sign then
    matches / contradicts ``expected``); otherwise ``within noise``; with fewer than 2 pairs no interval.
    """
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1, got {expected}")
    seeds = tuple(sorted(s for s in method if s in baseline and _finite(method[s]) and _finite(baseline[s])))
    diff = mean_ci([method[s] - baseline[s] for s in seeds], level)
    if diff.n < 2:
        verdict = NO_INTERVAL
    elif diff.excludes_zero():
        verdict = AGREES if diff.mean * expected > 0 else DISAGREES
    else:
        verdict = WITHIN_NOISE
    return Verdict(diff, verdict, seeds)


def _finite(v) -> bool:
    return v is not None and not math.isnan(float(v))


def format_interval(iv: Interval, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """``"71.5 ± 1.2"`` (values times ``scale``); just the mean with one value; ``"–"`` with none."""
    if iv.n == 0:
        return "–"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(scale * iv.mean)
    if iv.half_width is not None:
        text += f" ± {scale * iv.half_width:.{digits}f}"
    return text


def binomial_half_width(accuracies: Sequence[float], n: int, level: float = 0.95) -> float:
    """Half-width of the image-sampling interval of an accuracy measured on ``n`` images (normal approximation
    ``z · sqrt(p (1 - p) / n)``); for several accuracies on the same images (e.g. a mean over corruptions), the
    mean of their half-widths: the bound for fully correlated errors, never narrower than the truth.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 images, got {n}")
    vals = [float(p) for p in accuracies if _finite(p)]
    if not vals or any(not 0 <= p <= 1 for p in vals):
        raise ValueError(f"accuracies must be numbers in [0, 1], got {list(accuracies)}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return sum(z * math.sqrt(p * (1 - p) / n) for p in vals) / len(vals)
