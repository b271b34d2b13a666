"""Pruning at initialization: stability-theorem (full Thm 7), random-pruning-scaling (Thm 5),
magnitude-pruning-scaling (Thm 6) and edge-of-stability (§5.1)."""

import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theorems.budget import PER_ASSERTION_RATE
from theorems.ensembles import Ensemble, Pruning
from theorems.experiments import (
    STABILITY_THRESHOLD,
    bootstrap_crossing,
    coupled_log_norm_gap,
    depth_slope,
    per_layer_slopes,
    perturbed,
    mean_square_gain,
    pruned_slope_model_error,
    pruning_departure_sweep,
)
from theorems.plugin import option, seed_for
from theorems.profiles import Profile, Sizes, WidthSweep, Window, product_flops
from theorems.predictions import (
    EDGE_DENSITY_VACUOUS_BELOW,
    edge_of_stability_density,
    magnitude_pruning_scale,
    random_pruning_scale,
)
from theorems.seeding import generator
from theorems.spectral import log_spectral_norm, products_at
from theorems.stats import (
    Estimate,
    compare,
    compare_at_most,
    extrapolate,
    extrapolation_power_gap,
    fit_slope,
    log_factor_allowance,
    mean_estimate,
)

GAP_DEPTH = 5


def _instance(kind, n):
    """Instances meeting the stability theorem's (i)-(iii): (pruning, eta) at width n."""
    if kind == "random-0.5":
        return Pruning("random", 0.5, random_pruning_scale(0.5)), 0.0
    if kind == "random-0.75":
        return Pruning("random", 0.75, random_pruning_scale(0.75)), 0.0
    if kind == "random-0.9":
        return Pruning("random", 0.9, random_pruning_scale(0.9)), 0.0
    if kind == "magnitude-0.5":
        return Pruning("magnitude", 0.5, magnitude_pruning_scale(n, 0.5)), 0.0
    if kind == "magnitude-0.9":
        return Pruning("magnitude", 0.9, magnitude_pruning_scale(n, 0.9)), 0.0
    if kind == "uniform-mask":  # bounded non-binary mask b ~ U(0,1), t = E[b^2]^-1/2 = sqrt(3)
        return Pruning("uniform", 0.0, math.sqrt(3.0)), 0.0
    if kind == "weak-correlation":  # corr = eta^2 = 1/(4 n log^3 n), inside o(1/(n log^3 n)) up to a constant
        return None, 0.5 / math.sqrt(n * math.log(n) ** 3)
    raise ValueError(kind)


CLAIMS_OF = {"random-0.5": ["random-pruning-scaling"], "random-0.75": ["random-pruning-scaling"],
             "random-0.9": ["random-pruning-scaling"], "magnitude-0.5": ["magnitude-pruning-scaling"],
             "magnitude-0.9": ["magnitude-pruning-scaling"], "uniform-mask": [], "weak-correlation": ["correlated-weights"]}
INSTANCES = Sizes(quick=["random-0.5", "random-0.75", "magnitude-0.5", "uniform-mask", "weak-correlation"],
                  full=list(CLAIMS_OF))


def _instance_param(name):
    return pytest.param(name, marks=[pytest.mark.claim(c) for c in CLAIMS_OF[name]], id=name)


INSTANCE_PARAMS = Sizes(*([_instance_param(i) for i in names] for names in INSTANCES))


def gap_extrapolation(instance, widths, batch, rng, device):
    """Coupled gap E[log||J^B|| - log||J||] at depth 5 per width, extrapolated to n -> inf.

    The leading finite-size term is not known for every instance (sparse entries move the edge by
    O(1/(rho n)), fluctuations are O(n^-2/3)), so the central fit uses the slowest plausible power
    n^-1/2 and the model error is its distance to the n^-1 fit, on an independent ensemble."""
    def perturbation(n):
        pruning, eta = _instance(instance, n)
        return dict(pruning=pruning, eta=eta)

    vals, ses = _gaps_by_width(widths, batch, rng, device, perturbation)
    a_half, _, _ = extrapolate(widths, vals, ses, power=0.5)
    # the n^-1/2 vs n^-1 ambiguity (the leading finite-size power is not known for every instance), on independent
    # networks so that its noise does not borrow from the estimate it widens
    err = extrapolation_power_gap(widths, *_gaps_by_width(widths, batch, rng, device, perturbation), powers=(0.5, 1.0))
    return a_half, err, vals


def _gaps_by_width(widths, batch, rng, device, perturbation):
    """(values, standard errors) of the coupled gap per width, the perturbation of each width from ``perturbation``."""
    ests = [mean_estimate(coupled_log_norm_gap(Ensemble(n, GAP_DEPTH, batch=batch), rng, device, **perturbation(n)))
            for n in widths]
    return [e.value for e in ests], [e.stderr for e in ests]


#: The gap checks' widths and networks per width (quick, full).
class GapSizes(NamedTuple):
    widths: tuple
    batch: int


GAP_SIZES = Sizes(quick=GapSizes((32, 64, 128, 256), 48), full=GapSizes((128, 256, 512, 1024, 2048), 64))


@pytest.fixture
def gap_widths(profile):
    return profile.pick(*GAP_SIZES)[0]


@pytest.mark.claim("stability-theorem")
@pytest.mark.parametrize_by_profile("instance", INSTANCE_PARAMS)
def test_gap_vanishes_as_width_grows(instance, gap_widths, profile, rng, device, verdict):
    """Statistic: E[log||J^B|| - log||J||] (same W and gates), extrapolated in n; prediction 0."""
    batch = profile.pick(*GAP_SIZES)[1]
    a, err, vals = gap_extrapolation(instance, gap_widths, batch, rng, device)
    verdict.check(compare(f"gap extrapolated to n->inf ({instance})", a, 0.0, model_error=err,
                          sizes=dict(widths=list(gap_widths), L=GAP_DEPTH, B=batch),
                          note=f"gaps per width {np.round(vals, 4).tolist()}"))


@pytest.mark.claim("stability-theorem")
@pytest.mark.claim("random-pruning-scaling")
def test_unscaled_random_pruning_gap_does_not_vanish(gap_widths, profile, rng, device, verdict):
    """Negative control: without the (1-s)^-1/2 scale the same extrapolation rejects 0
    (the gap is (L/2) log(1-s) exactly)."""
    batch = profile.pick(*GAP_SIZES)[1]

    def unscaled(n):
        return dict(pruning=Pruning("random", 0.5, 1.0))

    a, _, _ = extrapolate(gap_widths, *_gaps_by_width(gap_widths, batch, rng, device, unscaled), power=0.5)
    err = extrapolation_power_gap(gap_widths, *_gaps_by_width(gap_widths, batch, rng, device, unscaled), powers=(0.5, 1.0))
    verdict.reject(compare("unscaled gap vs 0 (negative control)", a, 0.0,
                           model_error=err, sizes=dict(widths=list(gap_widths), L=GAP_DEPTH)))


SLOPE_WINDOW = Sizes(quick=Window(n=96, l1=10, l2=130, batch=24), full=Window(n=256, l1=20, l2=420, batch=48))


@pytest.fixture
def slope_window(profile):
    return profile.pick(*SLOPE_WINDOW)


@pytest.mark.claim("random-pruning-scaling")
@pytest.mark.printed
@pytest.mark.parametrize("gates", ["bernoulli", "relu"])
@pytest.mark.parametrize("s", [0.5, 0.9])
@pytest.mark.statistical(1)  # the independent bound of pruning's rate offset (pruned_slope_model_error)
def test_unscaled_random_pruning_rate(s, gates, slope_window, rng, device, verdict):
    """Printed: unscaled ||J^pruned|| ∝ (1-s)^((L-1)/2), i.e. a per-layer slope ½ log(1-s) on top of the
    unpruned rate gamma_1 (a proportionality: (L-1)/2 and L/2 differ by a constant factor).  Tolerance:
    CI + Δ_n/span + pruning's finite-n offset of the image-norm rate, bounded on independent networks
    (:func:`pruned_slope_model_error`; its bound takes the test's second slot).  Negative control: the other
    exponent, log(1-s) per layer, is rejected."""
    n, l1, l2, b = slope_window
    ens = Ensemble(n, l2, gates=gates, batch=b, pruning=Pruning("random", s, 1.0))
    est = depth_slope(ens, l1, l2, rng, device)
    g1 = ens.with_(pruning=None).lyapunov_exponents(1)[0]  # the unpruned model's rate
    verdict.sizes.update(n=n, L1=l1, L2=l2, B=b, s=s, gates=gates)
    err, rate = pruned_slope_model_error(ens, 0.5 * math.log(1 - s) + g1, l1, l2, rng, device,
                                         level_rate=PER_ASSERTION_RATE)
    verdict.note(image_norm_rate_independent=[round(rate.value, 5), round(rate.stderr, 5)])
    verdict.check(compare("per-layer slope, unscaled", est, 0.5 * math.log(1 - s) + g1,
                          model_error=err))
    verdict.reject(compare("slope vs exponent L-1 (negative control)", est,
                           math.log(1 - s) + g1, model_error=err))


class GainSizes(NamedTuple):
    n: int
    depth: int
    batch: int


#: The exact mean-square check of the scales (matrix-vector products: cheap at any width).
GAIN_SIZES = Sizes(quick=GainSizes(128, 50, 96), full=GainSizes(512, 100, 128))
#: Orthogonal probes per factor in the gain (:func:`mean_square_gain`): 8 halve the standard error for the same
#: factors (random, s = 0.9: 0.0036 -> 0.0018; 16 buy no more: what is left is the mask's and the gates' own
#: fluctuation, shared by the probes), which took the 2% control's largest estimated miss over 20 calibration seeds
#: (5e-4 at seed 732, above its slot) to about 20 standard errors of margin.
GAIN_PROBES = 8
SCALE_CLAIM = {"random": "random-pruning-scaling", "magnitude": "magnitude-pruning-scaling"}


def scaled_pruning(kind: str, s: float, n: int, error: float = 1.0) -> Pruning:
    """Pruning of ``kind`` at sparsity s with the paper's scale ((1-s)^-1/2 for random, t_n for magnitude) times
    ``error``."""
    scale = random_pruning_scale(s) if kind == "random" else magnitude_pruning_scale(n, s)
    return Pruning(kind, s, error * scale)


@pytest.mark.parametrize("kind,s", [pytest.param(k, s, marks=pytest.mark.claim(SCALE_CLAIM[k]))
                                    for k in ("random", "magnitude") for s in (0.5, 0.9)])
def test_scale_restores_the_mean_square_gain_exactly(kind, s, profile, rng, device, verdict):
    """What a scale must do, checked exactly at any width and averaged over depth (issue 13 §2: a 2% scale error
    must fail at any master seed).  Statistic: per network the mean over L layers of ||F_l X_l||_F² / k, X_l its own
    orthonormal image of a Haar frame of k = GAIN_PROBES columns (:func:`mean_square_gain`), over σ² p; prediction 1,
    model error 0: given the past each term has expectation exactly σ² p when the scale is right, for random pruning
    with (1-s)^-1/2 and magnitude pruning with t_n alike.  Negative controls: the scale off by 2% (prediction 1.02², about 20 standard
    errors away) and, for magnitude pruning, the random-pruning scale in place of t_n (prediction (c/t_n)²)."""
    n, depth, batch = GAIN_SIZES.of(profile)
    verdict.sizes.update(n=n, L=depth, B=batch, kind=kind, s=s)
    ens = Ensemble(n, depth, batch=batch, pruning=scaled_pruning(kind, s, n))
    gain = mean_estimate(mean_square_gain(ens, rng, device, probes=GAIN_PROBES) / (ens.sigma2 * ens.effective_keep_prob))
    verdict.check(compare("mean-square gain per layer / σ² p", gain, 1.0))
    verdict.reject(compare("gain vs the scale off by 2% (negative control)", gain, 1.02**2))
    if kind == "magnitude":
        ratio = random_pruning_scale(s) / magnitude_pruning_scale(n, s)
        verdict.reject(compare("gain vs (1-s)^-1/2 in place of t_n (negative control)", gain, ratio**2))


@pytest.mark.claim("magnitude-pruning-scaling")
@pytest.mark.parametrize("s", [0.5, 0.9])
def test_three_scales_agree(s, rng, device, verdict):
    """t_n from the exact Beta sum, from its large-n limit, and from the retained energy of sampled
    magnitude-pruned layers (whose mean is exactly t_n^-2) agree; the random-pruning scale does not."""
    n, b = 64, 400
    from theorems.ensembles import sample_weights

    w = sample_weights(b, n, 2.0, rng, pruning=Pruning("magnitude", s), device=device)
    energy = ((w**2).sum(dim=(-2, -1)) / (2.0 * n)).cpu().numpy()
    exact = magnitude_pruning_scale(n, s)
    limit = magnitude_pruning_scale(n, s, exact=False)
    assert abs(exact - limit) < 1e-3 * exact, (exact, limit)
    verdict.check(compare("retained energy t^-2", mean_estimate(energy), exact**-2,
                          sizes=dict(n=n, B=b, s=s), note=f"t_exact={exact:.6f}, t_limit={limit:.6f}"))
    verdict.reject(compare("retained energy vs (1-s) (negative control)",
                           mean_estimate(energy), 1 - s, sizes=dict(n=n, B=b, s=s)))


@pytest.mark.claim("magnitude-pruning-scaling")
@pytest.mark.parametrize("s", [0.5, 0.9])
@pytest.mark.statistical(1)  # the two independent bounds of pruning's rate offset (pruned_slope_model_error)
def test_wrong_scale_drifts_at_log_c_over_t(s, slope_window, rng, device, verdict):
    """Magnitude pruning scaled by c = (1-s)^-1/2 instead of t_n: per-layer slope gamma_1 + log(c/t_n)
    (tolerance CI + Δ_n/span + the finite-n offset of the pruned image-norm rate, bounded on independent networks:
    :func:`pruned_slope_model_error`); negative control: 'c restores stability' (slope gamma_1) is rejected;
    with t_n itself the slope is gamma_1."""
    n, l1, l2, b = slope_window
    t = magnitude_pruning_scale(n, s)
    c = random_pruning_scale(s)
    verdict.sizes.update(n=n, L1=l1, L2=l2, B=b, s=s, t=round(t, 5), c=round(c, 5))
    bound_rate = PER_ASSERTION_RATE / 2  # the two independent bounds share the test's second slot
    ens_c = Ensemble(n, l2, gates="relu", batch=b, pruning=Pruning("magnitude", s, c))
    g1 = ens_c.with_(pruning=None).lyapunov_exponents(1)[0]  # the unpruned model's rate
    wrong = depth_slope(ens_c, l1, l2, rng, device)
    err_c, rate_c = pruned_slope_model_error(ens_c, g1 + math.log(c / t), l1, l2, rng, device, level_rate=bound_rate)
    verdict.check(compare("slope with scale c", wrong, g1 + math.log(c / t),
                          model_error=err_c))
    verdict.reject(compare("slope with c vs stable (negative control)", wrong, g1,
                           model_error=err_c))
    ens_t = ens_c.with_(pruning=Pruning("magnitude", s, t))
    right = depth_slope(ens_t, l1, l2, rng, device)
    err_t, rate_t = pruned_slope_model_error(ens_t, g1, l1, l2, rng, device, level_rate=bound_rate)
    verdict.note(image_norm_rate_independent={"c": [round(rate_c.value, 5), round(rate_c.stderr, 5)],
                                              "t_n": [round(rate_t.value, 5), round(rate_t.stderr, 5)]})
    verdict.check(compare("slope with scale t_n", right, g1, model_error=err_t))


# --- edge of stability -----------------------------------------------------------------------------

DEGREES = (1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.3)  # rho * n, scanned from sparse to dense


def transition_density(n, batch, l1, l2, rng, device, seed):
    """log rho*(n): the density (1-s) at which the median per-layer slope of scaled randomly pruned
    networks first departs from the unpruned one by STABILITY_THRESHOLD, scanning rho n over DEGREES from dense to
    sparse; bootstrap standard error over networks."""
    rhos = [d / n for d in reversed(DEGREES)]
    reference, samples, collapsed = pruning_departure_sweep(n, batch, l1, l2, rhos, rng, device)
    est = bootstrap_crossing(rhos, samples, reference, STABILITY_THRESHOLD, np.random.default_rng(seed))
    return est, dict(zip([round(r * n, 2) for r in rhos], collapsed))


#: The quick batch is 64: with 36 the n^-1/2 control's estimated miss was 8.6e-5 at the default seed and 3.0e-5 at
#: calibration seed 1214 (the exponent's standard error 0.095; the slot is 2.5e-5 since session 19); with 48 it
#: reached 5.1e-4 at seed 1224 (an estimate near -1.0 at a standard error 0.066: the control needs 8.3 standard
#: errors between the exponent and -1/2); with 64 its largest over 20 seeds was 3e-14.
EDGE_SIZES = Sizes(quick=WidthSweep(widths=(24, 48, 96, 192), batch=64, l1=5, l2=45),  # n <= 512: see README
                   full=WidthSweep(widths=(64, 128, 256, 512), batch=48, l1=10, l2=90))


@pytest.fixture
def edge_sizes(profile):
    return profile.pick(*EDGE_SIZES)


@pytest.fixture(scope="module")
def edge_measurement(request, device):
    """Shared by the two edge checks (an xdist group keeps them on one worker); its seed is derived from
    the master seed and this fixture's name, so it does not depend on which check runs first."""
    seed = seed_for(request, "::edge_measurement")
    rng = generator(seed, device)
    widths, batch, l1, l2 = Profile(option(request.config, "profile")).pick(*EDGE_SIZES)
    points = [transition_density(n, batch, l1, l2, rng, device, seed) for n in widths]
    logs = np.array([p[0].value for p in points])
    ses = np.array([p[0].stderr for p in points])
    slope = fit_slope(np.log(widths), logs, ses)
    return widths, logs, ses, slope, [p[1] for p in points]


@pytest.mark.claim("edge-of-stability")
@pytest.mark.xdist_group("edge-of-stability")
def test_transition_density_scales_like_one_over_n(edge_measurement, edge_sizes, verdict):
    """Statistic: exponent a in rho*(n) ∝ n^a (weighted fit, bootstrap errors); prediction -1; model error
    :func:`log_factor_allowance` (a hidden factor log(n)^b, |b| <= 1, moves the fitted exponent by at most
    that much at these widths and weights: about 0.2).
    Negative controls, exact rival laws (each fixes its own log factor, so no allowance): n^-1/2, the neighbouring
    exponent, and the printed log(n)^5/n read as the transition are rejected.  (With the |b| <= 1 allowance on the
    rival too, n^-1/2 up to logs and n^-1 up to logs touch at -3/4 and no sample size separates them: the control
    missed with probability 0.19 at calibration seed 213.)"""
    widths, logs, ses, slope, collapses = edge_measurement
    _, batch, l1, l2 = edge_sizes
    verdict.sizes.update(widths=list(widths), B=batch, L1=l1, L2=l2, theta=STABILITY_THRESHOLD)
    verdict.note(rho_star_times_n=np.round(np.exp(logs) * np.array(widths), 3).tolist(),
                 collapse_fraction_by_degree=collapses)
    per_log_power = log_factor_allowance(widths, stderrs=ses)  # slope of log log n on log n, same points and weights
    verdict.check(compare("exponent of rho*(n)", slope, -1.0, model_error=per_log_power))
    verdict.reject(compare("exponent vs -1/2 (negative control)", slope, -0.5))
    verdict.reject(compare("exponent vs printed log^5(n)/n (negative control)", slope,
                           5 * per_log_power - 1))


@pytest.mark.claim("edge-of-stability")
@pytest.mark.xdist_group("edge-of-stability")
def test_sufficient_condition_is_conservative(edge_measurement, edge_sizes, verdict):
    """The printed 1-s >> log(n)^5/n is a *sufficient* condition (full §5.1: 'it is highly likely that phase transition
    occurs at a smaller threshold').  Its testable content: stability holds at every density above it, i.e. the
    measured transition lies below it.  Statistic log rho*(n) at each width; one-sided check log rho* <= log(log^5 n/n)
    (Bonferroni over widths).  The bound is vacuous (>= 1: no pruning at all) for every n < 3.3e5, so this holds
    trivially at reachable widths; how conservative it is, the ratio (log^5 n/n) / rho*, is recorded per width.
    Negative control: reading the bound as the location of the transition (log rho* = log(log^5 n/n), an order of
    magnitude of slack for the '~') is rejected at the largest width."""
    widths, logs, ses, _, _ = edge_measurement
    _, batch, l1, l2 = edge_sizes
    bound = np.log([edge_of_stability_density(n) for n in widths])
    verdict.note(sufficient_density_over_rho_star=np.round(np.exp(bound - logs), 1).tolist(),
                 sufficient_density=np.round(np.exp(bound), 2).tolist(), vacuous_below_width=EDGE_DENSITY_VACUOUS_BELOW)
    for n, lr, se, b in zip(widths, logs, ses, bound):
        verdict.check(compare_at_most(f"log rho*(n={n}) <= log(log^5 n / n) (sufficient condition)",
                                      Estimate(lr, se, math.inf, batch), b, sizes=dict(n=n, B=batch, L1=l1, L2=l2),
                                      family=len(widths)))
    verdict.reject(compare("log rho*(n_max) vs log(log^5 n / n) read as the transition (negative "
                           "control)", Estimate(logs[-1], ses[-1], math.inf, batch), bound[-1], model_error=math.log(10),
                           sizes=dict(n=widths[-1], B=batch, L1=l1, L2=l2)))




# --- property: scaled random pruning is stable at every sparsity with (1-s) n >= 32 -------------------

def coupled_slope_deviation(n, s, batch, l1, l2, gen, scale=None, device="cpu"):
    """Per-network (slope of log||J^B||) - (slope of log||J||) over [L1, L2], same W and gates; pruning scaled
    by ``scale`` (default (1-s)^-1/2)."""
    factors = list(Ensemble(n, l2, batch=batch).factors(gen, device=device))
    base = products_at(factors, [l1, l2])
    scale = random_pruning_scale(s) if scale is None else scale
    prun = products_at(perturbed(factors, gen, pruning=Pruning("random", s, scale)), [l1, l2])
    b = {d: log_spectral_norm(p).cpu().numpy() for d, p in base.items()}
    q = {d: log_spectral_norm(p).cpu().numpy() for d, p in prun.items()}
    return per_layer_slopes(q[l1], q[l2], l1, l2) - per_layer_slopes(b[l1], b[l2], l1, l2)


@pytest.mark.claim("random-pruning-scaling")
@pytest.mark.statistical(8)  # one one-sided comparison per example, each at the per-assertion rate
@settings(max_examples=8)
@given(n=st.sampled_from([64, 128]), keep_degree=st.floats(32.0, 60.0))
def test_scaled_random_pruning_is_stable_at_any_sparsity(request, device, n, keep_degree):
    """For every sparsity with (1-s) n >= 32, the per-layer rate of the scaled pruned network stays within
    STABILITY_THRESHOLD (the stability threshold of the edge-of-stability check) of the unpruned one: one-sided, the
    interval's lower end must not exceed STABILITY_THRESHOLD.  Seeds derive from the master seed and the example."""
    s = 1.0 - keep_degree / n
    seed = seed_for(request, f"[{n},{keep_degree!r}]")
    dev = coupled_slope_deviation(n, s, 16, 5, 25, generator(seed, device), device=device)
    cmp = compare_at_most("|Δ per-layer rate| of scaled pruning", mean_estimate(np.abs(dev)),
                          STABILITY_THRESHOLD, sizes=dict(n=n, s=round(s, 4), B=16, L1=5, L2=25), seed=seed)
    assert cmp.consistent, cmp.message("at most STABILITY_THRESHOLD")


@pytest.mark.claim("random-pruning-scaling")
def test_unscaled_pruning_fails_the_same_property(rng, device, verdict):
    """Negative control of the property above: the same statistic without the (1-s)^-1/2 scale, at
    (1-s) n = 32 and n = 128 (s = 0.75), is rejected (its rate is off by ½|log(1-s)| = 0.69)."""
    n, s = 128, 0.75
    dev = coupled_slope_deviation(n, s, 16, 5, 25, rng, scale=1.0, device=device)
    verdict.reject(compare_at_most("|Δ per-layer rate| unscaled (negative control)",
                                   mean_estimate(np.abs(dev)), STABILITY_THRESHOLD, sizes=dict(n=n, s=s, B=16, L1=5, L2=25)))


def work(profile) -> float:
    """Float64 work of this module's dominant kernels at the profile's sizes (the ``--profile full`` estimate): the
    coupled gaps (two products per network, twice: the model error comes from independent networks), the pruned
    slopes (8 ensembles plus their independent rate bounds) and the edge scan (the reference and one ensemble per
    degree)."""
    widths, batch = profile.pick(*GAP_SIZES)
    gaps = (len(INSTANCES.of(profile)) + 1) * sum(4 * product_flops(batch, GAP_DEPTH, n) for n in widths)
    n, _, l2, b = profile.pick(*SLOPE_WINDOW)
    slopes = 8 * (product_flops(b, l2, n) + product_flops(2 * b, l2, n, columns=1))
    widths, batch, _, l2 = profile.pick(*EDGE_SIZES)
    edge = sum((len(DEGREES) + 1) * product_flops(batch, l2, n) for n in widths)
    n, depth, batch = GAIN_SIZES.of(profile)
    gains = 4 * product_flops(batch, depth, n, columns=1)
    return gaps + slopes + edge + gains
