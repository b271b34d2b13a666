"""Measurements shared by the checks: sample an ensemble, reduce to per-network statistics.

Each function returns per-network numpy arrays or :class:`~theorems.stats.Estimate` objects, so
checks only arrange, measure and compare.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from .ensembles import Ensemble, Factor, Pruning, correlated, haar_frame, normalised, prune_mask, sample_weights
from .predictions import volume_gap
from .spectral import (
    apply_factor,
    extend_product,
    log_norm_of_image,
    log_singular_values,
    log_spectral_norm,
    lyapunov_qr,
    product_svd,
    products_at,
    qr_log_diagonal,
    resolvable,
    subspace_sin_theta,
    suffix_products,
    top_left_singular_vectors,
)
from .stats import (
    Estimate,
    binomial_pvalue,
    chi2_independence_pvalue,
    correlation_pvalue,
    mean_estimate,
    paired_slope,
    per_layer_slopes,
    uniformity_pvalue,
)
from .validation import check_int

__all__ = [
    "gate_test_pvalues",
    "pruning_departure_sweep",
    "mean_square_gain",
    "GATE_TEST_PAIRS",
    "STABILITY_THRESHOLD",
    "log_norms_at",
    "squared_norms_with_mean_square",
    "image_norm_rate",
    "pruned_slope_model_error",
    "correlated_log_norms_at",
    "log_singular_values_at",
    "depth_slope",
    "slope_model_error",
    "geometric_window_bias",
    "perturbed",
    "coupled_log_norm_gap",
    "per_layer_slopes",
    "crossing",
    "bootstrap_crossing",
    "qr_exponents",
    "finite_depth_offsets",
    "alignment_profile",
    "alignment_rates",
]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


#: Largest number of matrix entries sampled at once (2^25 float64 = 256 MiB): bigger batches are split
#: into chunks drawn one after the other from the same generator (deterministic).
MAX_ENTRIES = 2**25


def chunks(ens: Ensemble):
    """The ensemble split into sub-batches of at most MAX_ENTRIES matrix entries each."""
    size = max(1, MAX_ENTRIES // (ens.width * ens.width))
    for start in range(0, ens.batch, size):
        yield ens.with_(batch=min(size, ens.batch - start))


def log_norms_at(ens: Ensemble, depths: Sequence[int], gen, device="cpu") -> dict[int, np.ndarray]:
    """log||J_L|| per network at each requested depth L (prefixes of one streamed network)."""
    parts = []
    for part in chunks(ens):
        at = products_at(part.factors(gen, device=device, jacobian_only=True), depths)
        parts.append({d: _np(log_spectral_norm(p)) for d, p in at.items()})
    return {d: np.concatenate([p[d] for p in parts]) for d in parts[0]}


def squared_norms_with_mean_square(ens: Ensemble, gen, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per network ``||J||²`` and ``||J||_F²/n`` at depth L, from the same product (claim free-limit).  The second has
    the exact mean (σ²p)^L at every width (:func:`theorems.predictions.gated_moments`' m1; ReLU gates: p = 1/2, by the
    sign symmetry of each layer's pre-activations), so it serves as a control variate for the first
    (:func:`theorems.stats.control_variate_mean`)."""
    norms, squares = [], []
    for part in chunks(ens):
        prod = products_at(part.factors(gen, device=device, jacobian_only=True), [ens.depth])[ens.depth]
        log_frobenius = prod.log_scale + torch.log(torch.linalg.matrix_norm(prod.matrix))
        norms.append(_np(torch.exp(2 * log_spectral_norm(prod))))
        squares.append(_np(torch.exp(2 * log_frobenius) / ens.width))
    return np.concatenate(norms), np.concatenate(squares)


def _coupled_correlated_factors(ens: Ensemble, etas: Sequence[float], gen, device):
    """Per layer, one :class:`Factor` per eta: ``W_ind + eta w`` with the same ``W_ind`` (iid N(0, σ²/n)), the same
    shared ``w ~ N(0, σ²/n)`` per layer and network, the same input and the same Bernoulli gate noise for every eta
    (common random numbers); ReLU gates follow each eta's own pre-activations."""
    n, b, dtype = ens.width, ens.batch, torch.float64
    pres = None
    if ens.gates == "relu":
        x = (torch.randn((b, n), generator=gen, device=device, dtype=dtype) if ens.inputs is None
             else ens.inputs.to(device=device, dtype=dtype).expand(b, n).clone())
        pres = [x.clone() for _ in etas]
    for layer in range(1, ens.depth + 1):
        gated = layer > 1 or ens.input_gate
        common = None  # the gated model's gates, drawn first: W_ind's closed-gate columns are never used (not drawn)
        if ens.gates == "bernoulli":
            common = (torch.rand((b, n), generator=gen, device=device, dtype=dtype) < ens.keep_prob).to(dtype)
        w_ind = sample_weights(b, n, ens.sigma2, gen, columns=common if gated else None, device=device, dtype=dtype)
        shared = torch.randn((b, 1, 1), generator=gen, device=device, dtype=dtype)
        out = []
        for i, eta in enumerate(etas):
            w = correlated(w_ind, eta, shared, ens.sigma2) if eta else w_ind
            gate = None
            if gated:
                gate = (pres[i] > 0).to(dtype) if ens.gates == "relu" else common
            if ens.gates == "relu":
                pres[i], _ = normalised(torch.einsum("bij,bj->bi", w, torch.relu(pres[i])))
            out.append(Factor(w, gate))
        yield out


def correlated_log_norms_at(ens: Ensemble, etas: Sequence[float], depths: Sequence[int], gen,
                            device="cpu") -> list[dict[int, np.ndarray]]:
    """log||J_L|| per network at each depth, for correlated weights ``W_ind + eta w`` at every eta of ``etas``
    (claim correlated-weights), with common random numbers: one ``W_ind``, one shared ``w`` per layer and network,
    one input (and the same gate noise in the gated model) for all etas; eta = 0 is the iid reference.  Each eta's
    sample has the law of ``ens.with_(eta=eta)``; jointly they are coupled network by network, so differences between
    etas (a threshold, a gap to iid) carry far less sampling noise: resample them jointly (``paired=True`` in
    :func:`bootstrap_crossing`).  Returns one dict depth -> (B,) array per eta, in the order of ``etas``."""
    if ens.pruning is not None or ens.eta:
        raise ValueError("the coupled ensemble takes its etas from `etas`; give an unpruned ensemble with eta = 0")
    wanted = sorted(set(depths))
    parts = []
    for part in chunks(ens.with_(depth=max(wanted))):
        products = [None] * len(etas)  # advanced in lockstep, one layer at a time: memory O(len(etas)), not O(depth)
        found = [dict() for _ in etas]
        for layer in _coupled_correlated_factors(part, list(etas), gen, device):
            for i, factor in enumerate(layer):
                products[i] = extend_product(products[i], factor, renorm_every=4)
                if products[i].depth in wanted:
                    found[i][products[i].depth] = _np(log_spectral_norm(products[i]))
        parts.append(found)
    return [{d: np.concatenate([p[i][d] for p in parts]) for d in wanted} for i in range(len(etas))]


def prefix_log_singular_values(factors, depths: Sequence[int], k: int) -> dict[int, np.ndarray]:
    """Top-k log singular values (B, k) of the product of the first l factors at each l in ``depths`` (Haas' input-side
    intermediate Jacobians B_l, Fig. 4), from one streaming pass."""
    return {d: _np(log_singular_values(p, k)) for d, p in products_at(factors, depths).items()}


def log_singular_values_at(ens: Ensemble, depths: Sequence[int], k: int, gen, device="cpu") -> dict[int, np.ndarray]:
    """Top-k log singular values (B, k) at each requested depth."""
    parts = [prefix_log_singular_values(part.factors(gen, device=device, jacobian_only=True), depths, k)
             for part in chunks(ens)]
    return {d: np.concatenate([p[d] for p in parts]) for d in parts[0]}


def log_gap_slope(values: dict[int, np.ndarray], upper: int, lower: int, start: int, end: int) -> np.ndarray:
    """Per network, the per-layer slope between depths ``start < end`` of the mean log gap between modes ``upper <
    lower`` (1-based), ``(log s_upper - log s_lower) / (lower - upper)`` (claim spectral-separation: Def. 4.7 predicts
    ``(gamma_upper - gamma_lower) / (lower - upper)``); ``values`` maps depth -> (B, k) log singular values."""
    if not (1 <= upper < lower and start < end):
        raise ValueError(f"need 1 <= upper < lower and start < end; got upper={upper}, lower={lower}, "
                         f"start={start}, end={end}")

    def gap(d):
        return (values[d][:, upper - 1] - values[d][:, lower - 1]) / (lower - upper)

    return (gap(end) - gap(start)) / (end - start)


def depth_slope(ens: Ensemble, l1: int, l2: int, gen, device="cpu") -> Estimate:
    """Per-layer slope of E log||J_L|| between depths L1 < L2 (paired over networks)."""
    v = log_norms_at(ens.with_(depth=l2), [l1, l2], gen, device)
    return paired_slope(v[l1], v[l2], l1, l2)


def slope_model_error(width: int, l1: int, l2: int, k: int = 1) -> float:
    """Model error of a per-layer slope of E log||J|| over [L1, L2] (claims critical-init, lyapunov).

    In the gated (and ReLU) model ``E log||J_L|| - L gamma_1`` lies in ``[0, volume_gap(n, 1)]`` at
    every depth (``theorems.predictions.volume_gap``), so the two-point slope differs from
    ``gamma_1`` by at most ``volume_gap(n, k) / (L2 - L1)``.
    """
    return volume_gap(width, k) / (l2 - l1)


def geometric_window_bias(early_slope: float, late_slope: float, rate: float, span: int) -> float:
    """Bound on the finite-depth bias of the later of two adjacent windows of equal ``span`` (claim
    spectral-separation), from their slopes measured on networks independent of the checked ones.

    If ``E X(L) = a L + c + A e^(-rate L)`` (the transient of a product of iid random matrices decays geometrically,
    at the rate of the smallest Lyapunov gap it involves), each window's slope is ``a`` plus a bias, the later bias is
    ``r = e^(-rate span)`` times the earlier one, and so ``|late bias| = |late - early| r / (1 - r)``."""
    if not (rate > 0 and span > 0):
        raise ValueError(f"rate and span must be > 0; got rate={rate}, span={span}")
    r = math.exp(-rate * span)
    return abs(late_slope - early_slope) * r / (1 - r)


def image_norm_rate(ens: Ensemble, gen, device="cpu") -> Estimate:
    """``(1/L) E log||J_L u||`` for a uniform unit u drawn independently of J (matrix-vector products only).

    With Gaussian weights it is exactly gamma_1 at every depth (claim lyapunov); pruned (or otherwise non-Gaussian)
    weights move it at finite n: given the direction u_l, a row of a randomly pruned layer has the variance
    (1/(1-s)) sum_j m_j u_j² instead of 1, and that spread lowers E log||W u||, by about (9/4)(s/(1-s))/(pn)² to
    second order (n = 96, p = 1/2, s = 0.9: -0.009 predicted, -0.013 measured): an offset that vanishes as n grows
    but is not 0 at finite n.  Measured here on the networks of ``ens`` (give independent ones)."""
    u = haar_frame(ens.batch, ens.width, 1, gen, device=device)[..., 0]
    return mean_estimate(_np(log_norm_of_image(ens.factors(gen, device=device, jacobian_only=True), u)) / ens.depth)


def pruned_slope_model_error(ens: Ensemble, prediction: float, l1: int, l2: int, gen, device="cpu",
                             *, level_rate: float) -> tuple[float, Estimate]:
    """Model error of a per-layer slope of E log||J|| over [L1, L2] for pruned weights (claims
    random-pruning-scaling, magnitude-pruning-scaling), and the independent measurement it rests on.

    The bracket ``0 <= E log||J_L|| - E log||J_L u|| <= volume_gap(n, 1)`` holds for any weights (u is Haar and
    independent of J), so the slope lies within ``volume_gap / (L2 - L1)`` of the image-norm rate; that rate differs
    from the Gaussian ``prediction`` by pruning's finite-n offset (:func:`image_norm_rate`), bounded here from above
    on twice as many independent networks: ``|offset| + q se`` with q the two-sided normal quantile at ``level_rate``
    (the bound uses a slot of its own: a check that calls this declares ``statistical(1)``)."""
    rate = image_norm_rate(ens.with_(batch=2 * ens.batch, depth=l2), gen, device)
    q = float(stats.norm.isf(level_rate / 2))
    return slope_model_error(ens.width, l1, l2) + abs(rate.value - prediction) + q * rate.stderr, rate


def perturbed(factors, gen, *, pruning: Pruning | None = None, eta: float = 0.0, sigma2: float = 2.0):
    """The same factors with correlated (``+ eta w``, w ~ N(0, sigma2/n) shared per layer) and/or
    pruned, scaled weights: coupled to the originals (same W_ind and gates)."""
    for w, gate in factors:
        if eta:
            w = correlated(w, eta, torch.randn((w.shape[0], 1, 1), generator=gen, device=w.device, dtype=w.dtype), sigma2)
        if pruning is not None:
            w = pruning.scale * prune_mask(w, pruning, gen) * w
        yield Factor(w, gate)


def mean_square_gain(ens: Ensemble, gen, device="cpu", *, probes: int = 1) -> np.ndarray:
    """Per network, the mean over layers of ``||F_l X_l||_F² / k``, X_l the network's own orthonormal image of a Haar
    n x k frame after l-1 layers (k = ``probes``; claims random-pruning-scaling, magnitude-pruning-scaling).  Given
    the past, each column's term has expectation exactly σ² p for Gaussian weights with Bernoulli(p) gates (or none,
    p = 1), and stays exactly σ² p for random pruning scaled by (1-s)^-1/2 and magnitude pruning scaled by t_n (their
    scales' definition: E[c² m w²] = σ²/n per entry, and the mask's sign symmetry removes the cross terms): the check
    of a scale has no model error at any n, and a scale error c multiplies it by c².  k orthogonal probes of the same
    factor average k nearly independent terms (exactly independent for a dense Gaussian factor without gates) for
    about the cost of sampling it.  Matrix products only, streamed."""
    if ens.gates == "relu":
        raise ValueError("gates must be independent of the image direction (gates='bernoulli' or 'none')")
    k = check_int("probes", probes, minimum=1, maximum=ens.width)
    x = haar_frame(ens.batch, ens.width, k, gen, device=device)
    total = torch.zeros(ens.batch, dtype=torch.float64, device=device)
    for factor in ens.factors(gen, device=device, jacobian_only=True):
        y = apply_factor(factor, x)
        if k == 1:
            x, norm = normalised(y, dim=(-2, -1))
            total = total + norm[:, 0, 0] ** 2
        else:  # the next frame: orthonormal columns spanning the image (a function of the past only)
            total = total + torch.linalg.matrix_norm(y) ** 2 / k
            x = torch.linalg.qr(y).Q
    return _np(total / ens.depth)


def coupled_log_norm_gap(ens: Ensemble, gen, device="cpu", *, pruning: Pruning | None = None,
                         eta: float = 0.0) -> np.ndarray:
    """Per-network ``log||J^B|| - log||J||`` at depth L with the same weights and gates (gated model):
    the stability theorem's gap, with the coupling removing most of the sampling noise."""
    if ens.gates == "relu":
        raise ValueError("coupling needs gates independent of the weights (gates='bernoulli' or 'none')")
    from .spectral import jacobian_product

    out = []
    for part in chunks(ens):
        factors = list(part.factors(gen, device=device))
        base = log_spectral_norm(jacobian_product(factors))
        other = log_spectral_norm(jacobian_product(perturbed(factors, gen, pruning=pruning, eta=eta, sigma2=ens.sigma2)))
        out.append(_np(torch.where(torch.isneginf(other), other, other - base)))
    return np.concatenate(out)


def crossing(xs: Sequence[float], deviation: Sequence[float], theta: float) -> float:
    """First x (scanning xs in order) where |deviation| >= theta, interpolated linearly in log x.

    Returns ``xs[0]`` if already broken at the first point and ``inf`` if never broken.  A
    collapse (deviation = ±inf) counts as broken.
    """
    xs = np.asarray(xs, float)
    d = np.abs(np.asarray(deviation, float))
    d = np.where(np.isnan(d), np.inf, d)
    broken = np.nonzero(d >= theta)[0]
    if broken.size == 0:
        return math.inf
    i = broken[0]
    if i == 0:
        return float(xs[0])
    d0, d1 = d[i - 1], min(d[i], 10 * theta)
    frac = (theta - d0) / (d1 - d0)
    return float(np.exp(np.log(xs[i - 1]) + frac * (np.log(xs[i]) - np.log(xs[i - 1]))))


def pruning_departure_sweep(n: int, batch: int, l1: int, l2: int, densities: Sequence[float], gen, device="cpu"):
    """The edge-of-stability sweep (claim edge-of-stability): per-layer slopes of log||J|| over [l1, l2] of ``batch``
    unpruned networks (the reference, drawn first) and of ``batch`` scaled randomly pruned networks at each density
    1-s in ``densities`` (in that order; scale (1-s)^-1/2), and the fraction of each density's networks collapsed
    (J = 0) at l2.  Returns (reference, samples, collapsed)."""
    from .predictions import random_pruning_scale

    ref = log_norms_at(Ensemble(n, l2, batch=batch), [l1, l2], gen, device)
    reference = per_layer_slopes(ref[l1], ref[l2], l1, l2)
    samples, collapsed = [], []
    for rho in densities:
        ens = Ensemble(n, l2, batch=batch, pruning=Pruning("random", 1 - rho, random_pruning_scale(1 - rho)))
        ln = log_norms_at(ens, [l1, l2], gen, device)
        samples.append(per_layer_slopes(ln[l1], ln[l2], l1, l2))
        collapsed.append(float(np.mean(np.isneginf(ln[l2]))))
    return reference, samples, collapsed


def bootstrap_crossing(xs, samples: Sequence[np.ndarray], reference: np.ndarray, theta: float,
                       rng: np.random.Generator, reps: int = 400, statistic=np.median, paired: bool = False) -> Estimate:
    """Crossing point of ``statistic(sample) - statistic(reference)`` over xs with a bootstrap stderr
    (in log x).  Returns an Estimate of ``log x*``.  ``paired``: the samples and the reference are the same
    networks (common random numbers), so each replicate resamples one set of networks for all of them."""

    def dev(ss, ref):
        r = statistic(ref)
        return [statistic(s) - r for s in ss]

    point = crossing(xs, dev(samples, reference), theta)
    boots = []
    if paired and any(s.size != reference.size for s in samples):
        raise ValueError("paired samples must all have the reference's size")
    for _ in range(reps):
        if paired:
            idx = rng.integers(0, reference.size, reference.size)
            ss, ref = [s[idx] for s in samples], reference[idx]
        else:
            ss = [s[rng.integers(0, s.size, s.size)] for s in samples]
            ref = reference[rng.integers(0, reference.size, reference.size)]
        boots.append(crossing(xs, dev(ss, ref), theta))
    return Estimate(float(np.log(point)), censored_bootstrap_stderr(np.log(np.asarray(boots))), math.inf, len(samples))


def censored_bootstrap_stderr(replicates: np.ndarray) -> float:
    """Standard error from bootstrap replicates of which some may be censored (+inf: no crossing within the grid).
    None is dropped: with every replicate finite it is their standard deviation; otherwise the half-width of their
    central 68% with the censored ones in place (infinite, i.e. no usable error, once more than 16% are censored).
    A zero spread (every replicate at the grid's first point: the crossing lies below the grid) is an error, not an
    estimate to be floored."""
    r = np.asarray(replicates, float)
    if np.all(np.isfinite(r)):
        se = float(np.std(r, ddof=1))
    else:
        lo, hi = np.quantile(r, [0.16, 0.84], method="inverted_cdf")
        se = float((hi - lo) / 2) if np.isfinite(hi - lo) else math.inf
    if se == 0.0:
        raise ValueError("every bootstrap replicate crosses at the same grid point (the crossing is censored at the "
                         "grid's edge): extend the grid")
    return se


def qr_exponents(ens: Ensemble, k: int, gen, device="cpu") -> np.ndarray:
    """Per-network QR estimates of the top-k exponents (B, k)."""
    return _np(lyapunov_qr(ens.factors(gen, device=device, jacobian_only=True), k, gen).exponents)


#: Convergence tolerance of the product SVD behind :func:`finite_depth_offsets`: its estimated error of the singular
#: vectors (the values' is about its square), against offsets' standard errors of ~1e-2.
FINITE_DEPTH_SVD_TOL = 1e-6
#: The relative error of s_k that :func:`finite_depth_offsets` accepts from the explicit product's SVD (log error
#: 1e-8): a network with log(s_1/s_k) above the floor log(1e-8/eps) = 17.6 of :func:`resolvable` goes to the product
#: SVD instead.
FINITE_DEPTH_SV_ERROR = 1e-8
#: Largest number of matrix entries of the factors kept at once for the product SVD's sweeps, per device type (CPU:
#: 2^27 float64 = 1 GiB; batched QR of thin blocks costs per call, so larger chunks are faster: 0.72 s against 1.17 s
#: per 32 networks at n = 64, L = 256, k = 4 with 128 networks per chunk instead of 32).  On CUDA each sweep step is a
#: few kernel launches whatever the batch, so the chunks are 8x larger (8 GiB: 16 networks of n = 256, L = 1024
#: instead of 2, whose 20,000 steps of ~0.3 ms per chunk would take about 13 min over 128 chunks; an estimate, not
#: yet measured on a GPU).  A fixed number per device type, never the free memory: the chunks decide which draws
#: of the generator go to which network, so the numbers depend on the device type only.
STORED_FACTOR_ENTRIES = {"cpu": 2**27, "cuda": 2**30}


def finite_depth_offsets(ens: Ensemble, k: int, frames: int, gen, device="cpu") -> dict[str, np.ndarray]:
    """Per network, ``log s_j(J_L) - mean_m log|R_jj(J_L Q_m)|`` for j = 1..k, with ``frames`` independent Haar
    start frames Q_m (claim lyapunov, statement finite-depth-constants), and the deficits ``delta_j`` of the
    volume identity (:func:`theorems.predictions.finite_depth_constants`).

    ``log|R_jj(J Q)|`` (the QR flow of a Haar frame through the L factors) has expectation ``L gamma_j`` exactly, so
    the offset is an unbiased estimate of ``E log s_{j,L} - L gamma_j`` (the paper's finite-depth residual times L)
    whose variance does not grow with L: the QR volume is a control variate with a known mean, the exponents' noise
    cancels and what remains is the overlap ``log|det(V_j^T Q)|`` of a random frame with J's right singular frame,
    averaged over the frames.  Per frame, offset_j + delta_j - delta_{j-1} = -log|det(V_j^T Q)| + log|det(V_{j-1}^T Q)|
    exactly (Cauchy-Binet), so ``|E offset_j - b_j| <= max(E delta_j, E delta_{j-1})`` (delta_0 = 0): the deficits
    bound the finite-depth rest and are measured, not assumed.

    ``log s_j`` and ``V_k``: from the SVD of the explicit product where s_k is above its precision floor at relative
    error :data:`FINITE_DEPTH_SV_ERROR`, else from :func:`theorems.spectral.product_svd` (relative accuracy at every
    j: the top 64 of Haas Fig. 3 span e^-100 and more), started at the network's first Haar frame.  The factors are
    kept for its sweeps: chunks of at most :data:`STORED_FACTOR_ENTRIES` entries (by device type).

    Returns ``offset`` (B, k), ``delta`` (B, k) (frame means), ``log_sv`` (B, k), ``error`` (B,) (the product SVD's
    estimated error; 0 where the explicit product served) and ``product_svd`` (B,) (where it was used).
    """
    k = check_int("k", k, maximum=ens.width)
    frames = check_int("frames", frames)
    parts = {"offset": [], "delta": [], "log_sv": [], "error": [], "product_svd": []}
    stored = STORED_FACTOR_ENTRIES["cuda" if torch.device(device).type == "cuda" else "cpu"]
    size = max(1, stored // (ens.width * ens.width * ens.depth))
    for begin in range(0, ens.batch, size):
        part = ens.with_(batch=min(size, ens.batch - begin))
        b, n = part.batch, part.width
        start = haar_frame(b * frames, n, k, gen, device=device).reshape(b, frames, n, k)
        q = start.permute(0, 2, 1, 3).reshape(b, n, frames * k)  # the frames side by side: one GEMM per layer
        log_r = torch.zeros((b, frames, k), dtype=torch.float64, device=device)
        factors, product = [], None
        for factor in part.factors(gen, device=device, jacobian_only=True):
            factors.append(factor)
            product = extend_product(product, factor, renorm_every=1)
            qs, inc = qr_log_diagonal(apply_factor(factor, q).reshape(b, n, frames, k).permute(0, 2, 1, 3))
            log_r = log_r + inc
            q = qs.permute(0, 2, 1, 3).reshape(b, n, frames * k)
        _, s, vh = torch.linalg.svd(product.matrix)
        log_sv, right = torch.log(s[:, :k]) + product.log_scale[:, None], vh[:, :k].mT
        error = torch.zeros(b, dtype=torch.float64, device=device)
        deep = ~resolvable(log_sv, relative_error=FINITE_DEPTH_SV_ERROR).all(-1)
        if bool(deep.any()):
            svd = product_svd([f.select(deep) for f in factors], k, frame=start[deep, 0], tol=FINITE_DEPTH_SVD_TOL)
            log_sv[deep], right[deep], error[deep] = svd.log_sv, svd.right, svd.error
        overlap = right.mT[:, None] @ start  # (b, frames, k, k): V^T Q per frame
        log_det = torch.stack([torch.linalg.slogdet(overlap[..., :j, :j])[1] for j in range(1, k + 1)], dim=-1)
        delta = torch.cumsum(log_r, -1) - torch.cumsum(log_sv, -1)[:, None, :] - log_det
        parts["offset"].append(_np(log_sv - log_r.mean(1)))
        parts["delta"].append(_np(delta.mean(1)))
        parts["log_sv"].append(_np(log_sv))
        parts["error"].append(_np(error))
        parts["product_svd"].append(_np(deep))
    return {key: np.concatenate(v) for key, v in parts.items()}


def alignment_profile(factors: Sequence[Factor], lengths: Sequence[int], k: int = 1, *, pair_with=None):
    """Per-network ``log ||sin Θ(U_k(J), U_k(A_l))||`` and ``log(s_k/s_{k+1})(A_l)`` for each length l
    (alignment claim, Haas §5).

    ``A_l`` is the product of the last l factors, sharing the output end with ``J`` (all the factors).
    ``pair_with``: a permutation of the batch; then ``U_k(J)`` of network ``pair_with[b]`` is compared with
    ``A_l`` of network b (mismatched pairs: a control with no shared factor, where no alignment can arise).
    Returns ``(log_sin, log_gap)``, two dicts length -> (B,) numpy arrays.
    """
    factors = list(factors)
    depth = len(factors)
    if any(not 1 <= l < depth for l in lengths):
        raise ValueError(f"lengths must lie in [1, {depth - 1}] (shorter than the product); got {list(lengths)}")
    suffixes = suffix_products(factors, [*lengths, depth])
    u_j = top_left_singular_vectors(suffixes[depth].matrix, k)
    if pair_with is not None:
        u_j = u_j[torch.as_tensor(pair_with, device=u_j.device)]
    log_sin, log_gap = {}, {}
    for l in lengths:
        a = suffixes[l].matrix
        log_sin[l] = _np(torch.log(subspace_sin_theta(u_j, top_left_singular_vectors(a, k))))
        sv = torch.linalg.svdvals(a)
        log_gap[l] = _np(torch.log(sv[:, k - 1] / sv[:, k]))
    return log_sin, log_gap


def alignment_rates(log_sin: dict, log_gap: dict, lengths: Sequence[int], *, level_rate: float) -> dict:
    """Per-step rates from :func:`alignment_profile` over an early (l0, l1) and a late (l1, l2) window, with
    model errors bounded on independent networks (alignment claim, Haas §5).

    The networks are split in two disjoint halves (by position in the batch; they are iid, so the split carries
    no information): the estimates come from the first half, the model errors from the second.  A model error
    bounds the finite-l bias of a statistic by the change Δ of the same statistic between the early and the late
    window (the measured convergence in l).  Model (the lemma's own mechanism, the subdominant singular directions
    dying out): the bias is a transient, geometric in l at the separation rate, r = exp(-w x separation slope) from
    one window to the next (w the shorter window, the slope of E log(s_k/s_k+1) measured on the second half),
    decaying (the output-side product A_l settling) or growing (the input-side tail B = J's other L - l factors
    shortening as l grows: it fades like e^-(gamma_1 - gamma_2)(L - l), hence the long tail); then the late window's
    bias is at most r/(1-r)|Δ| or |Δ|/(1-r), so at most |Δ|/(1-r), and the span's (the mean of the two windows)
    at most (1+r)/(2(1-r))|Δ|.  |Δ| is bounded from above on the second half,
    ``|mean change| + q stderr`` with q the two-sided t quantile at ``level_rate``: that bound uses a share of a slot
    of its own (a check that asserts a comparison with one of these errors declares ``statistical(1)``).  The point
    estimate alone is not a bound: at calibration seed 723 it came out 2e-5 against a bias of about -0.0017 per
    layer, and the check failed.  On the estimate's own networks the change would contain the estimate's noise, so
    the tolerance would grow exactly when the estimate strays.

    Returns Estimates ``align`` (slope of E log sin θ, late window), ``align_span`` (the same over the whole span
    (l0, l2), the average of the two windows: less noisy), ``align_plus_separation`` (the late slope plus
    the slope of E log(s_k/s_{k+1})(A_l), paired per network: 0 when alignment decays at the measured
    separation rate, as the lemma suggests), ``align_plus_twice_separation_span`` (the slope of E log sin θ
    plus twice that of E log(s_k/s_{k+1}) over the span: 0 if sin θ fell like (s_{k+1}/s_k)², the neighbouring
    wrong rate); the floats ``align_error``, ``sum_error`` (late window: 1/(1-r) times the bound of |Δ|),
    ``span_error``, ``twice_span_error`` (span: (1+r)/(2(1-r)) times the bound), ``separation`` (late slope, first
    half) and ``transient_ratio`` (r); ``networks`` (estimate, model-error) half sizes.
    """
    if not 0 < level_rate < 1:
        raise ValueError(f"level_rate must lie in (0, 1); got {level_rate}")
    l0, l1, l2 = lengths
    batch = len(log_sin[l0])
    if batch < 4:
        raise ValueError(f"alignment rates split the networks in two halves; need at least 4, got {batch}")
    half = batch // 2
    first = ({l: v[:half] for l, v in log_sin.items()}, {l: v[:half] for l, v in log_gap.items()})
    second = ({l: v[half:] for l, v in log_sin.items()}, {l: v[half:] for l, v in log_gap.items()})

    def slope(d, a, b):
        return (d[b] - d[a]) / (b - a)

    def windows(sin, gap, weight):
        """(early, late) per-network slopes of log sin θ + weight x log(s_k/s_k+1)."""
        return (slope(sin, l0, l1) + weight * slope(gap, l0, l1), slope(sin, l1, l2) + weight * slope(gap, l1, l2))

    def transient_bound(weight):
        early, late = windows(*second, weight)
        change = mean_estimate(late - early)
        return abs(change.value) + float(stats.t.isf(level_rate / 2, change.dof)) * change.stderr

    settling = float(np.mean(slope(second[1], l0, l2)))  # the separation rate the transients fade at
    if not settling > 0:
        raise ValueError(f"the transient model needs a positive separation slope of E log(s_k/s_k+1); measured "
                         f"{settling:.3g} on the second half over lengths {list(lengths)}")
    r = math.exp(-min(l1 - l0, l2 - l1) * settling)
    late, span = 1 / (1 - r), (1 + r) / (2 * (1 - r))
    sin, gap = first
    align_bound = transient_bound(0.0)
    return {
        "align": mean_estimate(slope(sin, l1, l2)),
        "align_error": late * align_bound,
        "align_span": mean_estimate(slope(sin, l0, l2)),
        "span_error": span * align_bound,
        "align_plus_separation": mean_estimate(windows(sin, gap, 1.0)[1]),
        "sum_error": late * transient_bound(1.0),
        "separation": float(np.mean(slope(gap, l1, l2))),
        "align_plus_twice_separation_span": mean_estimate(slope(sin, l0, l2) + 2 * slope(gap, l0, l2)),
        "twice_span_error": span * transient_bound(2.0),
        "transient_ratio": r,
        "networks": (half, batch - half),
    }


# --- shared thresholds and test batteries of the claim checks -----------------------------------------------------

#: 'Broken' stability (claims edge-of-stability, correlated-weights): the per-layer rate of log||J|| departs from the
#: unperturbed one by this much (a factor e^±5 over 100 layers), or the product collapses.
STABILITY_THRESHOLD = 0.05

#: Random pairs of gates whose chi-square independence p-values are tested for uniformity (App. G.1's battery).
GATE_TEST_PAIRS = 200


def gate_test_pvalues(sample, rng: np.random.Generator, pairs: int = GATE_TEST_PAIRS) -> tuple[float, float, float, float]:
    """p-values of the App. G.1 tests (claims approx-gates, approx-trained-gates) for N networks' (W_l, D_l, W_{l+1}):
    binomial P(d = 1) = 1/2 (pooled), uniformity (KS) of chi-square independence p-values over random
    pairs of entries, and Pearson correlations of T_D = frac(D_l = 1) with T_W = frac(W > 0) for
    W = W_l (the paper's heuristic) and W = W_{l+1} (the weights D_l multiplies in J = ... W_{l+1} D_l ...)."""
    w, d, w_next = sample
    n_nets, n = d.shape
    p_binom = binomial_pvalue(int(d.sum()), d.size, 0.5)
    pairs = [rng.choice(n, 2, replace=False) for _ in range(pairs)]
    p_chi = uniformity_pvalue([chi2_independence_pvalue(d[:, i], d[:, j]) for i, j in pairs])
    t_d = d.mean(axis=1)
    same = correlation_pvalue((w > 0).reshape(n_nets, -1).mean(axis=1), t_d)
    following = correlation_pvalue((w_next > 0).reshape(n_nets, -1).mean(axis=1), t_d)
    return p_binom, p_chi, same, following
