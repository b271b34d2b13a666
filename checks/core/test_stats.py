"""The statistics helpers: calibrated size, real power, informative messages (issue 2, item 5)."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from theorems.reporting import Verdict
from theorems.stats import (
    FALSE_FAIL_RATE,
    Estimate,
    assert_rejects,
    binomial_pvalue,
    chi2_independence_pvalue,
    compare,
    control_variate_mean,
    extrapolate,
    extrapolation_first_point_shift,
    extrapolation_power_gap,
    fit_chi2_per_dof,
    fit_slope,
    intercept_shift,
    log_factor_allowance,
    mean_estimate,
    median_estimate,
    paired_slope,
    uniformity_pvalue,
)

TRIALS = 4000


@pytest.mark.statistical(1)
def test_mean_comparison_has_its_stated_size(seed):
    """Under a true prediction the rejection count of the t-interval at level 0.99 is Binomial(TRIALS, 0.01)
    (a level with enough rejections to see a miscalibration), and compare() uses the suite's per-assertion level."""
    rng = np.random.default_rng(seed)
    rejections = 0
    for _ in range(TRIALS):
        lo, hi = mean_estimate(rng.normal(1.0, 2.0, 12)).interval(0.99)
        rejections += not lo <= 1.0 <= hi
    # one-sided: more rejections than the level would be a miscalibrated (too narrow) interval
    assert stats.binom.sf(rejections - 1, TRIALS, 0.01) > FALSE_FAIL_RATE, rejections
    assert compare("mean", mean_estimate([0.0, 1.0]), 0.5).level == 1 - FALSE_FAIL_RATE


def test_mean_comparison_has_power_beyond_min_discrepancy(seed):
    """A prediction off by 1.5x the detectable discrepancy is rejected (nearly) always."""
    rng = np.random.default_rng(seed)
    misses = 0
    for _ in range(500):
        est = mean_estimate(rng.normal(0.0, 1.0, 50))
        cmp = compare("mean", est, 0.0, model_error=0.1)
        wrong = compare("mean", est, est.value + 1.5 * cmp.min_discrepancy, model_error=0.1)
        misses += wrong.consistent
    assert misses == 0


def test_model_error_widens_the_interval():
    est = Estimate(1.0, 0.01, 100, 101)
    assert not compare("x", est, 1.2).consistent
    assert compare("x", est, 1.2, model_error=0.2).consistent
    with pytest.raises(ValueError, match="model_error"):
        compare("x", est, 1.2, model_error=-1)


class _Item:
    """The part of a pytest item the verdict recorder reads: markers and user_properties."""

    def __init__(self, *marks):
        self.marks, self.user_properties = marks, []

    def iter_markers(self, name):
        return (m for m in self.marks if m.name == name)

    def get_closest_marker(self, name):
        return next(self.iter_markers(name), None)


def test_failure_message_names_everything():
    """The verdict adds the test's claim id and seed and the sizes stated once; the message names them all."""
    verdict = Verdict(_Item(pytest.mark.claim("critical-init").mark), seed=1234)
    verdict.sizes.update(n=64, L=100)
    cmp = compare("slope of E log||J||", Estimate(0.5, 0.01, 30, 31), 0.0, model_error=0.02)
    with pytest.raises(AssertionError) as err:
        verdict.check(cmp)
    msg = str(err.value)
    assert f"{100 * (1 - FALSE_FAIL_RATE):.6g}% CI" in msg and "100% CI" not in msg, msg  # not rounded to 100%
    stored = json.loads(verdict._item.user_properties[0][1])
    assert stored["claim"] == "critical-init" and stored["sizes"] == {"n": 64, "L": 100} and stored["seed"] == 1234
    for piece in ["critical-init", "slope of E log||J||", "prediction 0", "observed 0.5", "CI [", "model error",
                  "n=31", "n=64", "L=100", "seed=1234"]:
        assert piece in msg, piece
    assert_rejects(cmp)
    with pytest.raises(AssertionError, match="REJECTED"):
        assert_rejects(compare("x", Estimate(0.0, 0.01, 30, 31), 0.0))


def test_collapse_is_a_result_not_nan():
    est = mean_estimate([1.0, -math.inf, 2.0])
    assert est.value == -math.inf
    assert not compare("x", est, 0.0).consistent
    with pytest.raises(ValueError, match="NaN"):
        mean_estimate([1.0, math.nan])
    s = paired_slope([0.0, 0.0, 0.0], [1.0, -math.inf, 2.0], 1, 3)
    assert s.value == -math.inf


@pytest.mark.statistical(1)
def test_median_interval_coverage(seed):
    rng = np.random.default_rng(seed)
    misses = sum(not (lambda e: e.interval()[0] <= 0.0 <= e.interval()[1])(median_estimate(rng.standard_cauchy(41)))
                 for _ in range(2000))
    assert stats.binom.sf(misses - 1, 2000, FALSE_FAIL_RATE) > FALSE_FAIL_RATE


@pytest.mark.statistical(1)
def test_extrapolation_interval_covers_the_limit(seed):
    """a + b/n data with known noise: the 1-FALSE_FAIL_RATE interval on a covers the truth."""
    rng = np.random.default_rng(seed)
    ns = np.array([32, 64, 128, 256, 512.0])
    misses = 0
    for _ in range(1000):
        se = 0.01 * np.ones_like(ns)
        y = 2.0 + 3.0 / ns + rng.normal(0, se)
        a, b, pfit = extrapolate(ns, y, se, power=1.0)
        lo, hi = a.interval()
        misses += not (lo <= 2.0 <= hi)
    assert stats.binom.sf(misses - 1, 1000, FALSE_FAIL_RATE) > FALSE_FAIL_RATE
    # power: a wrong exponent is visible in the goodness of fit
    y = 2.0 + 3.0 / np.sqrt(ns)
    assert extrapolate(ns, y, 1e-3 * np.ones_like(ns), power=1.0)[2] < 1e-6


def test_fit_slope_recovers_known_slopes(seed):
    rng = np.random.default_rng(seed)
    x = np.arange(10.0)
    s = fit_slope(x, 0.3 * x + rng.normal(0, 0.01, 10))
    lo, hi = s.interval()
    assert lo <= 0.3 <= hi and hi - lo < 0.05
    s = fit_slope(x, 0.3 * x, stderrs=np.full(10, 0.01))
    assert s.value == pytest.approx(0.3)


def test_weighted_slope_error_is_inflated_by_the_birge_ratio_never_deflated():
    """A weighted slope keeps the error its stated errors give when the points lie on a line (chi^2/dof <= 1), and
    is widened by sqrt(chi^2/dof) when they scatter more (curvature, understated errors); zero or infinite stated
    errors are refused, not floored."""
    x = np.log([16.0, 32.0, 64.0, 128.0])
    e = np.full(4, 0.05)
    on_line = fit_slope(x, -x, e)
    scattered = -x + np.array([0.1, -0.1, -0.1, 0.1])
    wide = fit_slope(x, scattered, e)
    chi2 = fit_chi2_per_dof(x, scattered, e)
    assert chi2 > 1 and wide.stderr == pytest.approx(on_line.stderr * math.sqrt(chi2))
    assert fit_slope(x, -x + np.array([0.01, -0.01, -0.01, 0.01]), e).stderr == pytest.approx(on_line.stderr)
    for bad in (0.0, math.inf):
        with pytest.raises(ValueError, match="stderrs"):
            fit_slope(x, -x, [0.05, bad, 0.05, 0.05])


def test_headroom_is_negative_exactly_when_a_check_fails():
    """headroom = log10(p / alpha): p the smallest rate at which the check would still pass; its sign is the verdict
    (two-sided, one-sided upper, with a model error, and a significance test), and a wider miss has less headroom."""
    for kind, est in (("two-sided", 1.0), ("two-sided", 1.3), ("two-sided", 0.55), ("upper", 1.2), ("upper", 0.5)):
        for me in (0.0, 0.2):
            c = compare("s", Estimate(est, 0.1, 30, 31), 0.9, model_error=me)
            c.kind = kind
            assert (c.headroom >= 0) == c.consistent, (kind, est, me, c.headroom)
    near = compare("s", Estimate(1.0, 0.1, math.inf, 100), 0.95)
    far = compare("s", Estimate(1.0, 0.1, math.inf, 100), 0.8)
    assert near.headroom > far.headroom
    edge = 1.0 + 0.1 * stats.norm.isf((1 - near.level) / 2)  # the prediction on the interval's edge
    exact = compare("s", Estimate(1.0, 0.1, math.inf, 100), edge)
    assert exact.headroom == pytest.approx(0.0, abs=1e-9)


def test_censored_bootstrap_replicates_are_kept_not_dropped():
    """No crossing within the grid (+inf) widens the error through the central 68% instead of vanishing from it;
    more than 16% censored leaves no usable error; a spread of zero (all at the grid's edge) is an error."""
    from theorems.experiments import censored_bootstrap_stderr

    r = np.random.default_rng(0).normal(0.0, 1.0, 400)
    assert censored_bootstrap_stderr(r) == pytest.approx(1.0, rel=0.1)
    some = np.where(np.arange(400) < 40, np.inf, r)  # 10% censored
    assert censored_bootstrap_stderr(some) > censored_bootstrap_stderr(r[40:])
    assert censored_bootstrap_stderr(np.where(np.arange(400) < 80, np.inf, r)) == math.inf  # 20% censored
    with pytest.raises(ValueError, match="censored"):
        censored_bootstrap_stderr(np.zeros(400))


def test_fit_chi2_per_dof_measures_scatter_in_units_of_the_stated_errors(seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, 400)
    e = np.full(x.size, 0.1)
    assert fit_chi2_per_dof(x, 2 * x + rng.normal(0, 0.1, x.size), e) == pytest.approx(1.0, abs=0.25)
    assert fit_chi2_per_dof(x, 2 * x + rng.normal(0, 0.3, x.size), e) == pytest.approx(9.0, rel=0.25)
    assert fit_chi2_per_dof([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == pytest.approx(0.0, abs=1e-20)


def test_log_factor_allowance_is_the_exact_slope_error_of_a_log_factor():
    """A hidden factor log(x)^b moves the fitted exponent by exactly b * allowance(power=1), for the same points
    and weights; |b| <= power is absorbed, a larger power is not."""
    x = np.array([16.0, 32.0, 64.0, 128.0, 256.0])
    w = np.array([0.1, 0.2, 0.1, 0.3, 0.2])
    for b in (-1.0, 0.5, 1.0):
        y = -1.0 * np.log(x) + b * np.log(np.log(x))
        assert fit_slope(np.log(x), y, w).value == pytest.approx(-1.0 + b * log_factor_allowance(x, stderrs=w))
    assert 0.2 < log_factor_allowance(x) < 0.3  # about 1 / log n at these widths
    assert log_factor_allowance(x, 2.0) == pytest.approx(2 * log_factor_allowance(x))
    with pytest.raises(ValueError, match="x > 1"):
        log_factor_allowance([1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="power"):
        log_factor_allowance(x, math.nan)


@pytest.mark.statistical(2)  # the two size assertions at 1e-6 (below the per-assertion rate)
def test_classical_tests_have_size_and_power(seed):
    rng = np.random.default_rng(seed)
    assert binomial_pvalue(500, 1000, 0.5) > 0.9
    assert binomial_pvalue(600, 1000, 0.5) < 1e-6
    a = rng.integers(0, 2, 2000)
    assert chi2_independence_pvalue(a, rng.integers(0, 2, 2000)) > 1e-6  # size: fails once in a million
    assert chi2_independence_pvalue(a, a ^ (rng.random(2000) < 0.2)) < 1e-6
    assert uniformity_pvalue(rng.random(500)) > 1e-6
    assert uniformity_pvalue(rng.random(500) ** 2) < 1e-6
    assert chi2_independence_pvalue(np.ones(50), a[:50]) == 1.0  # a constant gate is independent of everything


def test_miss_probability_of_a_negative_control():
    """The estimated probability that a repetition would not reject: about 1/2 when the wrong prediction sits at the
    interval's edge, tiny far beyond it, and from the normal deviate of the p-value for a classical test."""
    from theorems.stats import significance_test

    est = Estimate(0.0, 1.0, math.inf, 100)
    edge = compare("x", est, 0.0).half_width
    assert compare("x", est, edge).miss_probability == pytest.approx(0.5, abs=1e-9)
    assert compare("x", est, edge + 8.0).miss_probability < 1e-12
    assert compare("x", est, edge + 1.0, model_error=1.0).miss_probability == pytest.approx(0.5, abs=1e-9)
    assert significance_test("p", 0.0, n=10).miss_probability == 0.0
    at_level = significance_test("p", FALSE_FAIL_RATE, n=10).miss_probability
    assert at_level == pytest.approx(0.5, abs=1e-9)


def test_below_comparison_asserts_an_effect_and_reports_its_power_shortfall():
    """compare_below: consistent iff the whole interval (plus model error) lies below the bound; as a check its
    record carries the chance a repetition would not detect the effect, as a control the chance it would."""
    from theorems.stats import compare_below

    est = Estimate(-1.0, 0.1, math.inf, 100)
    edge = compare_below("x", est, 0.0).half_width
    assert compare_below("x", est, 0.0).consistent
    assert not compare_below("x", est, -1.0 + edge).consistent  # the bound inside the interval
    assert not compare_below("x", est, 0.0, model_error=1.0).consistent
    at_edge = compare_below("x", est, -1.0 + edge + 1e-12)
    assert at_edge.power_shortfall == pytest.approx(0.5, abs=1e-6)
    far = compare_below("x", est, 0.0)
    assert far.power_shortfall < 1e-6 and far.to_record("check")["miss_probability"] == far.power_shortfall
    assert far.to_record("negative-control")["miss_probability"] == pytest.approx(1 - far.power_shortfall)
    assert compare("x", est, 0.0).to_record("check")["miss_probability"] is None


def test_run_budget_counts_slots_and_fails_over_budget():
    from theorems.budget import ASSERTION_SLOTS, PER_ASSERTION_RATE
    from theorems.reporting import run_budget

    check = {"role": "check", "slots": 0.5, "level": 1 - PER_ASSERTION_RATE / 2, "miss_probability": None}
    control = {"role": "negative-control", "slots": 1.0, "level": 1 - PER_ASSERTION_RATE, "miss_probability": 1e-3}
    xfail = {"role": "check", "slots": 1.0, "level": 1 - PER_ASSERTION_RATE, "miss_probability": 0.2,
             "expected_to_fail": True}
    effect = {"role": "check", "slots": 1.0, "level": 1 - PER_ASSERTION_RATE, "miss_probability": 2e-5}  # kind below
    tests = [{"records": [check, check, control]}, {"records": [xfail, dict(xfail, miss_probability=1e-6)]},
             {"records": [], "statistical_slots": 3}, {"records": [effect]}]
    b = run_budget(tests)
    assert b["slots_used"] == pytest.approx(1 + 1 + 1 + 3 + 1)  # a strict xfail is one slot, its miss the smallest
    assert b["estimated_false_fail_probability"] == pytest.approx(
        PER_ASSERTION_RATE + 1e-3 + 1e-6 + 3 * PER_ASSERTION_RATE + 2e-5)  # a "below" check: its power shortfall
    assert b["within_budget"]
    assert not run_budget([{"records": [], "statistical_slots": ASSERTION_SLOTS + 1}])["within_budget"]


def test_geometric_window_bias_is_exact_for_a_geometric_transient():
    """E X(L) = a L + c + A e^(-rate L): the later window's bias is recovered exactly from the two windows' slopes."""
    from theorems.experiments import geometric_window_bias

    a, c, amp, rate, (l0, l1, l2) = 0.017, 0.3, -1.4, 0.02, (20, 80, 140)
    x = {ell: a * ell + c + amp * math.exp(-rate * ell) for ell in (l0, l1, l2)}
    early, late = (x[l1] - x[l0]) / (l1 - l0), (x[l2] - x[l1]) / (l2 - l1)
    assert geometric_window_bias(early, late, rate, l1 - l0) == pytest.approx(abs(late - a), rel=1e-12)
    with pytest.raises(ValueError, match="rate"):
        geometric_window_bias(early, late, 0.0, 60)


def test_log_gap_slope_of_linear_log_singular_values():
    """log s_k(l) = gamma_k l + c_k: the pooled gap of modes i < j grows at (gamma_i - gamma_j)/(j - i) per layer, per
    network (claim spectral-separation); modes out of order or an empty window are refused."""
    from theorems.experiments import log_gap_slope

    gamma, c = np.array([-0.01, -0.03, -0.06, -0.1]), np.array([[0.5, 0.1, -0.2, -0.9], [0.0, -0.4, -0.5, -1.0]])
    values = {ell: c + gamma * ell for ell in (10, 30, 50)}
    np.testing.assert_allclose(log_gap_slope(values, 2, 4, 30, 50), [(gamma[1] - gamma[3]) / 2] * 2, rtol=1e-12)
    np.testing.assert_allclose(log_gap_slope(values, 1, 2, 10, 30), [gamma[0] - gamma[1]] * 2, rtol=1e-12)
    with pytest.raises(ValueError, match="upper"):
        log_gap_slope(values, 3, 3, 10, 30)
    with pytest.raises(ValueError, match="start"):
        log_gap_slope(values, 1, 2, 30, 30)

def test_secant_exponent_of_a_power_law_and_its_error():
    """x^-1/2 sampled at 4 and 64: the secant is -1/2 exactly; independent end points add their errors in quadrature."""
    from theorems.stats import Estimate, secant_exponent

    xs = [4, 8, 64]
    ests = [Estimate(-0.5 * math.log(x), 0.03, math.inf, 10) for x in xs]
    got = secant_exponent(xs, ests)
    assert got.value == pytest.approx(-0.5, abs=1e-12)
    assert got.stderr == pytest.approx(math.hypot(0.03, 0.03) / math.log(16), rel=1e-12)
    with pytest.raises(ValueError, match="increasing"):
        secant_exponent([64, 4], ests[:2])


def test_ratio_of_means_estimate_delta_method():
    """A constant denominator c gives mean(X)/c with X's standard error over |c|; X proportional to Y gives the
    constant with no error (the delta method's X - R Y vanishes); bad input names the problem."""
    from theorems.stats import mean_estimate, ratio_of_means_estimate

    x = np.array([0.3, -0.1, 0.5, 0.2])
    got = ratio_of_means_estimate(x, np.full(4, -2.0))
    assert got.value == pytest.approx(x.mean() / -2.0, abs=1e-15)
    assert got.stderr == pytest.approx(mean_estimate(x).stderr / 2.0, rel=1e-12)
    assert (got.dof, got.n) == (3, 4)
    y = np.array([-1.0, -2.0, -0.5, -3.0])
    exact = ratio_of_means_estimate(0.1 * y, y)
    assert exact.value == pytest.approx(0.1, abs=1e-15) and exact.stderr == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="paired"):
        ratio_of_means_estimate(x, y[:3])
    with pytest.raises(ValueError, match="non-zero"):
        ratio_of_means_estimate(x, np.array([1.0, -1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="finite"):
        ratio_of_means_estimate(x, np.array([1.0, np.nan, 1.0, 1.0]))


def test_log_mean_estimate_delta_method():
    from theorems.stats import log_mean_estimate

    got = log_mean_estimate(np.array([-2.0, -4.0]))  # mean -3, stderr 1
    assert got.value == pytest.approx(math.log(3)) and got.stderr == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="non-zero mean"):
        log_mean_estimate(np.array([1.0, -1.0]))


def test_extrapolation_power_gap_is_zero_only_when_the_powers_agree_on_the_intercept():
    """Exact data a + b n^-1/2: the n^-1/2 intercept is a, the n^-1 one is not; their distance is the gap."""
    n = np.array([32.0, 64, 128, 256])
    y = 1.0 + 2.0 * n**-0.5
    ses = np.full(n.size, 1e-3)
    a_one = extrapolate(n, y, ses, power=1.0)[0].value
    assert extrapolation_power_gap(n, y, ses, powers=(0.5, 1.0)) == pytest.approx(abs(1.0 - a_one), rel=1e-6)
    assert abs(1.0 - a_one) > 0.05
    assert extrapolation_power_gap(n, np.full(n.size, 3.0), ses) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="powers"):
        extrapolation_power_gap(n, y, ses, powers=(1.0, 1.0))


def test_intercept_shift_is_the_difference_of_the_two_fits_with_its_propagated_error():
    """The shift equals a(p1) - a(p2) of :func:`extrapolate`, and its standard error is the linear propagation of
    the values' errors: the gradient of the shift, by finite differences of the two fits, dotted with the errors."""
    n = np.array([48.0, 96, 192, 384])
    y = 4.0 - 3.0 * n ** (-2 / 3) + 5.0 / n
    ses = np.array([0.05, 0.04, 0.03, 0.02])
    shift = intercept_shift(n, y, ses, powers=(2 / 3, 1.0))

    def gap(values):
        return extrapolate(n, values, ses, power=2 / 3)[0].value - extrapolate(n, values, ses, power=1.0)[0].value

    assert shift.value == pytest.approx(gap(y), rel=1e-7)
    h = 1e-4
    grad = np.array([(gap(y + h * e) - gap(y - h * e)) / (2 * h) for e in np.eye(n.size)])
    # curve_fit stops at a relative parameter change of ~1.5e-8; over a step h that is ~1e-4 of the gradient
    assert shift.stderr == pytest.approx(float(np.sqrt(np.sum((grad * ses) ** 2))), rel=1e-3)
    assert extrapolation_power_gap(n, y, ses, powers=(2 / 3, 1.0)) == pytest.approx(abs(shift.value))
    with pytest.raises(ValueError, match="powers"):
        intercept_shift(n, y, ses, powers=(1.0, 1.0))


def test_control_variate_mean_is_the_regression_line_at_the_known_mean():
    """The estimate and its error are those of the least-squares line of Y on C evaluated at E[C] (computed here
    from the normal equations' covariance), and the error falls by about sqrt(1 - r^2) against the plain mean."""
    rng = np.random.default_rng(7)
    c = rng.normal(1.0, 0.5, 400)
    y = 3.0 + 2.0 * (c - 1.0) + rng.normal(0.0, 0.5, 400)  # r^2 = 0.8
    got = control_variate_mean(y, c, 1.0)
    design = np.column_stack([np.ones_like(c), c])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    cov = resid @ resid / (y.size - 2) * np.linalg.inv(design.T @ design)
    at = np.array([1.0, 1.0])
    assert got.value == pytest.approx(at @ coef, rel=1e-12)
    assert got.stderr == pytest.approx(math.sqrt(at @ cov @ at), rel=1e-10)
    assert got.dof == y.size - 2
    assert got.stderr / mean_estimate(y).stderr == pytest.approx(math.sqrt(1 - 0.8), rel=0.15)
    with pytest.raises(ValueError, match="paired"):
        control_variate_mean(y, c[:-1], 1.0)
    assert control_variate_mean(np.array([1.0, -np.inf, 2.0]), np.ones(3), 1.0).value == -np.inf


def test_extrapolation_first_point_shift_vanishes_on_an_exact_law_and_sees_a_next_order_term():
    L = np.array([24.0, 48, 96, 192])
    ses = np.full(L.size, 1e-4)
    exact = 0.3 + 1.5 / L
    assert extrapolation_first_point_shift(L, exact, ses) == pytest.approx(0.0, abs=1e-9)
    curved = exact + 20.0 / L**2  # an O(1/L²) rest moves the intercept when the shallowest depth is dropped
    assert extrapolation_first_point_shift(L, curved, ses) > 1e-3
    with pytest.raises(ValueError, match="at least 4"):
        extrapolation_first_point_shift(L[:3], exact[:3], ses[:3])
