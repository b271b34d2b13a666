"""critical-init (full Thm 1; its trainability statements, full App. G.5-G.6) and free-limit (stability theorem, full
App. A) at initialization."""

import math

import numpy as np
import pytest

from theorems.convolution import CNNOnDigits
from theorems.ensembles import Ensemble
from theorems.experiments import depth_slope, log_norms_at, slope_model_error, squared_norms_with_mean_square
from theorems.predictions import (
    free_semicircular_product_norm2,
    gated_moments,
    masked_product_edge,
)
from theorems.profiles import Sizes, TrainabilitySizes, Window, conv_training_flops, product_flops, training_flops
from theorems.stats import (FALSE_FAIL_RATE, compare, compare_at_most, compare_below, control_variate_mean, extrapolate,
                            fit_slope, intercept_shift, mean_estimate)
from theorems.training import MLP_ON_DIGITS, trainability_at_one_rate


#: The span sets the bracket's model error Δ_n / span: 480 layers at n = 96 (0.006) leave the check a minimum detectable
#: discrepancy of about 0.01 per layer, so that the weights' scale off by 2% (log 1.02 = 0.0198) is rejected; with 240
#: it was 0.018 (about 60% power).
DEPTH_WINDOW = Sizes(quick=Window(n=96, l1=10, l2=490, batch=24), full=Window(n=512, l1=20, l2=620, batch=64))

#: The negative control's near miss: the weights' standard deviation 2% above the critical one.
OFF_CRITICAL_SCALE = 1.02


@pytest.fixture
def depth_window(profile):
    """Width and the two depths of the per-layer slope; the span sets the model error Δ_n / span."""
    return profile.pick(*DEPTH_WINDOW)


# --- critical-init ---------------------------------------------------------------------------------

@pytest.mark.claim("critical-init")
@pytest.mark.parametrize("gates", ["bernoulli", "relu"])
@pytest.mark.parametrize("sigma2", [0.5, 2.0, 4.0])
def test_per_layer_rate_is_gamma1(gates, sigma2, depth_window, rng, device, verdict):
    """Statistic: per-layer slope of E log||J|| over [L1, L2]; prediction gamma_1(n, 1/2, σ²);
    tolerance: the suite's t-interval + Δ_n/(L2-L1) (the exact bracket 0 <= E log||J_L|| - L gamma_1 <= Δ_n).
    Negative control: :func:`test_off_critical_variance_is_not_stable` (a 2% weight scale).
    For ReLU MLPs the same prediction holds exactly (the gates of a fresh layer are fair coins given the
    past, and a reflection across the activation direction maps the conditioned weights to Gaussian ones)."""
    n, l1, l2, b = depth_window
    ens = Ensemble(n, l2, sigma2=sigma2, gates=gates, batch=b)
    verdict.sizes.update(n=n, L1=l1, L2=l2, B=b, gates=gates, sigma2=sigma2)
    est = depth_slope(ens, l1, l2, rng, device)
    verdict.check(compare("per-layer slope of E log||J||", est, ens.lyapunov_exponents(1)[0],
                          model_error=slope_model_error(n, l1, l2)))


#: Depths of the prefactor check and the two widths (n >> L) whose exponents bound the finite-width drift.
PREFACTOR = dict(depths=(2, 4, 8, 16), widths=(128, 256), batch=96)


def log_mean_squared_norms(n, depths, batch, rng, device):
    """log E||J_L||² at σ² = 2 per depth with delta-method errors, one set of networks per width streamed through
    the depths (prefixes)."""
    ln = log_norms_at(Ensemble(n, depths[-1], sigma2=2.0, gates="relu", batch=batch), depths, rng, device)
    means = [mean_estimate(np.exp(2 * ln[L])) for L in depths]
    return np.array([math.log(m.value) for m in means]), np.array([m.stderr / m.value for m in means])


@pytest.mark.claim("critical-init")
def test_norm_squared_grows_linearly_in_depth_at_criticality(rng, device, verdict):
    """The depth prefactor of Thm 1 at σ² = 2 (n >> L): E||J||² grows like L, i.e. ||J|| like √L.
    Statistic: exponent of E||J||² in L (weighted fit over PREFACTOR depths, ReLU MLP at width n); prediction the
    exponent of the n -> inf edge lambda_max(L, 1/2, 2) (closed form 1) over the same depths, 0.99; model error from
    independent data: the drift d = exponent(n) - exponent(n/2) measured on a second ensemble at half the width, taken
    at its upper confidence bound |d| + q se_d, times 1/(sqrt(2) - 1): if the finite-width bias falls like n^-a with
    a >= 1/2 (the edge's own corrections are O(n^-2/3)), the bias left at n is at most d / (2^a - 1).
    Negative controls: the printed Θ(L) read for ||J|| (exponent 2 for ||J||²) and no prefactor (exponent 0) are
    rejected."""
    depths, (half, n), batch = PREFACTOR["depths"], PREFACTOR["widths"], PREFACTOR["batch"]
    logs, errs = log_mean_squared_norms(n, depths, batch, rng, device)
    logs_half, errs_half = log_mean_squared_norms(half, depths, batch, rng, device)
    est = fit_slope(np.log(depths), logs, errs)
    # the drift is the slope of the per-depth differences (the curvature both widths share cancels there; fitting
    # each width and differencing inflated both errors by their chi^2 and made the model error ~0.9, calibration
    # seed 212)
    drift = fit_slope(np.log(depths), logs - logs_half, np.hypot(errs, errs_half))
    err = max(abs(v) for v in drift.interval()) / (math.sqrt(2) - 1)
    edge = fit_slope(np.log(depths), np.log([masked_product_edge(L, 0.5, 2.0) for L in depths])).value
    verdict.sizes.update(n=n, half_width=half, depths=list(depths), B=batch, sigma2=2.0, gates="relu")
    verdict.check(compare("exponent of E||J||² in L at σ²=2", est, edge, model_error=err,
                          note=f"drift from n={half}: {drift.value:.3f} ± {drift.stderr:.3f}"))
    verdict.reject(compare("exponent vs printed Θ(L) for ||J|| (2 for ||J||²; negative control)", est,
                           2.0, model_error=err))
    verdict.reject(compare("exponent vs no depth prefactor (0; negative control)", est, 0.0,
                           model_error=err))


@pytest.mark.claim("critical-init")
@pytest.mark.parametrize("gates", ["bernoulli", "relu"])
def test_off_critical_variance_is_not_stable(gates, depth_window, rng, device, verdict):
    """Negative control of :func:`test_per_layer_rate_is_gamma1`: with the weights' scale 2% above critical
    (σ² = 2 x 1.02², a per-layer rate log 1.02 ≈ 0.0198 above gamma_1(n, 1/2, 2)) the same procedure rejects the
    critical rate (about 10 standard errors beyond the bracket at the quick window; σ² = 2.2 was the control before)."""
    n, l1, l2, b = depth_window
    ens = Ensemble(n, l2, sigma2=2.0 * OFF_CRITICAL_SCALE**2, gates=gates, batch=b)
    verdict.sizes.update(n=n, L1=l1, L2=l2, B=b, gates=gates, sigma2=ens.sigma2)
    est = depth_slope(ens, l1, l2, rng, device)
    verdict.reject(compare(f"slope with the weights' scale x {OFF_CRITICAL_SCALE} vs critical rate (negative control)", est,
                           ens.with_(sigma2=2.0).lyapunov_exponents(1)[0], model_error=slope_model_error(n, l1, l2)))


@pytest.mark.claim("critical-init")
@pytest.mark.printed
@pytest.mark.xfail(strict=True, reason="refuted as printed: the measured per-layer rate of log||J|| is ½ log(σ²/2) "
                   "(0.35 at σ²=4), not log(σ²/2) (0.69); Θ(L (σ²/2)^L) is the rate of ||J||², i.e. "
                   "||J|| = Θ(√L (σ²/2)^(L/2)) (free-limit edge: ||J||² -> 2eL (σ²/2)^L)")
def test_printed_rate_L_times_half_sigma2_to_the_L(depth_window, rng, device, verdict):
    """As printed: ||J|| ≈ Θ(L (σ²/2)^L) means a per-layer slope log(σ²/2) (+ (log L2 - log L1)/span from the
    factor L), up to the finite-n offset |gamma_1 - ½log(σ²/2)| and Δ_n/span."""
    n, l1, l2, b = depth_window
    sigma2 = 4.0
    ens = Ensemble(n, l2, sigma2=sigma2, gates="relu", batch=b)
    verdict.sizes.update(n=n, L1=l1, L2=l2, B=b, sigma2=sigma2)
    est = depth_slope(ens, l1, l2, rng, device)
    printed = math.log(sigma2 / 2) + (math.log(l2) - math.log(l1)) / (l2 - l1)
    err = slope_model_error(n, l1, l2) + abs(ens.lyapunov_exponents(1)[0] - ens.free_log_rate())
    verdict.check(compare("per-layer slope vs printed log(σ²/2)", est, printed, model_error=err))


#: Pilot (seed 5, 8 triples): at depth 16 after 600 steps the critical networks' training accuracy is 0.53-0.88 (mean
#: 0.74), σ² = 1 and 4 stay at chance (0.09, 0.10; half the σ² = 4 networks diverge); the paired difference 0.65 has a
#: spread of 0.14 per triple.  At depth 2 all three reach 0.94-1.  A rate fixed at init (the critical network's
#: 1/λ_max) left the critical networks at 0.4 after 600 steps: the rate grows 10-20x as they train, hence the
#: re-estimate.  With 12 triples of 32 digits a calibration seed (1043: critical 0.72 ± 0.06) put the σ² = 1 check 9.2
#: standard errors from 0 against a t quantile of 7.0 at 11 degrees of freedom (power shortfall 0.005).  The cost is
#: the weight updates (full-batch GD on few digits is memory-bound), not the digits: 16 digits per network train the
#: critical networks further in the budget (0.90 after 500 steps).  16 triples put both checks 17-35 standard errors
#: from 0 at seeds 1043 and 1086, but a calibration seed (1122) left the σ² = 1 check a power shortfall of 1.1e-4 (some
#: σ² = 1 networks learn a little; t quantile 6.0 at 15 degrees of freedom): 20 triples.  The controls' shallow depth
#: is 1 since session 18 (as in test_trainability.py; was 2: all three σ² trained to >= 0.98 there too).
TRAINABILITY = Sizes(quick=TrainabilitySizes(16, 1, 20, 16, 500), full=TrainabilitySizes(48, 1, 32, 256, 3000))
TRAINABILITY_SIGMA2 = (1.0, 2.0, 4.0)


@pytest.mark.claim("critical-init", statement="trainability")
def test_critical_initialisation_trains_at_depths_where_others_do_not(profile, rng, device, verdict):
    """Full App. G.5, Fig. 15 (left), on the shipped digits: ReLU MLPs at σ² = 1, 2, 4 sharing their weights'
    directions and training digits, trained at one rate per triple (1/λ_max of the critical network's loss Hessian,
    re-estimated every 100 steps: :func:`trainability_at_one_rate`).  Statistics: the paired differences of training
    accuracy, critical minus σ² = 1 and critical minus σ² = 4, at depth ``depth``; prediction: each significantly
    positive (checked as "significantly below 0" for its negative).  Negative controls: at depth ``shallow`` "σ² = 1
    (and 4) does not train", accuracy at most chance (1/10), is rejected, so the failure at depth is depth's.
    Recorded: each σ²'s accuracy, how many diverged, the critical rate along training."""
    check_critical_trains_best(verdict, profile.pick(*TRAINABILITY), MLP_ON_DIGITS, rng, device, n=64)


#: Full App. G.6's stand-in (Figs 16-17): the circular CNN of :class:`CNNOnDigits` with 8 maps (VGG without its pooling
#: and dense head).  Pilots (10 triples, 16 digits, 300 steps; paired differences critical minus σ² = 1 / σ² = 4, mean
#: and standard deviation per triple): 4 maps at depth 12 (seed 1) trained the critical networks unevenly (0.19-1,
#: mean 0.73; differences 0.41 ± 0.34, 0.61 ± 0.35), 8 maps evenly (0.62-1, mean 0.94; 0.60 ± 0.18, 0.84 ± 0.12, 10 and
#: 22 standard errors); at depth 16 (seed 2) 3 of 10 critical networks stayed below 0.2 in the budget (0.50 ± 0.39,
#: 0.61 ± 0.41) and at depth 10 with 8 digits σ² = 1 trained as well (0.68) as the critical networks: depth 12.  At
#: depth 3 all three σ² train (4 maps: 0.73, 0.59, 0.44), the controls' shallow depth (at depth 1 a single shared 3x3
#: window cannot map digits to ten class positions).  The rate is re-estimated every 50 steps (:data:`CNN_REFRESH`):
#: the CNN's sharpness first falls 10-20x and then rises again within 100 steps, and at a refresh every 100 steps a
#: critical reference network diverged (the first run of the check: critical 0.86 ± 0.05 over 24 triples; pilot seed 3,
#: 12 triples: 0.89 with one diverged, 0.97 with none at 50, at the same cost).  With 24 triples
#: (`full-cpu-cnn-trainability-20261206`, seeds 1287-1294: 0 of 8 failed) the σ² = 1 difference was -0.58 on average
#: (sd 0.063 over seeds, stated standard error 0.056: honest; 0.275 per triple) but its power shortfall reached 0.05 at
#: seed 1294: 40 triples put an estimate 3 seed-sd below the mean 13.3 standard errors from 0 against the t quantile
#: (4.56 at 39 degrees of freedom) plus 4.06 for the power (`full-cpu-cnn-trainability-40-20261206`, seeds 1295-1298:
#: 0 of 4, largest estimated miss 3e-13).  Full profile only: 120 CNNs of depth 12 take about 5
#: minutes of one CPU worker (grouped float64 conv2d runs at ~4 GFLOP/s here), beyond the quick profile's five minutes.
CNN_TRAINABILITY = Sizes(quick=None, full=TrainabilitySizes(12, 3, 40, 16, 300))
CNN_ON_DIGITS = CNNOnDigits()  # 8 maps, 3x3 kernels
CNN_REFRESH = 50


@pytest.mark.claim("critical-init", statement="trainability-cnn")
def test_critical_cnn_trains_at_depths_where_others_do_not(profile, rng, device, verdict):
    """Full App. G.6 (Figs 16-17) on the shipped digits: the check above with circular ReLU CNNs (:data:`CNN_ON_DIGITS`,
    He kernels N(0, σ²/(9c)) at σ² = 1, 2, 4 sharing directions; the rate re-estimated every :data:`CNN_REFRESH`
    steps); the same statistics, predictions and controls.
    Recorded besides: each σ²'s median log||J_0|| (Fig. 17's abscissa).  Full profile only (see the size table)."""
    c = profile.pick(*CNN_TRAINABILITY)
    if c is None:
        pytest.skip("full profile only (--profile full): 120 CNNs of depth 12 take about 5 minutes of one CPU worker")
    check_critical_trains_best(verdict, c, CNN_ON_DIGITS, rng, device, every=CNN_REFRESH,
                               channels=CNN_ON_DIGITS.channels, pixels="8x8", kernel=CNN_ON_DIGITS.size)


def check_critical_trains_best(verdict, c, network, rng, device, every=100, **sizes):
    """The σ² trainability comparisons of the two checks above, for ``network`` at the sizes ``c``, the critical rate
    re-estimated every ``every`` steps."""
    deep = trainability_at_one_rate(c.depth, TRAINABILITY_SIGMA2, c.batch, c.samples, c.steps, rng, device,
                                    network=network, every=every)
    shallow = trainability_at_one_rate(c.shallow, TRAINABILITY_SIGMA2, c.batch, c.samples, c.steps, rng, device,
                                       network=network, every=every)
    verdict.sizes.update(**sizes, rate_every=every, depth=c.depth, shallow=c.shallow, B=c.batch, samples=c.samples,
                         steps=c.steps, data="digits", sigma2=list(TRAINABILITY_SIGMA2))
    verdict.note(critical_rate_along_training=np.round(np.median(deep.rates, axis=1), 4).tolist(),
                 diverged_at_depth={str(s): int(d.sum()) for s, d in deep.diverged.items()},
                 median_log_norm0={str(s): float(np.median(v)) for s, v in deep.log_norm0.items()})
    acc = deep.accuracy
    for s in TRAINABILITY_SIGMA2:
        verdict.record(compare(f"training accuracy at depth {c.depth}, σ² = {s:g}", mean_estimate(acc[s]), 0.1))
    for s in (1.0, 4.0):
        verdict.check(compare_below(f"E[accuracy(σ² = {s:g}) - accuracy(σ² = 2)] at depth {c.depth} (critical trains "
                                    "better: < 0)", mean_estimate(acc[s] - acc[2.0]), 0.0))
        verdict.reject(compare_at_most(f"E accuracy(σ² = {s:g}) at depth {c.shallow} vs chance 1/10 (negative "
                                       "control: it does not train)", mean_estimate(shallow.accuracy[s]), 0.1))


# --- free-limit ------------------------------------------------------------------------------------

FREE_WIDTHS = Sizes(quick=(48, 96, 192, 384), full=(128, 256, 512, 1024, 2048))


@pytest.fixture
def widths(profile):
    return profile.pick(*FREE_WIDTHS)


def _edge_means(L, p, gates, widths, rng, device, batch, sigma2):
    """E||J||² and its standard error at each width (small widths are cheap: more networks there), with
    ||J||_F²/n as control variate (exact mean (σ²p)^L at every width: removes the open gates' and the weights'
    overall scale: the variance of ||J||² falls threefold with gates)."""
    means, ses = [], []
    for n in widths:
        b = batch * max(1, widths[-2] // n)
        ens = Ensemble(n, L, sigma2=sigma2, gates=gates, keep_prob=p, batch=b)
        norms, mean_squares = squared_norms_with_mean_square(ens, rng, device)
        est = control_variate_mean(norms, mean_squares, gated_moments(L, p, sigma2)[0])
        means.append(est.value)
        ses.append(est.stderr)
    return means, ses


def _edge_extrapolation(L, p, gates, widths, rng, device, batch, sigma2=None):
    """E||J||² at each width (σ² = 1/p unless given), extrapolated to n -> inf in n^(-2/3) (Tracy-Widom scale
    of the edge).  Model error: the intercept's shift between the powers 2/3 and 1 (the unknown next-order term),
    evaluated on independent networks (on the checked ones it counted their noise twice) and taken at the upper end
    of its interval (its point estimate was as noisy as the bias it bounds: 0.63 against an interval half-width of
    0.49 at L = 3 with gates, so the 10% control's power rested on it; the bound uses a slot of its own)."""
    sigma2 = 1.0 / p if sigma2 is None else sigma2
    means, ses = _edge_means(L, p, gates, widths, rng, device, batch, sigma2)
    a23, _, pfit = extrapolate(widths, means, ses, power=2 / 3)
    shift = intercept_shift(widths, *_edge_means(L, p, gates, widths, rng, device, batch, sigma2), powers=(2 / 3, 1.0))
    err = max(map(abs, shift.interval(1 - FALSE_FAIL_RATE)))
    note = (f"fit p-value {pfit:.3g}; finite-n means {np.round(means, 4).tolist()}; model error: upper bound of the "
            f"intercept shift a(2/3) - a(1) = {shift.value:.3f} ± {shift.stderr:.3f}")
    return a23, err, note, means


EDGE_CASES = Sizes(
    # (L, p, gates, networks per width); finite-n values approach the edge slowly when L is large: the quick profile
    # keeps L <= 3, and gated products (heavier fluctuations of ||J||²) get more networks
    quick=[(1, 1.0, "none", 64), (3, 1.0, "none", 64), (2, 0.5, "bernoulli", 160), (3, 0.5, "bernoulli", 192),
              (2, 0.5, "relu", 128)],
    full=[(1, 1.0, "none", 96), (3, 1.0, "none", 96), (10, 1.0, "none", 96), (2, 0.5, "bernoulli", 96),
             (5, 0.5, "bernoulli", 192), (10, 0.5, "bernoulli", 192), (3, 0.5, "relu", 96), (5, 0.5, "relu", 192)],
)


@pytest.mark.claim("free-limit")
@pytest.mark.statistical(1)  # the upper bound of the extrapolation's model error (_edge_extrapolation)
@pytest.mark.parametrize_by_profile("L,p,gates,batch", EDGE_CASES)
def test_norm_squared_tends_to_the_free_edge(L, p, gates, batch, widths, profile, rng, device, verdict):
    """Statistic: E||J||² extrapolated to n -> inf; prediction lambda_max(L, p, σ²=1/p) (closed form 1);
    negative control: the same extrapolation rejects lambda_max shifted by 10%."""
    a, model_err, note, means = _edge_extrapolation(L, p, gates, widths, rng, device, batch)
    edge = masked_product_edge(L, p, 1.0 / p)
    verdict.sizes.update(widths=list(widths), L=L, p=p, gates=gates, B=batch)
    verdict.check(compare("E||J||² extrapolated (n^-2/3)", a, edge, model_error=model_err, note=note))
    assert all(m < edge for m in means[-2:]), "finite-n values approach the edge from below"
    verdict.reject(compare("E||J||² vs 1.10 x edge (negative control)", a, 1.10 * edge,
                           model_error=model_err))


@pytest.mark.claim("free-limit", statement="semicircular-limit")
@pytest.mark.printed
@pytest.mark.xfail(strict=True, reason="refuted as printed (the summary's sentence; full Thm 7 does not state it): "
                   "with Bernoulli(1/2) gates ||J||² tends to "
                   "lambda_max(L, 1/2, σ²) (e.g. 2.91 at L=1, σ²=1), not to ||s_1...s_L||² of free semicirculars "
                   "of variance 1/2 (2.0 at L=1); the ratio moves from 1.46 (L=1) to 2 (L->inf), so no single "
                   "normalisation fixes it. It holds without gates (p=1).")
def test_printed_semicircular_limit(widths, profile, rng, device, verdict):
    """As printed, under the theorem's normalisation 2E[HH*] = Id (σ² = 1 with p = 1/2 gates):
    ||J||² -> ||s_1 ... s_L||² with s_i free semicircular of variance 1/2."""
    L = 2
    batch = profile.pick(64, 96)
    verdict.sizes.update(widths=list(widths), L=L, B=batch)
    a, model_err, _, _ = _edge_extrapolation(L, 0.5, "bernoulli", widths, rng, device, batch, sigma2=1.0)
    verdict.check(compare("E||J||² vs printed ||s_1 s_2||²", a, free_semicircular_product_norm2(L, 0.5),
                          model_error=model_err))


def work(profile) -> float:
    """Float64 work of this module's dominant kernels at the profile's sizes (the ``--profile full`` estimate): nine
    per-layer slope ensembles, the free-edge extrapolations (more networks at the small widths; twice: the model
    error comes from independent networks) and the trainability runs (the CNN's in the full profile)."""
    n, _, l2, b = profile.pick(*DEPTH_WINDOW)
    widths = profile.pick(*FREE_WIDTHS)
    edge = 2 * sum(product_flops(batch * max(1, widths[-2] // w), L, w) for L, _, _, batch in EDGE_CASES.of(profile)
                   for w in widths)
    c = profile.pick(*TRAINABILITY)  # three σ² per triple, at both depths
    train = sum(training_flops(3 * c.batch, depth, 64, c.samples, c.steps) for depth in (c.depth, c.shallow))
    cnn = profile.pick(*CNN_TRAINABILITY)
    if cnn is not None:
        train += sum(conv_training_flops(3 * cnn.batch, depth, CNN_ON_DIGITS.channels, 64, CNN_ON_DIGITS.size,
                                         cnn.samples, cnn.steps) for depth in (cnn.depth, cnn.shallow))
    return 9 * product_flops(b, l2, n) + edge + train
