"""Statistics of the study: t quantiles, the mean's confidence interval and paired-difference verdicts."""
import math

import pytest

from jafr_kernels.eval import stats


@pytest.mark.parametrize("df,q", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452), (120, 1.9799)])
def test_t_quantile_matches_the_table(df, q):
    assert stats.t_quantile(df) == pytest.approx(q, abs=1e-4)


def test_t_quantile_other_levels_and_limits():
    assert stats.t_quantile(4, 0.90) == pytest.approx(2.1318, abs=1e-4)
    assert stats.t_quantile(10, 0.99) == pytest.approx(3.1693, abs=1e-4)
    assert stats.t_quantile(5000) == pytest.approx(1.9600, abs=1e-3)  # tends to the normal quantile
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t_quantile(0)
    with pytest.raises(ValueError, match="level"):
        stats.t_quantile(3, 1.5)


def test_mean_ci_known_values():
    iv = stats.mean_ci([1.0, 2.0, 3.0])  # mean 2, sample sd 1
    assert iv.mean == pytest.approx(2.0) and iv.n == 3
    assert iv.half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert iv.low == pytest.approx(2 - 2.4841, abs=1e-4) and iv.high == pytest.approx(2 + 2.4841, abs=1e-4)
    iv = stats.mean_ci([0.70, 0.74, 0.72, 0.71, 0.73])  # sd 0.0158, t(4) = 2.776
    assert iv.half_width == pytest.approx(2.7764 * math.sqrt(0.00025) / math.sqrt(5), rel=1e-4)


def test_mean_ci_one_value_has_no_interval_and_nan_is_dropped():
    iv = stats.mean_ci([0.5, float("nan"), None])
    assert iv.mean == 0.5 and iv.half_width is None and iv.n == 1 and not iv.excludes_zero()
    assert stats.mean_ci([]).n == 0
    assert stats.format_interval(iv) == "50.0"
    assert stats.format_interval(stats.mean_ci([])) == "–"
    assert stats.format_interval(stats.mean_ci([0.1, 0.2, 0.3]), signed=True) == "+20.0 ± 24.8"


def test_paired_verdict_agrees_disagrees_within_noise():
    base = {0: 0.50, 1: 0.60, 2: 0.55}
    better = {0: 0.53, 1: 0.62, 2: 0.58}  # differences +3, +2, +3 pp: interval excludes 0
    v = stats.paired_verdict(better, base, expected=+1)
    assert v.verdict == stats.AGREES and v.seeds == (0, 1, 2)
    assert v.diff.mean == pytest.approx(0.08 / 3)
    assert stats.paired_verdict(better, base, expected=-1).verdict == stats.DISAGREES
    # the per-seed spread of the raw values (10 points) does not matter: the pairing removes it
    assert stats.mean_ci(list(better.values())).half_width > 0.1


def test_verdict_flips_to_within_noise_when_differences_straddle_zero():
    base = {0: 0.50, 1: 0.60, 2: 0.55}
    agrees = {0: 0.53, 1: 0.62, 2: 0.58}
    assert stats.paired_verdict(agrees, base, +1).verdict == stats.AGREES
    straddles = {**agrees, 1: 0.57}  # differences +3, -3, +3 pp
    v = stats.paired_verdict(straddles, base, +1)
    assert v.verdict == stats.WITHIN_NOISE
    assert v.diff.low < 0 < v.diff.high


def test_paired_verdict_pairs_by_seed_and_needs_two_pairs():
    base = {0: 0.5, 1: 0.6, 7: 0.9}
    method = {0: 0.6, 1: 0.7, 3: 0.1}  # only seeds 0 and 1 pair up
    v = stats.paired_verdict(method, base, +1)
    assert v.seeds == (0, 1) and v.diff.mean == pytest.approx(0.1)
    assert v.verdict == stats.AGREES  # identical differences: a point interval at +0.1 excludes 0
    one = stats.paired_verdict({0: 0.6}, {0: 0.5}, +1)
    assert one.verdict == stats.NO_INTERVAL and one.diff.half_width is None
    tie = stats.paired_verdict({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}, +1)
    assert tie.verdict == stats.WITHIN_NOISE  # a point interval at 0 includes 0
    with pytest.raises(ValueError, match="expected"):
        stats.paired_verdict(method, base, 0)


def test_binomial_half_width():
    from jafr_kernels.eval.stats import binomial_half_width

    # z(0.975) = 1.959964: 1.96 * sqrt(0.8 * 0.2 / 1000) = 0.02479
    assert binomial_half_width([0.8], 1000) == pytest.approx(1.959964 * (0.16 / 1000) ** 0.5, rel=1e-6)
    assert binomial_half_width([0.0], 10) == 0 and binomial_half_width([1.0], 10) == 0
    # several accuracies on the same images: the mean of their half-widths (the fully correlated bound)
    assert binomial_half_width([0.5, 0.9], 100) == pytest.approx((0.098 + 0.0588) / 2, rel=1e-3)
    assert binomial_half_width([0.5, None], 100) == binomial_half_width([0.5], 100)
    with pytest.raises(ValueError, match="n must be"):
        binomial_half_width([0.5], 0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        binomial_half_width([1.5], 10)
