"""Statistics for the checks: calibrated comparisons, extrapolation, slopes, classical tests.

Calibration (after tensorflow-probability's ``statistical_testing``): every comparison is a
two-sided interval at confidence ``1 - FALSE_FAIL_RATE`` around the estimate, widened by a stated
model error (finite-size bias), and it passes iff the prediction lies inside.  ``FALSE_FAIL_RATE`` is
the per-assertion share of the suite's budget (:mod:`theorems.budget`: 1% for a whole run, split by
Bonferroni over a fixed number of assertion slots), so any master seed passes with probability at least
99% when the library and the theory are right; ``python -m theorems.calibrate`` measures it.

Power (TFP's ``min_discrepancy``): :meth:`Comparison.min_discrepancy` is the smallest error the
comparison can detect (interval half-width + model error).  A negative control asserts that a
specified wrong prediction is *rejected*, which shows the check can fail; its own spurious failure is a
miss, whose probability :meth:`Comparison.miss_probability` estimates (it must stay below the slot's rate).

Everything uses scipy (``stats.t``, ``optimize.curve_fit``, ``stats.chi2_contingency``,
``stats.binomtest``, ``stats.kstest``); nothing here re-implements a distribution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from .budget import PER_ASSERTION_RATE

__all__ = [
    "FALSE_FAIL_RATE",
    "Estimate",
    "Comparison",
    "mean_estimate",
    "control_variate_mean",
    "median_estimate",
    "per_layer_slopes",
    "paired_slope",
    "extrapolate",
    "intercept_shift",
    "fit_slope",
    "log_mean_estimate",
    "secant_exponent",
    "difference_estimate",
    "ratio_of_means_estimate",
    "fit_chi2_per_dof",
    "log_factor_allowance",
    "compare",
    "assert_consistent",
    "assert_rejects",
    "significance_test",
    "compare_at_most",
    "compare_below",
    "binomial_pvalue",
    "chi2_independence_pvalue",
    "uniformity_pvalue",
    "correlation_pvalue",
]

#: Per-assertion false-failure probability of every statistical comparison in the suite (its share of the suite's
#: budget, :mod:`theorems.budget`).
FALSE_FAIL_RATE = PER_ASSERTION_RATE


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a standard error and the degrees of freedom of its t-interval."""

    value: float
    stderr: float
    dof: float
    n: int

    def interval(self, level: float = 1 - FALSE_FAIL_RATE) -> tuple[float, float]:
        if not math.isfinite(self.value):
            return (self.value, self.value)
        if self.stderr == 0:
            return (self.value, self.value)
        q = stats.t.ppf(0.5 + level / 2, self.dof) if math.isfinite(self.dof) else stats.norm.ppf(0.5 + level / 2)
        return (self.value - q * self.stderr, self.value + q * self.stderr)


def _as_array(sample) -> np.ndarray:
    try:
        import torch

        if isinstance(sample, torch.Tensor):
            sample = sample.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(sample, dtype=float).ravel()


def mean_estimate(sample) -> Estimate:
    """Sample mean with its t standard error.  Any -inf (a collapse) makes the mean -inf."""
    x = _as_array(sample)
    if x.size < 2:
        raise ValueError(f"sample must have at least 2 values; got {x.size}")
    if np.isnan(x).any():
        raise ValueError("sample contains NaN")
    if not np.isfinite(x).all():
        return Estimate(float(np.mean(x)), math.inf, x.size - 1, x.size)
    return Estimate(float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)), x.size - 1, x.size)


def control_variate_mean(sample, control, control_mean: float) -> Estimate:
    """E[Y] from paired samples (Y_b, C_b) where E[C] = ``control_mean`` is known exactly: the regression estimator
    ``mean(Y) - beta (mean(C) - E[C])``, i.e. the least-squares line of Y on C evaluated at E[C], with its t standard
    error ``s sqrt(1/N + (mean(C) - E[C])^2 / S_CC)`` on N - 2 degrees of freedom (s the residual standard deviation).
    The variance falls by 1/(1 - r^2), r the correlation of Y and C (claim free-limit: C = ||J||_F²/n, whose mean
    (σ²p)^L is exact at every width, removes the gates' and the weights' overall scale from ||J||²).  Non-finite
    values fall back to :func:`mean_estimate`."""
    y, c = _as_array(sample), _as_array(control)
    if y.shape != c.shape:
        raise ValueError(f"sample and control must be paired (equal sizes); got {y.size} and {c.size}")
    if y.size < 3:
        raise ValueError(f"a control-variate mean needs at least 3 pairs; got {y.size}")
    if not (np.isfinite(y).all() and np.isfinite(c).all()):
        return mean_estimate(y)
    dc = c - c.mean()
    scc = float(dc @ dc)
    if scc == 0:
        return mean_estimate(y)
    beta = float(dc @ (y - y.mean())) / scc
    shift = c.mean() - control_mean
    resid = y - y.mean() - beta * dc
    s2 = float(resid @ resid) / (y.size - 2)
    return Estimate(float(y.mean() - beta * shift), math.sqrt(s2 * (1 / y.size + shift**2 / scc)), y.size - 2, y.size)


def median_estimate(sample) -> Estimate:
    """Sample median with a distribution-free (binomial order-statistic) interval.

    The stderr is set so that the t/normal interval at FALSE_FAIL_RATE matches the
    order-statistic interval; -inf values (collapses) are ordinary low values here.
    """
    x = np.sort(_as_array(sample))
    n = x.size
    if n < 8:
        raise ValueError(f"sample must have at least 8 values for a median interval; got {n}")
    lo_i, hi_i = stats.binom.interval(1 - FALSE_FAIL_RATE, n, 0.5)
    lo, hi = x[max(int(lo_i) - 1, 0)], x[min(int(hi_i), n - 1)]
    med = float(np.median(x))
    z = stats.norm.ppf(1 - FALSE_FAIL_RATE / 2)
    half = max(med - lo, hi - med) if np.isfinite([lo, hi]).all() else math.inf
    return Estimate(med, half / z, math.inf, n)


def per_layer_slopes(values_at_l1, values_at_l2, l1: int, l2: int) -> np.ndarray:
    """Per-network ``(X(L2) - X(L1)) / (L2 - L1)``; a collapse at L2 gives -inf (never NaN)."""
    a, b = _as_array(values_at_l1), _as_array(values_at_l2)
    if a.shape != b.shape:
        raise ValueError("paired samples must have equal sizes")
    if l2 <= l1:
        raise ValueError(f"l2 must exceed l1; got l1={l1}, l2={l2}")
    with np.errstate(invalid="ignore"):
        diff = (b - a) / (l2 - l1)
    return np.where(np.isneginf(b), -np.inf, diff)


def paired_slope(values_at_l1, values_at_l2, l1: int, l2: int) -> Estimate:
    """Per-layer slope ``E[(X(L2) - X(L1))] / (L2 - L1)`` from paired per-network values."""
    return mean_estimate(per_layer_slopes(values_at_l1, values_at_l2, l1, l2))


def _intercept_weights(xs, stderrs, power: float) -> np.ndarray:
    """The linear weights w with ``a = w . values`` for the weighted least-squares intercept of
    ``value = a + b x^(-power)`` (the same fit as :func:`extrapolate`)."""
    x, s = _as_array(xs), _as_array(stderrs)
    design = np.column_stack([np.ones_like(x), x ** (-power)]) / s[:, None]
    return np.linalg.pinv(design)[0] / s


def intercept_shift(xs, values, stderrs, powers: tuple[float, float] = (0.5, 1.0)) -> Estimate:
    """``a(p1) - a(p2)``: how far the intercept of ``value = a + b x^(-p)`` (:func:`extrapolate`) moves between two
    candidate leading finite-size powers, with its standard error (the difference is linear in the values, whose
    errors are independent).  When theory does not fix the next-order term this is the model error of an
    extrapolation to x -> inf: evaluate it on data independent of the estimate it widens, and take the upper end of
    its interval where a point estimate of it would be as noisy as the bias it bounds (claim free-limit)."""
    p1, p2 = powers
    if p1 == p2:
        raise ValueError(f"powers must differ; got {powers}")
    y, s = _as_array(values), _as_array(stderrs)
    g = _intercept_weights(xs, s, p1) - _intercept_weights(xs, s, p2)
    return Estimate(float(g @ y), float(np.sqrt(np.sum((g * s) ** 2))), math.inf, y.size)


def extrapolation_power_gap(xs, values, stderrs, powers: tuple[float, float] = (0.5, 1.0)) -> float:
    """``|a(p1) - a(p2)|``, the point estimate of :func:`intercept_shift` (claim stability-theorem)."""
    return abs(intercept_shift(xs, values, stderrs, powers).value)


def extrapolation_first_point_shift(xs, values, stderrs, power: float = 1.0) -> float:
    """``|a(all points) - a(without the first)|`` of ``value = a + b x^(-power)`` (:func:`extrapolate`, the first point
    the farthest from the limit): how much the intercept leans on the point where the omitted next-order term is
    largest, a model error of the extrapolation (claim lyapunov's 1/L correction).  Evaluate it on data independent
    of the estimate it widens."""
    x, y, s = _as_array(xs), _as_array(values), _as_array(stderrs)
    if x.size < 4:
        raise ValueError(f"the first-point shift needs at least 4 points (3 remain); got {x.size}")
    return abs(extrapolate(x, y, s, power=power)[0].value - extrapolate(x[1:], y[1:], s[1:], power=power)[0].value)


def extrapolate(xs, values, stderrs, power: float = 1.0) -> tuple[Estimate, Estimate, float]:
    """Weighted least-squares fit ``value = a + b * x^(-power)``; returns (a, b, p-value of fit).

    Standard errors from ``curve_fit(absolute_sigma=True)``; the goodness-of-fit p-value (chi2 of
    the residuals) tells whether the stated power describes the data.
    """
    x = _as_array(xs)
    y = _as_array(values)
    s = _as_array(stderrs)
    if x.size < 3:
        raise ValueError(f"extrapolation needs at least 3 points; got {x.size}")

    def model(x, a, b):
        return a + b * x ** (-power)

    popt, pcov = optimize.curve_fit(model, x, y, sigma=s, absolute_sigma=True, p0=[y[-1], 0.0])
    resid = (y - model(x, *popt)) / s
    pfit = float(stats.chi2.sf(np.sum(resid**2), x.size - 2))
    return (
        Estimate(float(popt[0]), float(math.sqrt(pcov[0, 0])), math.inf, x.size),
        Estimate(float(popt[1]), float(math.sqrt(pcov[1, 1])), math.inf, x.size),
        pfit,
    )


def log_mean_estimate(values) -> Estimate:
    """log |E[X]| with a delta-method standard error (E[X] > 0 for the norm changes of claims training-stability and
    stagnation-phase, < 0 for approx-trained-gates' gate shift).  A mean of exactly 0 has no logarithm: an error."""
    m = mean_estimate(values)
    if m.value == 0:
        raise ValueError("log |E[X]| needs a non-zero mean; got E[X] = 0")
    return Estimate(math.log(abs(m.value)), m.stderr / abs(m.value), m.dof, m.n)


def ratio_of_means_estimate(numerator, denominator) -> Estimate:
    """E[X] / E[Y] from paired samples, with the delta-method standard error sd(X - R Y) / (sqrt(N) |mean Y|), R the
    estimate (claim descent-convergence: the share of log||J||'s change in the last half of training).  Per-unit
    ratios X_b / Y_b would be heavy-tailed wherever some Y_b is near 0; the ratio of means is not.  A mean of Y of
    exactly 0 is an error."""
    x, y = _as_array(numerator), _as_array(denominator)
    if x.size != y.size or x.size < 2:
        raise ValueError(f"numerator and denominator must be paired samples of >= 2 values; got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ratio of means needs finite samples")
    mean_y = float(y.mean())
    if mean_y == 0:
        raise ValueError("ratio of means needs a non-zero mean denominator; got E[Y] = 0")
    r = float(x.mean()) / mean_y
    return Estimate(r, float((x - r * y).std(ddof=1) / (math.sqrt(x.size) * abs(mean_y))), x.size - 1, x.size)


def difference_estimate(a: Estimate, b: Estimate) -> Estimate:
    """``a - b`` for estimates from independent samples: standard errors in quadrature, the smaller of the two
    degrees of freedom (conservative for the t interval)."""
    return Estimate(a.value - b.value, math.hypot(a.stderr, b.stderr), min(a.dof, b.dof), a.n)


def secant_exponent(xs, log_means: Sequence[Estimate]) -> Estimate:
    """The exponent between the smallest and the largest x, (log E[.](x_max) - log E[.](x_min)) / log(x_max/x_min),
    with its standard error (the two estimates are independent networks): the growth across the range without
    assuming a power law in between (for a curve that bends, a fitted line's error is inflated by its chi^2; the
    secant's is not, and it answers the question asked: does the quantity grow across the range).  Claims
    training-stability, stagnation-phase, approx-trained-gates.  ``xs`` increasing and positive."""
    if len(xs) != len(log_means) or len(xs) < 2 or not (0 < xs[0] < xs[-1]):
        raise ValueError(f"xs must be >= 2 increasing positive points, one per estimate; got xs={list(xs)} for "
                         f"{len(log_means)} estimates")
    lo, hi = log_means[0], log_means[-1]
    span = math.log(xs[-1] / xs[0])
    return Estimate((hi.value - lo.value) / span, math.hypot(hi.stderr, lo.stderr) / span, math.inf, 2)


def fit_slope(xs, values, stderrs=None) -> Estimate:
    """Slope of ``values`` against ``xs`` (weighted if stderrs are given) with its standard error.

    Weighted: the standard error from the stated errors, inflated by ``sqrt(chi^2/dof)`` of the fit when the points
    scatter more than their errors say (the Birge ratio, as the Particle Data Group scales averages; never deflated):
    a line that describes the data keeps its error, curvature or understated errors widen it instead of making the
    slope look precise.  Every stated error must be finite and positive (no floors: a zero error is a bug upstream).
    """
    x, y = _as_array(xs), _as_array(values)
    if x.size < 3:
        raise ValueError(f"a slope needs at least 3 points; got {x.size}")
    if stderrs is None:
        res = stats.linregress(x, y)
        return Estimate(float(res.slope), float(res.stderr), x.size - 2, x.size)
    e = _as_array(stderrs)
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError(f"stderrs must be finite and > 0; got {e.tolist()}")
    coef, cov = np.polyfit(x, y, 1, w=1.0 / e, cov="unscaled")  # exact weighted least squares, errors as stated
    birge = math.sqrt(max(1.0, fit_chi2_per_dof(x, y, e)))
    return Estimate(float(coef[0]), birge * float(math.sqrt(cov[0, 0])), math.inf, x.size)


def fit_chi2_per_dof(xs, values, stderrs) -> float:
    """Goodness of the weighted straight-line fit of :func:`fit_slope`: chi^2 of the residuals in units of
    the stated errors, per degree of freedom (about 1 when a line and the errors describe the data; well above
    1 when the data curve or the errors are too small)."""
    x, y, e = _as_array(xs), _as_array(values), _as_array(stderrs)
    if x.size < 3:
        raise ValueError(f"a fit's chi^2 needs at least 3 points; got {x.size}")
    coef = np.polyfit(x, y, 1, w=1.0 / e)
    return float(np.sum(((y - np.polyval(coef, x)) / e) ** 2) / (x.size - 2))


def log_factor_allowance(xs, power: float = 1.0, stderrs=None) -> float:
    """Model error of a log-log exponent fit for a hidden factor ``log(x)^b`` with ``|b| <= power``.

    A tilde-rate (Θ̃, or "up to logs") hides factors ``log(x)^b``; fitting ``log y`` against ``log x``
    over the design points ``xs`` turns such a factor into an additive slope error of exactly
    ``b * slope(log log x on log x)`` (the (weighted) least-squares slope is linear in the data), so the
    allowance is that slope times ``power``, for the same points and weights :func:`fit_slope` uses.
    Requires every x > 1.
    """
    x = _as_array(xs)
    if np.any(x <= 1):
        raise ValueError(f"log factors need every x > 1; got {x.tolist()}")
    power = float(power)
    if not (math.isfinite(power) and power >= 0):
        raise ValueError(f"power must be finite and >= 0; got {power}")
    u, v = np.log(x), np.log(np.log(x))
    w = np.ones_like(u) if stderrs is None else 1.0 / _as_array(stderrs) ** 2
    ub = np.average(u, weights=w)
    slope = np.sum(w * (u - ub) * v) / np.sum(w * (u - ub) ** 2)
    return power * abs(float(slope))


@dataclass
class Comparison:
    """An estimate compared with a prediction: the unit every check records and asserts."""

    statistic: str
    prediction: float
    estimate: float
    stderr: float
    dof: float
    n: int
    model_error: float = 0.0
    level: float = 1 - FALSE_FAIL_RATE
    sizes: dict = field(default_factory=dict)
    seed: int | None = None
    note: str = ""
    family: int = 1
    kind: str = "two-sided"  # "two-sided", "upper" (estimate <= prediction), "below" (estimate < prediction) or "pvalue"
    #: The claim ids of the check that recorded it (set by the ``verdict`` fixture from the test's ``claim`` markers).
    claim: str = ""

    @property
    def interval(self) -> tuple[float, float]:
        return Estimate(self.estimate, self.stderr, self.dof, self.n).interval(self.level)

    @property
    def half_width(self) -> float:
        lo, hi = self.interval
        return (hi - lo) / 2 if math.isfinite(hi - lo) else math.inf

    @property
    def min_discrepancy(self) -> float:
        """Smallest |prediction - truth| this comparison detects (interval half-width + model error)."""
        return self.half_width + self.model_error

    @property
    def consistent(self) -> bool:
        """True iff the prediction lies in the interval widened by the model error (for a significance
        test: iff its p-value is at least the level, i.e. the null is not rejected)."""
        if self.kind == "pvalue":
            return self.estimate >= self.prediction
        if self.kind == "upper":
            return self.interval[0] - self.model_error <= self.prediction
        if self.kind == "below":
            return self.interval[1] + self.model_error < self.prediction
        if math.isnan(self.estimate) or math.isnan(self.prediction):
            return False
        if not math.isfinite(self.estimate):
            return self.estimate == self.prediction
        lo, hi = self.interval
        return lo - self.model_error <= self.prediction <= hi + self.model_error

    @property
    def slots(self) -> float:
        """The share of one assertion slot of the suite's budget this comparison uses (1/family)."""
        return 1.0 / self.family

    @property
    def miss_probability(self) -> float:
        """For a negative control: the estimated probability that an independent repetition would NOT reject the
        (wrong) prediction, taking the observed estimate as the truth and its standard error as known (normal
        approximation; for a p-value, the test statistic as the normal deviate of the observed p).  A negative
        control, and a printed statement that is refuted (a strict xfail), must keep it below its slot's rate; the
        report sums it."""
        if self.kind == "pvalue":  # the test statistic as a normal deviate: z_obs = Phi^-1(1 - p/2)
            if self.estimate <= 0.0:
                return 0.0
            z_obs = stats.norm.isf(min(self.estimate, 1.0) / 2)
            return float(stats.norm.cdf(stats.norm.isf(self.prediction / 2) - z_obs))
        if math.isnan(self.estimate):
            return 1.0
        if not math.isfinite(self.estimate):
            return 0.0 if not self.consistent else 1.0
        if self.stderr == 0:
            return 0.0 if not self.consistent else 1.0
        q = (self.interval[1] - self.estimate) / self.stderr
        if self.kind == "below":  # consistent = significantly below: P(a repetition concludes so)
            return float(stats.norm.cdf((self.prediction - self.model_error - self.estimate) / self.stderr - q))
        if self.kind == "upper":
            margin = self.estimate - self.prediction - self.model_error
        else:
            margin = abs(self.estimate - self.prediction) - self.model_error
        return float(stats.norm.cdf(q - margin / self.stderr))

    @property
    def headroom(self) -> float | None:
        """For a check: ``log10(p / alpha)``, where alpha = 1 - level is the rate it runs at and p the smallest rate at
        which it would still pass (two-sided: 2 P(|T| > (|estimate - prediction| - model error)/stderr); one-sided
        ``upper``: the same deviate, signed; a significance test: its p-value).  Negative iff the check fails; a
        calibration over many seeds shows how close each check comes to its level.  None for ``below``, whose
        spurious failure is a power shortfall, not a level."""
        if self.kind == "below":
            return None
        if self.kind == "pvalue":
            p = self.estimate
        elif math.isnan(self.estimate) or math.isnan(self.prediction):
            return -math.inf
        elif not math.isfinite(self.estimate):
            return math.inf if self.consistent else -math.inf
        else:
            dev = self.estimate - self.prediction if self.kind == "upper" else abs(self.estimate - self.prediction)
            z = (dev - self.model_error) / self.stderr if self.stderr > 0 else (math.inf if dev > self.model_error else -math.inf)
            tail = stats.t.sf(z, self.dof) if math.isfinite(self.dof) else stats.norm.sf(z)
            p = min(1.0, 2 * float(tail))
        alpha = self.prediction if self.kind == "pvalue" else 1 - self.level
        return math.log10(p / alpha) if p > 0 else -math.inf

    @property
    def power_shortfall(self) -> float:
        """For a ``below`` comparison asserted by a check (the effect is claimed to be there): the estimated
        probability that an independent repetition would not detect it, ``1 - miss_probability`` (same
        approximation).  Such a check fails spuriously through lack of power, not at its level; the report sums this."""
        return 1.0 - self.miss_probability

    @property
    def _tag(self) -> str:
        return f"[{self.claim}] " if self.claim else ""

    def message(self, expectation: str = "consistent") -> str:
        if self.kind == "pvalue":
            sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
            return (f"{self._tag}{self.statistic}: expected {expectation} (null not rejected at level "
                    f"{self.prediction:g}); observed p = {self.estimate:.4g}; n={self.n}; sizes: {sizes}; seed={self.seed}")
        lo, hi = self.interval
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (
            f"{self._tag}{self.statistic}: expected {expectation} with prediction {self.prediction:.6g}; "
            f"observed {self.estimate:.6g}, {100 * self.level:.6g}% CI [{lo:.6g}, {hi:.6g}], "
            f"model error ±{self.model_error:.3g} (detects |error| > {self.min_discrepancy:.3g}); "
            f"n={self.n}; sizes: {sizes}; seed={self.seed}" + (f"; {self.note}" if self.note else "")
        )

    def to_record(self, role: str) -> dict:
        d = asdict(self)
        lo, hi = self.interval
        miss = None
        if role == "negative-control":
            miss = self.miss_probability
        elif role == "check" and self.kind == "below":
            miss = self.power_shortfall
        d.update(role=role, ci_low=lo, ci_high=hi, consistent=self.consistent,
                 min_discrepancy=self.min_discrepancy, slots=self.slots if role != "measurement" else 0.0,
                 miss_probability=miss, headroom=self.headroom if role == "check" else None)
        return {k: _plain(v) for k, v in d.items()}


def _plain(v):
    """JSON-safe plain Python values (numpy scalars unwrapped, non-finite floats as strings)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else repr(v)
    return v


def compare(statistic: str, estimate: Estimate, prediction: float, *, model_error: float = 0.0,
            sizes: dict | None = None, seed: int | None = None, note: str = "", family: int = 1,
            kind: str = "two-sided") -> Comparison:
    """Build a :class:`Comparison` from an :class:`Estimate`: ``statistic`` names what was measured, in the claim's
    units; the ``verdict`` fixture adds the claim (from the test's marker), the seed and, unless given, its sizes.

    ``family``: the number of comparisons a check makes of one kind (e.g. k exponents); each then
    uses level ``1 - FALSE_FAIL_RATE / family`` (Bonferroni), so the check as a whole keeps the budget.
    """
    if model_error < 0 or not math.isfinite(model_error):
        raise ValueError(f"model_error must be finite and >= 0; got {model_error}")
    if family < 1:
        raise ValueError(f"family must be an integer >= 1; got {family}")
    if kind not in ("two-sided", "upper", "below"):
        raise ValueError(f"kind must be 'two-sided', 'upper' or 'below'; got {kind!r}")
    return Comparison(statistic, float(prediction), estimate.value, estimate.stderr, estimate.dof,
                      estimate.n, float(model_error), level=1 - FALSE_FAIL_RATE / family, sizes=dict(sizes or {}),
                      seed=seed, note=note, family=int(family), kind=kind)


def assert_consistent(cmp: Comparison) -> Comparison:
    """Assert the prediction is inside the widened interval; the message has everything needed."""
    __tracebackhide__ = True
    if not cmp.consistent:
        raise AssertionError(cmp.message("consistent"))
    return cmp


def assert_rejects(cmp: Comparison) -> Comparison:
    """Negative control: assert a (wrong) prediction is rejected by the same procedure."""
    __tracebackhide__ = True
    if cmp.consistent:
        raise AssertionError(cmp.message("REJECTED (negative control)"))
    return cmp


def significance_test(statistic: str, pvalue: float, *, n: int, sizes: dict | None = None,
                      seed: int | None = None, note: str = "") -> Comparison:
    """A classical test as a Comparison: ``estimate`` is the p-value and ``prediction`` the level
    FALSE_FAIL_RATE.  ``consistent`` means the null hypothesis is not rejected (p >= level); p-values
    carry an infinite stderr so the baseline comparison never flags them."""
    return Comparison(statistic, FALSE_FAIL_RATE, float(pvalue), math.inf, math.inf, int(n),
                      sizes=dict(sizes or {}), seed=seed, note=note or "p-value of a test of the null", kind="pvalue")


def compare_at_most(statistic: str, estimate: Estimate, bound: float, *, model_error: float = 0.0,
                    sizes: dict | None = None, seed: int | None = None, note: str = "", family: int = 1) -> Comparison:
    """One-sided comparison: consistent iff the estimate is not significantly above ``bound`` (the lower end of
    its interval, less the model error, is at most the bound).  ``verdict.reject`` of it asserts the
    estimate is significantly above the bound."""
    return compare(statistic, estimate, bound, model_error=model_error, sizes=sizes, seed=seed,
                   note=note or "one-sided: estimate <= prediction", family=family, kind="upper")


def compare_below(statistic: str, estimate: Estimate, bound: float, *, model_error: float = 0.0,
                  sizes: dict | None = None, seed: int | None = None, note: str = "", family: int = 1) -> Comparison:
    """One-sided comparison for an effect that must be *there*: consistent iff the estimate is significantly below
    ``bound`` (the upper end of its interval, plus the model error, is below it), e.g. "the exponent in n is
    negative: the quantity vanishes".  Checked, its spurious failure is a lack of power (recorded as its
    ``miss_probability``); rejected (a control), it asserts the estimate is not significantly below."""
    return compare(statistic, estimate, bound, model_error=model_error, sizes=sizes, seed=seed,
                   note=note or "one-sided: estimate significantly below prediction", family=family, kind="below")


def binomial_pvalue(successes: int, trials: int, p: float) -> float:
    """Two-sided exact binomial test p-value (``scipy.stats.binomtest``)."""
    return float(stats.binomtest(int(successes), int(trials), p).pvalue)


def chi2_independence_pvalue(a, b) -> float:
    """Chi-square independence test of two binary samples (``scipy.stats.chi2_contingency``).  A sample that is
    constant is independent of anything: p = 1 (the test has nothing to reject)."""
    a, b = _as_array(a).astype(int), _as_array(b).astype(int)
    table = np.array([[np.sum((a == i) & (b == j)) for j in (0, 1)] for i in (0, 1)])
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def uniformity_pvalue(pvalues) -> float:
    """Kolmogorov-Smirnov p-value that a sample of p-values is Uniform(0, 1)."""
    return float(stats.kstest(_as_array(pvalues), "uniform").pvalue)


def correlation_pvalue(x, y) -> tuple[float, float]:
    """Pearson correlation and its two-sided p-value (``scipy.stats.pearsonr``)."""
    res = stats.pearsonr(_as_array(x), _as_array(y))
    return float(res.statistic), float(res.pvalue)
