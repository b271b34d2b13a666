"""Training-time claims: training-stability (full Thm 2), stagnation-phase (Thm 3), toy-descent (Thm 4),
descent-convergence (§4.3), approx-trained-gates (Approx. 2) and balanced-dynamics (Haas Prop. 4.5)."""

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from theorems.experiments import gate_test_pvalues
from theorems.ensembles import Ensemble, sample_weights
from theorems.seeding import generator
from theorems.predictions import balanced_singular_value_velocity, relaxation_late_share
from theorems.profiles import Sizes, training_flops
from theorems.stats import (FALSE_FAIL_RATE, Estimate, binomial_pvalue, compare, compare_at_most, compare_below,
                            difference_estimate, log_factor_allowance,
                            log_mean_estimate, mean_estimate, ratio_of_means_estimate, secant_exponent,
                            significance_test)
from theorems.training import (balance_defects, balanced_masked_network, gates_after_training, masked_linear_gd_path,
                               regression_data, top_mode_velocity_laws, train_at_largest_stable_rate, train_masked_linear,
                               train_mlp)


def _data(batch, samples, n, rng, device):
    x = torch.randn(batch, samples, n, generator=rng, device=device, dtype=torch.float64)
    z = torch.randn(batch, samples, n, generator=rng, device=device, dtype=torch.float64)
    return x, z


def max_log_norm_change(n, L, lr, steps, batch, rng, device, samples=1):
    """Per-network max_t |log||J^t|| - log||J^0|||, GD from critical init on one (or several) (x, z) pairs."""
    ws = [sample_weights(batch, n, 2.0, rng, device=device) for _ in range(L)]
    x, z = _data(batch, samples, n, rng, device)
    run = train_mlp(ws, x, z, lr, steps, record_every=max(1, steps // 10))
    return np.abs(run.log_norm - run.log_norm[0]).max(axis=0), run


def max_abs_norm_change(run) -> np.ndarray:
    """Per-network max_t | ||J^t|| - ||J^0|| | (the printed statistic of Thm 2)."""
    return np.abs(np.exp(run.log_norm) - np.exp(run.log_norm[0])).max(axis=0)


# --- training-stability (Thm 2) --------------------------------------------------------------------

class StabilitySizes(NamedTuple):
    n: int
    depths: tuple
    steps: int
    batch: int
    c: float  # lr = c / (n L^3)


STABILITY_SIZES = Sizes(quick=StabilitySizes(32, (4, 8, 16, 32), 20, 128, 4.0),
                        full=StabilitySizes(128, (4, 8, 16, 32, 64), 50, 32, 4.0))


@pytest.mark.claim("training-stability")
def test_change_stays_bounded_in_depth(profile, rng, device, verdict):
    """Thm 2: lr = c/(n L^3), a fixed number of steps, ``||J^t|| - ||J^0|| = Θ̃_L(1)`` (n -> inf first).

    Statistic: exponent in L of E max_t |Δ log||J^t||| between the smallest and the largest depth
    (:func:`secant_exponent`; the values at the depths between are recorded: under the negative control they bend,
    log E[.] = -1.7, -0.7, 0.0, 0.3 at L = 4-32, chi^2/dof 12-33 for a line, whose Birge-inflated slope error then
    let the control pass at master seed 203).  Prediction: at most 0 (bounded in L), one-sided, with model
    error :func:`log_factor_allowance` for the log factors Θ̃ hides (|b| <= 1 in log(L)^b).  Negative control:
    lr = c/(16 n) (no depth scaling) makes the change grow like L^1 and the same comparison rejects; where it
    drives some J to exactly 0 (a ReLU collapse at the reference input: an infinite log change) or makes GD diverge
    (at master seed 620 one of 128 networks at L = 32), that unbounded change is itself the rejection and is
    reported.  A collapse or a divergence under lr = c/(nL^3) fails the check.

    The printed statistic, E max_t | ||J^t|| - ||J^0|| |, is recorded, not asserted: it carries the growth of
    ||J^0|| itself, which at finite n depends on L/n (exponent ≈ 0.2 at n = 32, L <= 32, but ≈ 0.66, CI
    [0.38, 0.94], at n = 128, L <= 64 against 0.93 for the negative control), so its verdict at reachable
    sizes is inconclusive; the scale-free log change is the reading that separates the two learning rates."""
    n, depths, steps, batch, c = profile.pick(*STABILITY_SIZES)
    verdict.sizes.update(n=n, depths=list(depths), steps=steps, B=batch, c=c)
    allowance = log_factor_allowance([depths[0], depths[-1]])

    def exponents(lr_at, label):
        """(log-change exponent, printed-statistic exponent, unbounded fraction per depth); the exponents are None
        when some network's change was unbounded: its Jacobian collapsed to 0 or its GD diverged (reported)."""
        changes = [max_log_norm_change(n, L, lr_at(L), steps, batch, rng, device) for L in depths]
        unbounded = [{"collapsed": float(np.mean(np.isneginf(run.log_norm).any(axis=0))),
                      "diverged": float(np.mean(run.diverged))} for _, run in changes]
        if any(u["collapsed"] or u["diverged"] for u in unbounded):
            return None, None, unbounded
        log_changes = [log_mean_estimate(change) for change, _ in changes]
        verdict.note(**{f"log_E_change_by_depth_lr_{label}": [round(e.value, 3) for e in log_changes]})
        return (secant_exponent(depths, log_changes),
                secant_exponent(depths, [log_mean_estimate(max_abs_norm_change(run)) for _, run in changes]), None)

    logs, absolute, unbounded = exponents(lambda L: c / (n * L**3), "c_over_nL3")
    assert unbounded is None, (f"[training-stability] an unbounded change at lr = c/(nL^3): fraction of networks "
                               f"per depth {dict(zip(depths, unbounded))}; sizes {verdict.sizes}")
    verdict.check(compare_at_most("exponent in L of E max|Δ log||J|||, lr = c/(nL^3)", logs, 0.0,
                                  model_error=allowance))
    verdict.record(compare_at_most("exponent in L of E max|Δ||J||| (printed), lr = c/(nL^3)",
                                   absolute, 0.0, model_error=allowance))
    logs_u, absolute_u, unbounded_u = exponents(lambda L: c / (16 * n), "c_over_16n")
    if unbounded_u is not None:  # the negative control's change is unbounded outright: rejected by that itself
        verdict.note(negative_control_unbounded_fraction_by_depth=dict(zip(depths, unbounded_u)))
        return
    verdict.reject(compare_at_most("exponent in L of E max|Δ log||J|||, lr = c/(16n) "
                                   "(negative control)", logs_u, 0.0, model_error=allowance))
    verdict.record(compare_at_most("exponent in L of E max|Δ||J||| (printed), lr = c/(16n)",
                                   absolute_u, 0.0, model_error=allowance))


# --- stagnation-phase (Thm 3) ----------------------------------------------------------------------

class StagnationSizes(NamedTuple):
    widths: tuple
    depth: int
    batch: int
    c: float
    kappa: float


STAGNATION_SIZES = Sizes(quick=StagnationSizes((32, 64, 128), 6, 96, 1.0, 10.0),
                         full=StagnationSizes((64, 128, 256, 512), 10, 96, 1.0, 10.0))


@pytest.mark.claim("stagnation-phase")
def test_change_over_horizon_shrinks_with_width(profile, rng, device, verdict):
    """lr = c/(n log^1.5 n), horizon kappa/(n log^1.5(n) lr) = kappa/c steps.  Statistic: exponent of
    E max_t|Δ log||J^t||| in n between the smallest and largest width (:func:`secant_exponent`; a fitted line's
    Birge-inflated error left the control a miss probability of 0.44 at calibration seed 203); prediction: the
    first-order rate lr * steps * L ∝ 1/(n log^1.5 n), local exponent -(1 + 1.5/log n); model error
    :func:`log_factor_allowance` (unknown log factors, |b| <= 1).  Negative control: a feature-learning lr = c'/n
    over its own horizon (∝ n steps) does not shrink, and the same comparison rejects."""
    widths, L, batch, c, kappa = profile.pick(*STAGNATION_SIZES)
    steps = int(kappa / c)
    verdict.sizes.update(widths=list(widths), L=L, B=batch, c=c, kappa=kappa, steps=steps)
    nbar = math.exp(np.mean(np.log(widths)))
    rate = -(1 + 1.5 / math.log(nbar))
    stag = [log_mean_estimate(max_log_norm_change(n, L, c / (n * math.log(n) ** 1.5), steps, batch, rng, device)[0])
            for n in widths]
    slope = secant_exponent(widths, stag)
    allowance = log_factor_allowance([widths[0], widths[-1]])
    verdict.check(compare("exponent of max change in n", slope, rate, model_error=allowance))
    fl = [log_mean_estimate(max_log_norm_change(n, L, 0.5 / n, n // 4, batch, rng, device)[0]) for n in widths]
    slope_fl = secant_exponent(widths, fl)
    verdict.reject(compare("exponent with lr = 1/(2n), n/4 steps (negative control)", slope_fl,
                           rate, model_error=allowance))


# --- toy-descent (Thm 4, App. D) -------------------------------------------------------------------

def toy_terms(w, x, alpha):
    """Autograd Γ = ∇J · ∇L (so J(w - γ∇L) = J - γΓ + O(γ²)) and the printed closed form
    x̄² A Σ_l' Π_{l≠l'} w_l², with J = Π w_l, L = (2N)^-1 Σ (J x_i - α x_i)², A = J (J - α)."""
    w = w.clone().requires_grad_(True)
    j = torch.prod(w)
    loss = ((j * x - alpha * x) ** 2).mean() / 2
    gj = torch.autograd.grad(j, w, retain_graph=True)[0]
    gl = torch.autograd.grad(loss, w)[0]
    gamma_autograd = (j * (gj * gl).sum()).item()
    with torch.no_grad():
        xbar2 = (x**2).mean()
        a = j * (j - alpha)
        others = torch.stack([torch.prod(torch.cat([w[:i], w[i + 1:]])) for i in range(len(w))])
        closed = (xbar2 * a * (others**2).sum()).item()
    return gamma_autograd, closed


@pytest.mark.claim("toy-descent")
@given(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**31 - 1), st.floats(0.1, 3.0))
def test_printed_identity_matches_autograd(L, N, seed, alpha):
    """J Γ = x̄² A Σ_l' Π_{l≠l'} w_l² to machine precision (relative 1e-12), any depth, data and weights."""
    g = generator(seed)
    w = torch.randn(L, generator=g, dtype=torch.float64)
    x = torch.randn(N, generator=g, dtype=torch.float64)
    auto, closed = toy_terms(w, x, alpha)
    assert auto == pytest.approx(closed, rel=1e-12, abs=1e-300)


TOY = dict(L=3, alpha=1.0, N=4, lr=1e-3, samples=400_000)


def toy_step_change(w, x, alpha, lr):
    """(J^1)² - (J^0)² after one GD step, vectorised over rows of w (samples, L)."""
    j0 = torch.prod(w, dim=1)
    xbar2 = (x**2).mean(dim=1)
    others = j0.unsqueeze(1) / w  # Π_{l≠l'} w_l (w has no zeros almost surely)
    grad = others * (xbar2 * (j0 - alpha)).unsqueeze(1)
    j1 = torch.prod(w - lr * grad, dim=1)
    return (j1**2 - j0**2).numpy()


@pytest.fixture
def toy_sample(rng):
    L, N, s = TOY["L"], TOY["N"], TOY["samples"]
    w = torch.randn(s, L, generator=rng, dtype=torch.float64)
    x = torch.randn(s, N, generator=rng, dtype=torch.float64)
    return w, x


@pytest.mark.claim("toy-descent")
def test_expected_A0_is_one(toy_sample, verdict):
    """E A_0 = E[J(J - α)] = E J² = 1 for w_l ~ N(0, 1); negative control: E A_0 = 0.9 is rejected."""
    w, _ = toy_sample
    j = torch.prod(w, dim=1)
    a = (j * (j - TOY["alpha"])).numpy()
    verdict.sizes.update(L=TOY["L"], samples=len(a))
    verdict.check(compare("E A_0", mean_estimate(a), 1.0))
    verdict.reject(compare("E A_0 vs 0.9 (negative control)", mean_estimate(a), 0.9))


@pytest.mark.claim("toy-descent")
def test_squared_jacobian_decreases_after_one_step(toy_sample, verdict):
    """Statistic: E[(J^1)² - (J^0)²] / (2γ); prediction (first order) -E[x̄²] L 3^(L-1) (E[J Γ] with independent
    w, x: E[x̄²] E[w⁴]^(L-1) E[w²] L); model error: twice the change between γ and γ/2 (Richardson, same samples).
    It is negative: App. D's 'smaller' holds.  Negative control: the opposite sign of the prediction is rejected."""
    w, x = toy_sample
    lr, L, alpha = TOY["lr"], TOY["L"], TOY["alpha"]
    d1 = toy_step_change(w, x, alpha, lr) / (2 * lr)
    d2 = toy_step_change(w, x, alpha, lr / 2) / lr
    est = mean_estimate(d1)
    err = 2 * abs(est.value - float(np.mean(d2)))
    pred = -1.0 * L * 3 ** (L - 1)
    verdict.sizes.update(L=L, N=TOY["N"], lr=lr, samples=len(d1))
    verdict.check(compare("E[(J¹)²-(J⁰)²]/(2γ)", est, pred, model_error=err))
    verdict.reject(compare("sign flipped (negative control)", est, -pred, model_error=err))


@pytest.mark.claim("toy-descent")
@pytest.mark.erratum
@pytest.mark.xfail(strict=True, reason="erratum: the main text after Thm 4 says (J_1^t)² is on average 'larger' than "
                   "(J_0^t)² for t = 1 (J_0 is not defined); the Monte Carlo mean of (J¹)² - (J⁰)² is significantly "
                   "negative (≈ -2γ x̄² L 3^(L-1)), as the paper's own derivation in App. D ('smaller') says")
def test_main_text_sentence_larger_is_an_erratum(toy_sample, verdict):
    """The main text's sentence read as E[(J¹)² - (J⁰)²] >= 0 (one-sided): contradicted by App. D's derivation and
    by the Monte Carlo mean, so it is recorded as an erratum of the claim (which App. D states correctly)."""
    w, x = toy_sample
    d = toy_step_change(w, x, TOY["alpha"], TOY["lr"]) / (2 * TOY["lr"])
    neg = Estimate(-mean_estimate(d).value, mean_estimate(d).stderr, len(d) - 1, len(d))
    verdict.check(compare_at_most("-E[(J¹)²-(J⁰)²] <= 0 (main text: larger)", neg, 0.0,
                                  sizes=dict(samples=len(d))))


# --- descent-convergence (§4.3, Fig. 2) ------------------------------------------------------------

class DescentSizes(NamedTuple):
    n: int
    depth: int
    samples: int
    steps: int
    batch: int


#: descent-convergence sizes per data set.  Quick: digits need 400 steps to settle (at 200 the last-half share was
#: 0.08-0.14, T ≈ 4-5 relaxation times, which left the T = 2τ control a miss probability of 0.08 at calibration seed
#: 619); synthetic data settle by 200 steps but jitter more per network (share error 0.037 at 48 networks: a miss
#: probability of 0.14 at seed 615), hence 144 networks.  Digits: a few networks still drift slowly in the last half
#: (-0.3 for one of 48 in a trial run), so the share's standard error ranged 0.019-0.032 over seeds with 48 networks, and
#: the T = 2τ control's estimated miss reached 0.0016 (seed 736); 80 networks (96 in the full profile).
DESCENT_SIZES = {"synthetic": Sizes(quick=DescentSizes(32, 4, 64, 200, 144), full=DescentSizes(256, 8, 256, 2000, 48)),
                 "digits": Sizes(quick=DescentSizes(64, 4, 128, 400, 80), full=DescentSizes(64, 8, 512, 2000, 96))}
DESCENT_GRID = (0.3, 0.1, 0.03, 0.01)  # App. G's learning rates
SLOW_FACTOR = 30  # the recorded slow arm trains each network at its learning rate / SLOW_FACTOR


#: 'Settled' (claim descent-convergence): the last half carries at most this share of the change, i.e. the run lasted
#: at least 2 ln 9 ≈ 4.4 relaxation times (``relaxation_late_share(2 ln 9)`` = 0.1).
SETTLED_SHARE = 0.1


@pytest.mark.claim("descent-convergence")
@pytest.mark.parametrize("data", ["synthetic", "digits"])
def test_norm_drops_then_settles(data, profile, rng, device, verdict):
    """Regression by full-batch GD from critical init; each network trains at the largest learning rate of the grid
    {0.3, 0.1, 0.03, 0.01} at which it stays finite and alive (:func:`train_at_largest_stable_rate`; one lr for all
    networks would be set by the least stable of them: with 48 networks some network diverges or dies at 0.3 and
    0.1, and at 0.03 the norm is still moving after 200 steps).  The grid search picks what optimises training: at
    three seeds per data set (576 networks) it is the rate with the lowest final loss for every network, and it
    trains a network once unless it fails (the lowest-final-loss rule trained every rate: 2.5 times the cost).  Statistics: the
    early change of log||J|| (first 20% of steps) is negative (one-sided, rejected >= 0); the share of the total
    change made in the last half, R = E[late change] / E[total change] (ratio of means, delta-method error:
    :func:`ratio_of_means_estimate`), is 0 within a model error of 0.1.  The 0.1: for a relaxation
    log||J_t|| = a + b e^(-t/τ), R = q / (1 + q) with q = e^(-T/2τ), so |R| <= 0.1 iff the run lasts T >= 2 ln 9 τ
    ≈ 4.4 relaxation times (98.8% of the way).  Means, not per-network |changes|: at the tuned lr each network's
    log-norm jitters on its plateau (about 0.1 over the last half at lr = 0.3), so E|late| / E|total| stays near 0.12-0.15
    however long the run (0.20-0.27 after 400 steps, three seeds) and measures the jitter, not the drift.
    Negative control (an exact rival law, asserted): a relaxation still under way, T = 2τ (86% of the way),
    R = 1/(1 + e) ≈ 0.27, is rejected (8-19 standard errors at the quick sizes, :data:`DESCENT_SIZES`).  Recorded
    in the full profile (a second training run, half this check's quick time, for a number that is not asserted)
    with its miss probability: the same networks at 1/SLOW_FACTOR of their learning rates for the same steps
    (R ≈ 0.24-0.30 over three seeds) are not settled; R - 0.1 is 5-8 standard errors there, too few to assert at the suite's
    level.  (The first half of the tuned run was the control before; it followed from the check: first + last
    half = total.)  The early drop is asserted with a wide margin (about 20 standard errors)."""
    n, L, samples, steps, batch = profile.pick(*DESCENT_SIZES[data])
    x, z = regression_data(data, batch, samples, n, rng, device)
    ws = [sample_weights(batch, n, 2.0, rng, device=device) for _ in range(L)]
    run, lr = train_at_largest_stable_rate(ws, x, z, DESCENT_GRID, steps, record_every=steps // 20)
    assert np.isfinite(lr).all(), "a network diverged or died at every learning rate of the grid"
    log_norm, loss = run.log_norm, run.loss
    half = log_norm.shape[0] // 2
    early = log_norm[4] - log_norm[0]
    late = log_norm[-1] - log_norm[half]
    total = log_norm[-1] - log_norm[0]
    verdict.sizes.update(data=data, n=n, L=L, samples=samples, steps=steps, B=batch,
                         networks_per_lr={rate: int((lr == rate).sum()) for rate in DESCENT_GRID})
    verdict.record(compare("final loss / initial loss", mean_estimate(loss[-1] / loss[0]), 0.0))
    verdict.reject(compare_at_most("early change of log||J|| >= 0? (drop expected)",
                                   Estimate(-mean_estimate(early).value, mean_estimate(early).stderr, batch - 1, batch),
                                   0.0))
    share = ratio_of_means_estimate(late, total)
    verdict.check(compare("share of the change in the last half, E[late] / E[total]", share, 0.0,
                          model_error=SETTLED_SHARE))
    verdict.reject(compare("share vs a relaxation still under way, T = 2τ (negative control)", share,
                           relaxation_late_share(2.0)))
    if not profile.full:  # the slow arm is a recorded contrast, not an assertion: it costs a second training run
        return
    # the same networks, each at 1/SLOW_FACTOR of its learning rate for the same steps, are not settled: recorded
    slow = train_mlp(ws, x, z, lr / SLOW_FACTOR, steps, record_every=steps // 20).log_norm
    assert np.isfinite(slow).all(), f"a network diverged or died at 1/{SLOW_FACTOR} of its learning rate"
    verdict.record(compare(f"share of the change in the last half at lr/{SLOW_FACTOR} (not settled)",
                           ratio_of_means_estimate(slow[-1] - slow[half], slow[-1] - slow[0]), 0.0,
                           model_error=SETTLED_SHARE))


# --- approx-trained-gates (Approx. 2) ---------------------------------------------------------------

#: approx-trained-gates sizes (quick, full).  ``asymptotic``: widths, layer l (depth l + 1), networks at each width,
#: steps t and c of lr = c/n (c t = 10; the fixed-lr control trains at the middle width's lr).  The secant exponent uses
#: the end widths only, and a network at n = 128 costs 16 at n = 32: with 400 at each width the relative standard
#: errors of the mean shift were 0.068 and 0.083 at n = 32 and 128 (shift -0.053 and -0.017), the exponent's 0.077, and
#: at calibration seed 744 the exponent (about -0.47) was only about 6 standard errors below 0 (estimated probability of
#: failing 0.016, above its slot); 1600 networks at n = 32 and 600 at n = 128 bring it to 0.052 for 3 s more.
#: ``printed``: App. G.2's setting, n = 100 and lr t = 0.4 (the paper: L = 30, l = 10, lr = 1e-4, t = 4000, N = 1000; quick: depth 5, l = 4,
#: 40 steps of 1e-2: the same lr t), as (n, layer, depth, N, steps, lr).
class GateShiftSizes(NamedTuple):
    widths: tuple
    layer: int
    networks: tuple  # at each width
    steps: int
    c: float  # lr = c / n


class PrintedGateSizes(NamedTuple):
    n: int
    layer: int
    depth: int
    networks: int
    steps: int
    lr: float


TRAINED_GATES = Sizes(quick=dict(asymptotic=GateShiftSizes((32, 64, 128), 4, (1600, 400, 600), 20, 0.5),
                                 printed=PrintedGateSizes(100, 4, 5, 300, 40, 1e-2)),
                      full=dict(asymptotic=GateShiftSizes((128, 256, 512), 10, (1600, 400, 600), 200, 0.05),
                                printed=PrintedGateSizes(100, 10, 30, 1000, 4000, 1e-4)))


@pytest.mark.claim("approx-trained-gates")
def test_gate_shift_from_training_vanishes_as_width_grows(profile, rng, device, verdict):
    """Approx. 2 is an n -> inf statement for a fixed number of steps t, justified by lr = O(1/n).  Statistic: per
    network the shift of frac(D_l = 1) at the training input from init to step t (paired: the same networks before
    and after; one (x, z) per network, so the networks are iid: with one shared pair its draw moved every network's
    shift together and the standard error missed it, calibration seed 103), lr = c/n; its exponent in n between the
    smallest and the largest width (:func:`secant_exponent`: the shifts bend, e.g. -0.046, -0.037, -0.019 at
    n = 32, 64, 128 at calibration seed 209, where a fitted line's Birge-inflated error let the check fail).
    Prediction: negative (the shift vanishes), one-sided, asserted as "significantly below 0" (a lack of power would fail it; its estimated
    probability is recorded).  Measured: the shift is a function of lr t alone (about -0.002, -0.006, -0.024, -0.05
    at lr t = 0.01, 0.03, 0.1, 0.3 for n = 32, 64 and 128 alike), so with lr = c/n it falls like 1/n once c t/n is
    small; c t = 10 puts the quick widths on that slope (at the paper's c t = 40 they sit where it saturates:
    -0.09, -0.08, -0.06).  Negative control: at a fixed lr (the middle width's) the same exponent is not the
    lr = c/n arm's law -1 (rejected; measured about 0 ± 0.3 at 99.996%): the vanishing comes from lr -> 0, not from
    the width, and training moves the gates at any fixed lr.  Whether the fixed-lr exponent is "not below 0" is
    recorded: its null is the point 0, so asserting it would fail at exactly its own level whatever the power."""
    widths, layer, batch, steps, c = profile.pick(*TRAINED_GATES)["asymptotic"]
    lr_fixed = c / widths[len(widths) // 2]
    arms = {}
    for arm, rate in (("lr = c/n", lambda n: c / n), ("fixed lr", lambda n: lr_fixed)):
        runs = [gates_after_training(n, layer, b, rate(n), steps, rng, device, shared_data=False)
                for n, b in zip(widths, batch)]
        arms[arm] = secant_exponent(widths, [log_mean_estimate(r.shift) for r in runs]), runs
    verdict.sizes.update(widths=list(widths), layer=layer, B=list(batch), steps=steps, c=c, lr_fixed=lr_fixed)
    (scaled, runs), (fixed, fixed_runs) = arms["lr = c/n"], arms["fixed lr"]
    verdict.note(shift_lr_c_over_n=[round(float(r.shift.mean()), 4) for r in runs],
                 shift_fixed_lr=[round(float(r.shift.mean()), 4) for r in fixed_runs],
                 relative_weight_change_lr_c_over_n=[round(r.weight_change, 4) for r in runs])
    verdict.check(compare_below("exponent in n of the P(d=1) shift, lr = c/n (vanishes: < 0)",
                                scaled, 0.0))
    verdict.record(compare("exponent in n of the P(d=1) shift vs -1 (lr t scaling)", scaled, -1.0))
    verdict.reject(compare("exponent in n of the P(d=1) shift at a fixed lr vs -1 (negative "
                           "control: the lr = c/n law)", fixed, -1.0))
    verdict.record(compare_below("exponent in n of the P(d=1) shift at a fixed lr (does not "
                                 "vanish: not below 0)", fixed, 0.0))


@pytest.mark.claim("approx-trained-gates", statement="finite-n-remarks")
@pytest.mark.printed
@pytest.mark.xfail(strict=True, reason="refuted as printed (App. G.2's finite-n remark, n = 100, lr t = 0.4): after "
                   "training, the gates at the training input are not fair coins: frac(D_l = 1) falls by about 0.05 "
                   "(0.5 -> 0.45; binomial p < 1e-20 over 30,000 gates) while the weights move by about 1%; the same "
                   "networks before training pass. The shift is set by lr t and vanishes as lr = c/n -> 0 (the "
                   "asymptotic check)")
def test_printed_gates_still_fair_coins_after_training(profile, rng, device, seed, verdict):
    """As printed (App. G.2, Figs 10-11: n = 100, t = 4000, lr = 1e-4): "Up to this iteration, it appears that
    Approximation 2 is still a good approximation", read as its exact content: the gates at the training input are
    fair coins after training (binomial P(d=1) = 1/2).  Recorded: the same networks at init (must pass: the failure
    is training's), the chi-square pair-independence p-values' uniformity, the relative change of the weights."""
    n, layer, depth, nets, steps, lr = profile.pick(*TRAINED_GATES)["printed"]
    run = gates_after_training(n, layer, nets, lr, steps, rng, device, depth=depth)
    p_binom, p_chi, _, _ = gate_test_pvalues(run.sample, np.random.default_rng(seed))
    verdict.sizes.update(n=n, layer=layer, L=depth, N=nets, lr=lr, steps=steps, lr_times_t=lr * steps)
    verdict.note(shift=round(float(run.shift.mean()), 4), relative_weight_change=round(run.weight_change, 4),
                 binomial_p_at_init=binomial_pvalue(int(round(run.open_before.sum() * n)), nets * n, 0.5),
                 chi_square_pairs_uniformity_p=p_chi)
    verdict.check(significance_test("binomial P(d=1)=1/2 after training, as printed", p_binom,
                                    n=nets * n))


# --- balanced-dynamics (Haas Prop. 4.5) ----------------------------------------------------------------

class BalanceSizes(NamedTuple):
    n: int
    depth: int
    batch: int
    lr: float
    time: float  # lr * steps


BALANCE_SIZES = Sizes(quick=BalanceSizes(16, 4, 16, 0.05, 0.5), full=BalanceSizes(64, 8, 32, 0.05, 1.0))


def masked_regression_task(batch, n, rng, device):
    """Inputs X (B, n, 2n) with columns of norm about 1 and targets Y = T X, T a random rank-4 map per network."""
    x = torch.randn(batch, n, 2 * n, generator=rng, device=device, dtype=torch.float64) / math.sqrt(2 * n)
    target = torch.randn(batch, n, 4, generator=rng, device=device, dtype=torch.float64) @ \
        torch.randn(batch, 4, n, generator=rng, device=device, dtype=torch.float64) / math.sqrt(n)
    return x, target @ x


def drift_orders(ens, lr0, time_, rng, device):
    """Per network, the order in lr of the drift of the balance defects C_l over a fixed time lr * steps: the slopes
    of log drift against log lr over (lr0, lr0/2) and over (lr0/2, lr0/4), on a masked linear regression task."""
    n, batch = ens.width, ens.batch
    factors = list(ens.factors(rng, device=device))
    ws = [f.weight for f in factors]
    gates = [f.gate for f in factors[1:]]
    x, y = masked_regression_task(batch, n, rng, device)
    c0 = balance_defects(ws, gates)
    drifts = {}
    for lr in (lr0, lr0 / 2, lr0 / 4):
        final = train_masked_linear(ws, gates, x, y, lr, int(round(time_ / lr)))
        c1 = balance_defects(final, gates)
        drifts[lr] = sum(torch.linalg.matrix_norm(a - b) for a, b in zip(c1, c0)).cpu().numpy()
    s1 = (np.log(drifts[lr0]) - np.log(drifts[lr0 / 2])) / math.log(2)
    s2 = (np.log(drifts[lr0 / 2]) - np.log(drifts[lr0 / 4])) / math.log(2)
    return s1, s2


@pytest.mark.claim("balanced-dynamics")
def test_balance_drift_is_second_order_in_lr(profile, rng, device, verdict):
    """C_l = M_{l+1}^T M_{l+1} - M_l M_l^T is conserved by gradient flow; one GD step changes it by
    lr² (G_{l+1}^T G_{l+1} - G_l G_l^T).  At fixed time lr * steps the drift is O(lr): statistic: per-network
    slope of log drift against log lr over lr/2, lr/4; prediction 1; model error: the slope's remaining bias, by
    Richardson (the O(lr) rest halves with lr, so the slope over lr, lr/2 differs from the one over lr/2, lr/4 by
    about that bias), measured on independent networks.  Negative controls: slope 0 (no conservation) and 2 are
    rejected."""
    n, L, batch, lr0, time_ = profile.pick(*BALANCE_SIZES)
    ens = Ensemble(n, L, gates="bernoulli", batch=batch, input_gate=False, sigma2=2.0)
    _, s2 = drift_orders(ens, lr0, time_, rng, device)
    est = mean_estimate(s2)
    other_s1, other_s2 = drift_orders(ens, lr0, time_, rng, device)  # independent networks
    err = abs(float(np.mean(other_s2)) - float(np.mean(other_s1)))
    verdict.sizes.update(n=n, L=L, B=batch, lr=[lr0, lr0 / 2, lr0 / 4], time=time_)
    verdict.check(compare("order of the drift in lr at fixed lr*steps", est, 1.0, model_error=err))
    verdict.reject(compare("order 0 (negative control)", est, 0.0, model_error=err))
    verdict.reject(compare("order 2 (negative control)", est, 2.0, model_error=err))


class DynamicsSizes(NamedTuple):
    n: int
    depth: int
    rank: int  # the balanced factors' rank: the top singular values followed
    batch: int
    lr: float
    time: float  # lr * steps


SV_DYNAMICS_SIZES = Sizes(quick=DynamicsSizes(16, 4, 4, 32, 0.02, 0.2), full=DynamicsSizes(64, 8, 8, 64, 0.01, 0.2))
#: The law against the exact gradient-flow velocity at a balanced point: two float64 evaluations of one quantity
#: (measured 4e-16, relative to the largest velocity), with ample room for rounding; a wrong law is off by a factor
#: (power 2: s^(2/L), 0.26-0.45 away from 1 for the spectra of :func:`balanced_masked_network` at L = 4).
LAW_TOLERANCE = 1e-10


def law_errors(path, depth, lr, exponent=None):
    """Per network (B,): the largest error over steps and modes of a law for ds_k/dt against GD's finite differences
    (s_k(t+1) - s_k(t)) / lr, relative to the largest |ds_k/dt| the law predicts on that run."""
    s, projected = path["s"], path["projected"]
    law = balanced_singular_value_velocity(s[:-1], projected[:-1], depth, exponent=exponent)
    scale = np.abs(balanced_singular_value_velocity(s[:-1], projected[:-1], depth)).max(axis=(0, 2))
    return np.abs((s[1:] - s[:-1]) / lr - law).max(axis=(0, 2)) / scale


def gd_paths(ws, gates, x, y, sizes) -> dict:
    """GD runs (:func:`masked_linear_gd_path`) at lr, lr/2, lr/4 over the same time lr * steps, by learning rate."""
    rates = (sizes.lr, sizes.lr / 2, sizes.lr / 4)
    return {r: masked_linear_gd_path(ws, gates, x, y, r, int(round(sizes.time / r)), sizes.rank) for r in rates}


def law_error_orders(paths, depth, exponent=None):
    """Per network, the order in lr of :func:`law_errors` over the runs of :func:`gd_paths`: slopes of log error
    against log lr over (lr, lr/2) and (lr/2, lr/4)."""
    errors = [law_errors(path, depth, r, exponent) for r, path in paths.items()]
    return [np.log(a / b) / math.log(2) for a, b in zip(errors, errors[1:])]


@pytest.mark.claim("balanced-dynamics", statement="singular-value-dynamics")
@pytest.mark.statistical(1)  # the upper bound of the order's Richardson bias (the check's model error)
def test_balanced_singular_values_follow_the_deep_linear_law(profile, rng, device, verdict):
    """Prop. 4.5's dynamics, from balanced masked factors (:func:`balanced_masked_network`: exactly balanced, gates
    with half the units open, rank r, log s_k spread over [-1.2, 1.2]) on a masked linear regression task.
    (1) At the balanced point, statistic: the largest deviation over networks and k <= r of the law
    -L s_k^(2-2/L) u_k^T ∇L v_k (:func:`balanced_singular_value_velocity`) from the exact gradient-flow velocity
    u_k^T (dJ/dt) v_k (:func:`gradient_flow_singular_value_velocity`, which assumes no balancing), relative to the
    largest velocity; prediction: at most LAW_TOLERANCE (both are float64 evaluations of one quantity: no sampling
    error).  (2) Along GD from there: per network the largest error of the law, evaluated at each step, against the
    step's finite difference of s_k, relative (:func:`law_errors`), at lr, lr/2, lr/4 over the same time; statistic:
    its order in lr over (lr/2, lr/4), prediction 1 (Euler steps; the balance drifts by O(lr²) per step, O(lr) over
    the time); model error: the order's remaining bias, bounded by the difference of the orders over (lr, lr/2) and
    (lr/2, lr/4) on independent networks (Richardson: the rest halves with lr), at the upper end of its interval.
    Negative controls: the law with power 2 (the deep linear law without its depth correction) deviates at the
    balanced point, and its error along GD does not vanish with lr (order about 0: rejected against 1)."""
    sizes = profile.pick(*SV_DYNAMICS_SIZES)
    n, L, r, batch = sizes.n, sizes.depth, sizes.rank, sizes.batch
    verdict.sizes.update(n=n, L=L, rank=r, B=batch, lr=[sizes.lr, sizes.lr / 2, sizes.lr / 4], time=sizes.time)
    ws, gates = balanced_masked_network(batch, n, L, r, rng, device=device)
    x, y = masked_regression_task(batch, n, rng, device)
    paths = gd_paths(ws, gates, x, y, sizes)
    start = paths[sizes.lr]  # its first step: the balanced point
    s, projected, exact = start["s"][0], start["projected"][0], start["exact_velocity"]

    def deviation(exponent=None):
        law = balanced_singular_value_velocity(s, projected, L, exponent=exponent)
        return Estimate(float((np.abs(exact - law).max(axis=1) / np.abs(exact).max(axis=1)).max()), 0.0, math.inf, batch)

    verdict.check(compare_at_most("largest deviation of the law from the gradient-flow velocity at balance",
                                  deviation(), LAW_TOLERANCE))
    verdict.reject(compare_at_most("the same with power 2 (negative control)", deviation(2.0), LAW_TOLERANCE))
    _, order = law_error_orders(paths, L)
    other_ws, other_gates = balanced_masked_network(batch, n, L, r, rng, device=device)
    other_x, other_y = masked_regression_task(batch, n, rng, device)
    other = law_error_orders(gd_paths(other_ws, other_gates, other_x, other_y, sizes), L)
    # the bias bound: the upper end of the interval of the Richardson difference (its own statistical slot), not its
    # point estimate, which is about the size of the bias it bounds (0.0020 against a bias of 0.0021 at the default
    # seed: the check would fail whenever the two estimates' noise differed by a few of their 1e-4 errors)
    err = max(map(abs, mean_estimate(other[1] - other[0]).interval(1 - FALSE_FAIL_RATE)))
    verdict.check(compare("order in lr of the law's error along GD", mean_estimate(order), 1.0, model_error=err))
    _, wrong = law_error_orders(paths, L, exponent=2.0)  # the same runs: only the law differs
    verdict.reject(compare("order in lr of the power-2 law's error (negative control)", mean_estimate(wrong), 1.0,
                           model_error=err))


class ModewiseSizes(NamedTuple):
    n: int
    p: float
    depths: tuple  # from one at which the top two exponents have separated by about one unit to many units
    batch: int


#: Networks per depth: with 128 the log of the mean error's ratio (about -1.3) had a standard error of 0.17 and an
#: estimated power shortfall of 3e-4 to 8e-4, above its slot; 256 halve the variance (and the check now averages logs).
#: The gated case is at n = 48: at n = 16 (until session 21, never run) a layer with every gate closed has probability
#: 1.5e-5 (about 4 collapsed products among 512 networks of depth 512) and gamma_2 is refused; at n = 48 a layer with
#: fewer than 2 open gates has 1.7e-13, and L (gamma_1 - gamma_2) = 1.09 at L = 48, 11.7 at 512.
MODEWISE_SIZES = Sizes(quick=[ModewiseSizes(8, 1.0, (2, 16, 64, 256), 256)],
                       full=[ModewiseSizes(8, 1.0, (2, 16, 64, 256, 512), 512),
                             ModewiseSizes(48, 0.5, (2, 48, 128, 512), 512)])


def modewise_errors(ens, rng, device) -> dict:
    """Per network, |law - exact| / c_1 for each law of :func:`top_mode_velocity_laws` (c_1 the mode's coefficient,
    the velocity's natural scale); ∇L(J) is a matrix of iid standard normals per network (the law is linear in the
    gradient and must hold for any loss)."""
    factors = list(ens.factors(rng, device=device))
    ones = torch.ones(ens.batch, ens.width, dtype=torch.float64, device=device)
    gates = [f.gate if f.gate is not None else ones for f in factors[1:]]
    grad = torch.randn(ens.batch, ens.width, ens.width, generator=rng, device=device, dtype=torch.float64)
    laws = top_mode_velocity_laws([f.weight for f in factors], gates, grad)
    return {key: np.abs(laws[key] - laws["exact"]) / laws["coefficient"]
            for key in ("modewise", "cross_mode", "balanced")}


@pytest.mark.claim("balanced-dynamics", statement="modewise-dynamics")
@pytest.mark.parametrize_by_profile("case", MODEWISE_SIZES, ids=lambda c: f"n{c.n}-p{c.p}")
def test_unbalanced_singular_values_decouple_as_the_spectrum_separates(case, rng, device, verdict):
    """Haas' approximation regime without balancing: Gaussian masked networks (unbalanced), σ² set so that gamma_1 = 0
    (the law is homogeneous in the scale; this keeps deep products within float64's range).  Per network the error
    of the decoupled law ds_1/dt = -c_1 u_1^T ∇L v_1, c_1 = sum_l s_1(A_l)² s_1(B_l)² from the intermediate
    Jacobians (:func:`modewise_velocity_coefficients`), against the exact gradient-flow velocity, in units of c_1
    (:func:`modewise_errors`; independent networks at each depth).  Statistic: the mean of its log (a geometric mean:
    the errors are heavy-tailed, and the log of the mean error gave 6-10 standard errors where this gives 12-16, its
    power shortfall reaching 0.0037 over 40 calibration seeds) at the deepest depth minus at the depth where the top
    two exponents have separated by about one unit, L (gamma_1 - gamma_2) ≈ 1
    (measured: the error first grows with depth, 0.21 at L = 2, where only two factors are not identities, to about
    0.4 there, then falls); prediction: below 0 (the decoupling improves as the spectrum separates), one-sided,
    asserted as significantly below.  Negative control: at the deepest depth the same coefficient with the
    neighbouring mode's projection u_1^T ∇L v_2 (modes that stay coupled) fits as well as the decoupled law (equal E
    log error): rejected (its error stays about 1 at every depth, recorded with its own log ratio; asserting that
    ratio 'not below 0' had a point null, and its estimated miss reached 2.4e-4 over 40 calibration seeds).
    Recorded: the error at each depth with its separation L (gamma_1 - gamma_2), and the balanced law's coefficient
    L s_1^(2-2/L) in place of c_1, whose error grows with depth: without balancing the decoupled form holds, the
    balanced coefficient does not."""
    n, p, depths, batch = case
    gates = "none" if p == 1 else "bernoulli"
    sigma2 = math.exp(-2 * Ensemble(n, 1, sigma2=1.0, gates=gates, keep_prob=p).lyapunov_exponents(1)[0])
    gaps = {L: float(np.diff(-Ensemble(n, L, sigma2=sigma2, gates=gates, keep_prob=p).lyapunov_exponents(2))[0] * L)
            for L in depths}
    reference = min(depths, key=lambda L: abs(gaps[L] - 1.0))
    verdict.sizes.update(n=n, p=p, sigma2=round(sigma2, 4), depths=list(depths), B=batch, reference_depth=reference)
    errors = {L: modewise_errors(Ensemble(n, L, sigma2=sigma2, gates=gates, keep_prob=p, batch=batch,
                                          input_gate=False), rng, device) for L in depths}
    for L in depths:
        verdict.record(compare(f"mean error of the decoupled law / c_1 at L = {L}", mean_estimate(errors[L]["modewise"]),
                               0.0, note=f"separation L(gamma_1 - gamma_2) = {gaps[L]:.2f}"))
        verdict.record(compare(f"mean error of the balanced coefficient L s^(2-2/L) / c_1 at L = {L}",
                               mean_estimate(errors[L]["balanced"]), 0.0))

    def log_error(L, key):
        return mean_estimate(np.log(errors[L][key]))

    def log_ratio(key):
        return difference_estimate(log_error(depths[-1], key), log_error(reference, key))

    verdict.check(compare_below(f"E log error of the decoupled law, L = {depths[-1]} minus L = {reference}",
                                log_ratio("modewise"), 0.0))
    verdict.reject(compare(f"E log error at L = {depths[-1]}, the neighbouring mode's projection minus the decoupled "
                           "law's: as good (negative control)",
                           difference_estimate(log_error(depths[-1], "cross_mode"), log_error(depths[-1], "modewise")),
                           0.0))
    verdict.record(compare_below("E log error with the neighbouring mode's projection, deepest minus reference depth "
                                 "(does not improve)", log_ratio("cross_mode"), 0.0))


def work(profile) -> float:
    """Float64 work of this module's dominant kernels at the profile's sizes (the ``--profile full`` estimate):
    gradient descent everywhere (one sample per network unless stated)."""
    n, depths, steps, b, _ = profile.pick(*STABILITY_SIZES)
    stability = 2 * sum(training_flops(b, L, n, 1, steps) for L in depths)
    widths, L, b, c, kappa = profile.pick(*STAGNATION_SIZES)
    stagnation = sum(training_flops(b, L, w, 1, int(kappa / c)) + training_flops(b, L, w, 1, w // 4) for w in widths)
    descent = (len(DESCENT_GRID) + 1) * sum(training_flops(s.batch, s.depth, s.n, s.samples, s.steps)
                                            for s in (profile.pick(*sizes) for sizes in DESCENT_SIZES.values()))
    sizes = profile.pick(*TRAINED_GATES)
    widths, layer, nets_per_width, steps, _ = sizes["asymptotic"]
    gates = 2 * sum(training_flops(b, layer + 1, w, 1, steps) for w, b in zip(widths, nets_per_width))
    n_printed, _, depth, nets, steps_printed, _ = sizes["printed"]
    printed = training_flops(nets, depth, n_printed, 1, steps_printed)
    n, L, b, lr0, time_ = profile.pick(*BALANCE_SIZES)
    balance = 2 * training_flops(b, L, n, 2 * n, int(7 * time_ / lr0))  # lr0, lr0/2, lr0/4 over the same time; twice
    d = profile.pick(*SV_DYNAMICS_SIZES)
    dynamics = 2 * training_flops(d.batch, d.depth, d.n, 2 * d.n, int(7 * d.time / d.lr))  # the checked and the other runs
    modewise = sum(4 * c.batch * L * c.n**3 for c in MODEWISE_SIZES.of(profile) for L in c.depths)  # products, SVDs
    return stability + stagnation + descent + gates + printed + balance + dynamics + modewise
