"""Spectral core: Jacobian products, norms, singular values and Lyapunov spectra for batches.

All routines consume an iterable of :class:`~theorems.ensembles.Factor` (input side first), so
they work for sampled ensembles, trained weights and hand-built products alike.

Numerics: products of hundreds of factors over- and underflow, so
:func:`iterate_products` keeps each product at unit Frobenius norm and carries ``log_scale``.  An
exactly zero product (a dead layer, heavy pruning) has ``log_scale = -inf`` and is reported as a
collapse; nothing here produces NaN from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from .ensembles import Factor, haar_frame, normalised
from .validation import check_int

__all__ = [
    "LogScaledProduct",
    "apply_factor",
    "extend_product",
    "iterate_products",
    "jacobian_product",
    "products_at",
    "log_spectral_norm",
    "log_singular_values",
    "resolvable",
    "krylov_log_spectral_norm",
    "LyapunovEstimate",
    "lyapunov_qr",
    "ProductSVD",
    "product_svd",
    "cholesky_qr2",
    "thin_qr",
    "near_tie_blocks",
    "ritz_rotation",
    "RITZ_GAP",
    "GUARD_VECTORS",
    "qr_log_diagonal",
    "annihilated",
    "QR_RANK_TOL",
    "QR_METHODS",
    "log_norm_of_image",
    "suffix_products",
    "top_left_singular_vectors",
    "subspace_sin_theta",
]


@dataclass(frozen=True)
class LogScaledProduct:
    """A batch of matrices stored as ``exp(log_scale) * matrix`` with ``||matrix||_F`` = 1 (or 0)."""

    matrix: torch.Tensor  # (B, n, m)
    log_scale: torch.Tensor  # (B,)
    depth: int

    @property
    def collapsed(self) -> torch.Tensor:
        """True where the product is exactly zero."""
        return torch.isneginf(self.log_scale)

    def dense(self) -> torch.Tensor:
        """The plain product (may over/underflow: for tests at small depth)."""
        return self.matrix * torch.exp(self.log_scale)[:, None, None]


def _renormalise(matrix: torch.Tensor, log_scale: torch.Tensor):
    matrix, norm = normalised(matrix, dim=(-2, -1))  # Frobenius
    return matrix, log_scale + torch.log(norm[:, 0, 0])


def apply_factor(factor: Factor, x: torch.Tensor) -> torch.Tensor:
    """``W diag(gate) x`` for x of shape (B, n, k)."""
    w, gate = factor
    if gate is not None:
        x = gate.unsqueeze(-1) * x
    return torch.matmul(w, x)


def extend_product(product: LogScaledProduct | None, factor: Factor, *, renorm_every: int = 1) -> LogScaledProduct:
    """``F product``: the renormalised partial product one layer deeper (``product=None`` starts at depth 1).

    Renormalises when the new depth is a multiple of ``renorm_every`` (see :func:`iterate_products`).  Never works in
    place: ``product`` may still be in use.  The step of :func:`iterate_products`, for callers that advance several
    products in lockstep over one stream of layers without buffering it."""
    w, gate = factor
    if product is None:
        depth, matrix = 1, (w * gate.unsqueeze(-2) if gate is not None else w.clone())
        log_scale = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    else:  # W (D M): the gate scales the rows of the running product
        depth, log_scale = product.depth + 1, product.log_scale
        matrix = torch.matmul(w, gate.unsqueeze(-1) * product.matrix if gate is not None else product.matrix)
    if depth % renorm_every == 0:
        matrix, log_scale = _renormalise(matrix, log_scale)
        if renorm_every > 1 and not torch.isfinite(log_scale[~torch.isneginf(log_scale)]).all():
            raise FloatingPointError(f"the product overflowed within {renorm_every} layers: use renorm_every=1")
    return LogScaledProduct(matrix, log_scale, depth)


def iterate_products(factors: Iterable[Factor], *, renorm_every: int = 1) -> Iterator[LogScaledProduct]:
    """Yield the renormalised partial products ``F_l ... F_1`` for l = 1, 2, ...

    ``renorm_every``: renormalise every k layers (the yielded products between renormalisations carry an
    un-normalised matrix, still exact).  k > 1 saves memory passes when only the final product is needed;
    it assumes each factor changes the norm by less than e^(700/k) (true for any Gaussian or pruned layer
    of sane variance) and raises if the product overflowed.
    """
    product = None
    for factor in factors:
        product = extend_product(product, factor, renorm_every=renorm_every)
        yield product


def jacobian_product(factors: Iterable[Factor], *, renorm_every: int = 4) -> LogScaledProduct:
    """The full product ``J = F_L ... F_1`` in log-scaled form (renormalised every 4 layers and at the end)."""
    last = None
    for product in iterate_products(factors, renorm_every=renorm_every):
        last = product
    if last is not None and last.depth % renorm_every:
        matrix, log_scale = _renormalise(last.matrix, last.log_scale)
        last = LogScaledProduct(matrix, log_scale, last.depth)
    if last is None:
        raise ValueError("factors must contain at least one layer (depth >= 1)")
    return last


def products_at(factors: Iterable[Factor], depths: Sequence[int]) -> dict[int, LogScaledProduct]:
    """The partial products at the requested depths, from one streaming pass."""
    wanted = sorted({check_int("depth", d) for d in depths})
    out = {}
    for prod in iterate_products(factors, renorm_every=4):
        if prod.depth in wanted:
            out[prod.depth] = prod
            if len(out) == len(wanted):
                break
    missing = set(wanted) - set(out)
    if missing:
        raise ValueError(f"depths {sorted(missing)} exceed the number of factors")
    return out


def log_singular_values(prod: LogScaledProduct, k: int | None = None) -> torch.Tensor:
    """Top-k log singular values (B, k), descending; -inf for a collapsed product."""
    s = torch.linalg.svdvals(prod.matrix)
    if k is not None:
        s = s[..., : check_int("k", k, maximum=s.shape[-1])]
    with torch.no_grad():
        return torch.log(s) + prod.log_scale[:, None]


KRYLOV_MIN_WIDTH = 384


def log_spectral_norm(prod: LogScaledProduct, method: str = "auto") -> torch.Tensor:
    """``log ||J||`` (B,); -inf for a collapsed product.

    ``method``: ``"svd"`` (``svdvals``), ``"krylov"`` (:func:`krylov_log_spectral_norm`, log error < 1e-10
    against svdvals for gated products and for depth >= 2; a single ungated Gaussian layer, whose top singular
    values crowd at the soft edge, is the hard case: about 4e-10 at width 512, a median 1e-7 (up to ~1e-6) at 1024,
    4e-6 at 2048, far below any statistic's standard error), or ``"auto"``: Krylov from width
    ``KRYLOV_MIN_WIDTH`` on, where a batched SVD costs more than forming the product, and always on CUDA
    (cuSOLVER's batched SVD is slow and falls back when it fails to converge).  The Krylov start
    block comes from a fixed-seed generator, so results stay deterministic.
    """
    if method not in ("auto", "svd", "krylov"):
        raise ValueError(f"method must be 'auto', 'svd' or 'krylov'; got {method!r}")
    large = min(prod.matrix.shape[-2:]) >= KRYLOV_MIN_WIDTH
    if method == "krylov" or (method == "auto" and (large or prod.matrix.is_cuda)):
        g = torch.Generator(device=prod.matrix.device)
        g.manual_seed(0x5EED)
        return krylov_log_spectral_norm(prod, g)
    return log_singular_values(prod, 1)[:, 0]


def resolvable(log_sv: torch.Tensor, dtype: torch.dtype = torch.float64, *,
               relative_error: float | None = None) -> torch.Tensor:
    """Mask of singular values above the precision floor of the explicit product.

    The SVD of the explicit product (and the product itself, renormalised layer by layer) errs by about
    ``eps s_max`` in every singular value, so ``s`` carries a relative error of about ``eps s_max / s``; the floor is
    where that reaches ``relative_error`` (default ``sqrt(eps)``: a value below ``log s_max + log(eps)/2``, i.e. an
    exponent below ``(1/L) log s_max + log(eps)/(2L)``, cannot be resolved in that dtype and must be flagged).  A check
    whose statistic tolerates more (a log singular value compared at 1e-2) may pass a larger ``relative_error``.
    """
    eps = torch.finfo(dtype).eps
    tolerated = math.sqrt(eps) if relative_error is None else float(relative_error)
    if not eps < tolerated < 1:
        raise ValueError(f"relative_error must lie in (eps = {eps:.3g}, 1); got {relative_error}")
    floor = log_sv[..., :1] + math.log(eps) - math.log(tolerated)
    return log_sv > floor


def krylov_log_spectral_norm(
    prod: LogScaledProduct, generator: torch.Generator, *, block: int = 8, steps: int = 16
) -> torch.Tensor:
    """``log ||J||`` by a randomized block Krylov method on ``J^T J`` (Musco & Musco 2015).

    Builds ``K = [X, (J^T J) X, ..., (J^T J)^steps X]`` for a Gaussian block X (n x block),
    orthonormalises it and returns the largest singular value of ``J K`` (Rayleigh-Ritz).  Costs
    ``2 * steps + 1`` block products with J, i.e. O(steps * block * n^2) instead of the O(n^3) of
    an SVD.  The Ritz value is a lower bound; its accuracy is verified against ``svdvals`` in
    ``checks/core/test_spectral.py`` (log error < 1e-10 at widths 64-512, depths 1-10 with gates; the soft
    edge of one ungated layer is the hard case: median 1e-7, up to ~1e-6, at width 1024, about 4e-6 at 2048; block 4 with 6 steps
    errs by ~1e-2 there).
    """
    a = prod.matrix
    b, n, m = a.shape
    x = torch.randn((b, m, block), generator=generator, dtype=a.dtype, device=a.device)
    x, _ = torch.linalg.qr(x)
    blocks = [x]
    for _ in range(steps):
        x = a.mT @ (a @ x)
        x, _ = torch.linalg.qr(x)
        blocks.append(x)
    basis, _ = torch.linalg.qr(torch.cat(blocks, dim=-1))
    top = torch.linalg.svdvals(a @ basis)[..., 0]
    return torch.log(top) + prod.log_scale


@dataclass(frozen=True)
class LyapunovEstimate:
    """QR estimate of the top-k Lyapunov exponents of B products of depth L.

    ``log_r``: (B, k) sums over layers of ``log |R_ii|``; ``exponents = log_r / L``.
    Entry i is -inf where the product's rank fell below i at some layer (:func:`annihilated`; a collapse).
    """

    log_r: torch.Tensor
    depth: int

    @property
    def exponents(self) -> torch.Tensor:
        return self.log_r / self.depth

    @property
    def collapsed(self) -> torch.Tensor:
        return torch.isneginf(self.log_r).any(dim=-1)


#: Thin-QR methods of :func:`lyapunov_qr`: ``auto`` is CholeskyQR2 on CUDA and Householder elsewhere.
QR_METHODS = ("auto", "householder", "cholesky2")

#: Largest |Q^T Q - I| entry CholeskyQR2 may leave before the block falls back to Householder (float64: a block
#: with cond <= ~1e5 leaves ~1e-15; the defect grows like eps cond², so this admits cond up to ~1e3 above that).
CHOLESKY_QR_MAX_DEFECT = 1e-10


def _cholesky_pass(x: torch.Tensor):
    """One CholeskyQR pass: R = chol(X^T X)^T, Q = X R^-1 (two GEMMs and a triangular solve); None if some Gram
    matrix of the batch is not numerically positive definite."""
    lower, info = torch.linalg.cholesky_ex(x.mT @ x)
    if bool((info != 0).any()):
        return None
    q = torch.linalg.solve_triangular(lower, x.mT, upper=False).mT
    return q, lower.mT


def cholesky_qr2(x: torch.Tensor, *, max_defect: float = CHOLESKY_QR_MAX_DEFECT) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR of a batch of tall blocks ``x`` (..., n, k) by CholeskyQR2 (Fukaya et al. 2014): two CholeskyQR passes,
    GEMM-bound, where batched Householder QR on CUDA loops over the batch (pytorch/pytorch#143281).  R has a positive
    diagonal (Householder's may be negative: the same |diag R|).  When a Gram matrix is not positive definite or the
    orthogonality defect max|Q^T Q - I| exceeds ``max_defect`` (an ill-conditioned block), the whole batch falls back
    to ``torch.linalg.qr``: correct always, fast when the blocks are well conditioned, as Lyapunov frames are."""
    first = _cholesky_pass(x)
    second = None if first is None else _cholesky_pass(first[0])
    if second is not None:
        q, r2 = second
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        if float((q.mT @ q - eye).abs().amax()) <= max_defect:
            return q, r2 @ first[1]
    return torch.linalg.qr(x)


def thin_qr(z: torch.Tensor, qr: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The thin ``Q R = z`` of a batch of blocks.  ``qr``: one of :data:`QR_METHODS` (``auto``: :func:`cholesky_qr2`
    on CUDA, Householder on the CPU, where batched Householder is fast and the suite's CPU numbers were made)."""
    if qr not in QR_METHODS:
        raise ValueError(f"qr must be one of {QR_METHODS}; got {qr!r}")
    method = ("cholesky2" if z.is_cuda else "householder") if qr == "auto" else qr
    return cholesky_qr2(z) if method == "cholesky2" else torch.linalg.qr(z)


def log_abs_diagonal(r: torch.Tensor) -> torch.Tensor:
    """``log|diag R|`` of a batch of triangular factors: one QR step's log growth of the nested volumes."""
    return torch.log(torch.abs(torch.diagonal(r, dim1=-2, dim2=-1)))


def qr_log_diagonal(z: torch.Tensor, qr: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a QR flow: the thin ``Q R = z`` of a batch of blocks (:func:`thin_qr`) and ``log|diag R|``."""
    q, r = thin_qr(z, qr)
    return q, log_abs_diagonal(r)


#: A layer whose QR leaves ``|R_jj|`` below this fraction of its largest ``|R_ii|`` annihilates the j-th direction of
#: the frame (a closed gate, a zero column): the product's rank is below j, and the QR flows (:func:`lyapunov_qr`,
#: :func:`product_svd`) report ``-inf`` for direction j onwards instead of the rounding level (Householder leaves
#: ~ eps sqrt(n) ||F Q||, and later layers rebuild an arbitrary direction at O(1)).  A Gaussian layer's R_jj (chi
#: with >= 1 degree of freedom) falls below it with probability ~1e-12.
QR_RANK_TOL = 1e-12


def annihilated(log_diagonal: torch.Tensor) -> torch.Tensor:
    """The frame directions one QR step annihilated (bool, like ``log|diag R|``): ``|R_jj|`` below
    :data:`QR_RANK_TOL` of the step's largest, and every later direction with it (the volumes are nested: a rank
    below j is a rank below j + 1).  A QR flow ORs them over its layers; an all-zero layer leaves ``-inf``
    everywhere by itself."""
    low = log_diagonal < log_diagonal.amax(dim=-1, keepdim=True) + math.log(QR_RANK_TOL)
    return torch.cummax(low.to(torch.int8), dim=-1).values.bool()


def lyapunov_qr(
    factors: Iterable[Factor],
    k: int,
    generator: torch.Generator,
    *,
    frame: torch.Tensor | None = None,
    checkpoints: Sequence[int] | None = None,
    qr: str = "auto",
):
    """Top-k Lyapunov exponents by repeated QR (Benettin et al.), starting from a Haar frame.

    ``Q_0`` Haar (B, n, k); ``Q_l R_l = F_l Q_{l-1}``; ``sum_l log|diag R_l|`` is the log growth
    of the nested volumes.  With ``checkpoints`` a dict depth -> :class:`LyapunovEstimate` is
    returned, else the estimate at full depth.  For the gated and ReLU models every increment has
    expectation ``gamma_i`` exactly (:func:`theorems.predictions.lyapunov_exponents`), so the estimate is unbiased at
    every depth.  ``qr``: one of :data:`QR_METHODS` (:func:`qr_log_diagonal`).
    """
    k = check_int("k", k)
    if qr not in QR_METHODS:
        raise ValueError(f"qr must be one of {QR_METHODS}; got {qr!r}")
    q = frame
    log_r = lost = None
    out = {}
    wanted = set(checkpoints or ())
    depth = 0
    for depth, factor in enumerate(factors, start=1):
        w = factor.weight
        if q is None:
            if k > w.shape[-1]:
                raise ValueError(f"k must be an integer in [1, {w.shape[-1]}]; got {k}")
            q = haar_frame(w.shape[0], w.shape[-1], k, generator, device=w.device, dtype=w.dtype)
        q, inc = qr_log_diagonal(apply_factor(factor, q), qr)
        log_r, lost = (inc, annihilated(inc)) if log_r is None else (log_r + inc, lost | annihilated(inc))
        if depth in wanted:
            out[depth] = LyapunovEstimate(torch.where(lost, -math.inf, log_r), depth)
    if log_r is None:
        raise ValueError("factors must contain at least one layer (depth >= 1)")
    if checkpoints is not None:
        return out
    return LyapunovEstimate(torch.where(lost, -math.inf, log_r), depth)


def apply_factor_transpose(factor: Factor, x: torch.Tensor) -> torch.Tensor:
    """``(W diag(gate))^T x = diag(gate) W^T x`` for x of shape (B, n, k)."""
    w, gate = factor
    y = torch.matmul(w.mT, x)
    return gate.unsqueeze(-1) * y if gate is not None else y


@dataclass(frozen=True)
class ProductSVD:
    """Top-k singular values of a product with relative accuracy (:func:`product_svd`).

    ``log_sv`` (B, k): log s_1 >= ... >= log s_k (-inf where the product's rank is below j); ``right`` (B, n, k) and
    ``left`` (B, n, k): the singular frames V_k, U_k (signs arbitrary); ``sweeps``: forward sweeps run (by the
    slowest network); ``error`` (B,): per network the estimated distance of the log singular values and of the
    singular vectors (the larger) to their limits, ``c r/(1-r)`` from the last change c and the ratio r of the last two
    changes (geometric convergence; inf while that ratio is >= 1 or after fewer than three sweeps; a last change below
    tol/10 is the estimate itself)."""

    log_sv: torch.Tensor
    right: torch.Tensor
    left: torch.Tensor
    sweeps: int
    error: torch.Tensor


def _sweep_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per network the largest |new - old| over finite entries (equal infinities count as no change)."""
    same = new == old  # -inf == -inf: a collapsed direction stays collapsed
    diff = torch.where(same, torch.zeros_like(new), (new - old).abs())
    return torch.nan_to_num(diff, nan=math.inf).amax(dim=-1)


def _frame_change(new: torch.Tensor, old: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Per network the largest ``||new_j - ±old_j||`` over the columns with a finite singular value (≈ the angle
    each singular vector moved; full precision for tiny angles, unlike 1 - |cos|)."""
    sign = torch.where((new * old).sum(-2, keepdim=True) < 0, -1.0, 1.0)
    moved = torch.linalg.vector_norm(new - sign * old, dim=-2)
    return torch.where(finite, moved, torch.zeros_like(moved)).amax(dim=-1)


def _geometric_error(now: torch.Tensor, before: torch.Tensor, tol: float) -> torch.Tensor:
    """The distance to the limit left by geometric convergence: ``c r/(1-r)`` with c the last change and r the
    ratio of the last two (inf while r >= 1 or before two changes); a change below tol/10 is taken as the limit
    (rounding jitter has no ratio)."""
    rate = torch.where(torch.isinf(before), math.inf, now / before)
    geometric = torch.where(rate < 1, now * rate / (1 - rate), math.inf)
    return torch.where(now <= tol / 10, now, geometric)


#: Consecutive log singular values closer than this are a near tie for :func:`product_svd`: subspace iteration tells
#: s_j from s_j+1 apart only at the rate (s_j+1/s_j)^2 per sweep (a gap of 0.1 needs ~70 sweeps for 1e-6), so each run
#: of near ties is resolved by a Ritz rotation of its frame vectors instead (:func:`ritz_rotation`), and the sweeps
#: converge at the rate of the other gaps, e^-2·RITZ_GAP per sweep or faster.
RITZ_GAP = 3.0
#: The largest spread ``log s_first - log s_last`` of one Ritz block: its condition number is below e^RITZ_SPREAD
#: (≈ 1.6e5), so the rotation it gives is accurate to ~1e-11 / gap.  A longer run is cut into blocks.
RITZ_SPREAD = 12.0
#: The most values in one Ritz block (the width of R's band kept per layer).
RITZ_WIDTH = 8


def upper_band(r: torch.Tensor, width: int) -> torch.Tensor:
    """The first ``width`` diagonals of a batch of upper-triangular ``r`` (..., k, k): ``band[..., i, d] = r[..., i,
    i + d]`` (0 past the last column)."""
    k = r.shape[-1]
    cols = torch.arange(k, device=r.device)[:, None] + torch.arange(width, device=r.device)
    band = torch.gather(r, -1, cols.clamp(max=k - 1).expand(*r.shape[:-2], k, width))
    return torch.where(cols < k, band, torch.zeros((), dtype=r.dtype, device=r.device))


def _cut(values: list[float], spread: float, width: int) -> list[tuple[int, int]]:
    """Consecutive blocks (first, size) of ``values`` (a run of near ties, in order), each of spread at most
    ``spread`` and at most ``width`` values, greedily from the first."""
    blocks, first = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or i - first == width or abs(values[first] - values[i]) > spread:
            blocks.append((first, i - first))
            first = i
    return blocks


def near_tie_blocks(log_sv: torch.Tensor, sweep: int, gap: float = RITZ_GAP, spread: float = RITZ_SPREAD,
                    width: int = RITZ_WIDTH) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The runs of near ties in a batch of log singular value estimates (B, k): consecutive finite values with
    ``log s_j - log s_j+1 < gap`` (an unsorted pair too), cut into blocks of at most ``width`` values and spread at
    most ``spread`` (greedily from the run's top on odd sweeps and from its bottom on even ones, so that a cut does not
    stay in one place).  Returns size -> (network indices, first indices) of the blocks of two values or more."""
    finite = torch.isfinite(log_sv)
    near = finite[:, :-1] & finite[:, 1:] & (log_sv[:, :-1] - log_sv[:, 1:] < gap)
    edges = torch.diff(torch.nn.functional.pad(near.to(torch.int8), (1, 1)), dim=-1).cpu()
    nets, begins = torch.nonzero(edges == 1, as_tuple=True)  # a run of near pairs j .. e-1 joins the values j .. e
    ends = torch.nonzero(edges == -1, as_tuple=True)[1]  # in the same (row-major) order as the beginnings
    values = log_sv.cpu()
    blocks: dict[int, list[tuple[int, int]]] = {}
    for net, begin, end in zip(nets.tolist(), begins.tolist(), ends.tolist()):
        run = values[net, begin:end + 1].tolist()
        if sweep % 2:
            cuts = [(begin + first, size) for first, size in _cut(run, spread, width)]
        else:
            cuts = [(end + 1 - first - size, size) for first, size in _cut(run[::-1], spread, width)]
        for first, size in cuts:
            if size >= 2:
                blocks.setdefault(size, []).append((net, first))
    return {size: tuple(torch.tensor(column, device=log_sv.device) for column in zip(*pairs))
            for size, pairs in blocks.items()}


def _ordered_product(blocks: torch.Tensor) -> torch.Tensor:
    """``B_L ... B_1`` for blocks (L, C, m, m) (the first layer first), by pairwise products renormalised to a largest
    entry of 1 (only the product's singular vectors are wanted); a product that vanished or overflowed is the
    identity (no rotation)."""
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype, device=blocks.device)
    p = blocks
    while p.shape[0] > 1:
        if p.shape[0] % 2:
            p = torch.cat([p, eye.expand(1, *p.shape[1:])])
        p = p[1::2] @ p[0::2]
        p = p / p.abs().amax(dim=(-2, -1), keepdim=True)
    p = p[0]
    bad = ~torch.isfinite(p).all(dim=-1).all(dim=-1)
    return torch.where(bad[:, None, None], eye, p)


def ritz_rotation(bands: Sequence[torch.Tensor], blocks: dict[int, tuple[torch.Tensor, torch.Tensor]],
                  k: int) -> torch.Tensor:
    """The rotation (B, k, k) that a forward sweep's end frame Q_L takes in :func:`product_svd`: within each block I
    of near ties (:func:`near_tie_blocks`) the left singular vectors of ``T_II = R_L,II ... R_1,II``, the diagonal
    block of the triangular ``T`` with ``J Q_0 = Q_L T`` (for upper-triangular factors the diagonal block of the
    product is the product of the diagonal blocks), the identity elsewhere.  Once the spans at the block's edges have
    converged (at the rate of the gaps there), ``Q_L,I`` spans ``U_I`` and ``Q_L,I`` times these vectors is ``U_I``
    itself: one step does what subspace iteration needs ~1/gap sweeps for, and a rotation within the block leaves
    every nested span at its edges unchanged.  ``bands``: per layer :func:`upper_band` of R_l, (B, k, w), w at least
    the largest block."""
    stacked = torch.stack(list(bands))  # (L, B, k, w)
    batch = stacked.shape[1]
    rotation = torch.eye(k, dtype=stacked.dtype, device=stacked.device).expand(batch, k, k).clone()
    for size, (nets, firsts) in blocks.items():
        a = torch.arange(size, device=stacked.device)
        rows = firsts[:, None, None] + a[:, None]  # (C, m, 1)
        offset = a[None, :] - a[:, None]  # (m, m): column - row
        block = stacked[:, nets[:, None, None], rows, offset.clamp(min=0)]  # (L, C, m, m)
        block = torch.where(offset >= 0, block, torch.zeros((), dtype=block.dtype, device=block.device))
        rotation[nets[:, None, None], rows, rows.mT] = torch.linalg.svd(_ordered_product(block))[0]
    return rotation


#: Guard vectors :func:`product_svd` carries below the top k (at least this many, k/8 for large k): the top k then
#: converge at the rate of s_k+g+1/s_k instead of s_k+1/s_k, which a near tie at the edge would make slow, and a near
#: tie across the edge is a Ritz block like any other.
GUARD_VECTORS = 4
#: The seed of the guard vectors that complete a caller's start frame (fixed: the result depends on the frame only).
GUARD_SEED = 20261206


def _with_guard_vectors(frame: torch.Tensor, width: int) -> torch.Tensor:
    """A start frame (B, n, k) completed to ``width`` orthonormal columns: Haar vectors from a fixed seed, made
    orthogonal to the frame (twice, for rounding) and to each other."""
    batch, n, k = frame.shape
    if width == k:
        return frame
    g = torch.Generator(device=frame.device).manual_seed(GUARD_SEED)
    extra = haar_frame(batch, n, width - k, g, device=frame.device, dtype=frame.dtype)
    for _ in range(2):
        extra = extra - frame @ (frame.mT @ extra)
    return torch.cat([frame, torch.linalg.qr(extra)[0]], dim=-1)


def product_svd(factors: Sequence[Factor], k: int, generator: torch.Generator | None = None, *,
                frame: torch.Tensor | None = None, tol: float = 1e-10, max_sweeps: int = 200,
                qr: str = "auto", ritz: bool = True) -> ProductSVD:
    """Top-k singular values and vectors of ``J = F_L ... F_1`` to relative accuracy, far below the floor of the
    explicit product (:func:`resolvable`): subspace iteration on ``J^T J`` in product form (the periodic QR of
    Golub, Sølna and Van Dooren 2000; Benettin's QR flow run forwards and backwards).

    A forward sweep pushes an orthonormal frame Q_0 (B, n, k) through the factors, ``F_l Q_{l-1} = Q_l R_l``, so that
    ``J Q_0 = Q_L T`` with ``T = R_L ... R_1`` upper triangular and ``log|T_jj| = sum_l log|R_l,jj|`` (never formed:
    each step is one backward-stable QR of a single factor's image, so a singular value e^-300 below the top keeps
    its relative accuracy).  A backward sweep pushes Q_L through the transposed factors, ``J^T Q_L = P_0 S``, and P_0
    starts the next forward sweep: one ``J^T J`` step of subspace iteration per pair.  As Q_0 -> V_k, T -> diag(s)
    and ``log|T_jj| -> log s_j`` with error of order ``(s_{j+1}/s_j)^(4m)`` after m pairs, so deep (separated)
    products converge in a few sweeps; V_k converges at the square root of that rate, and it must settle too.  Stops
    when the estimated remaining error of values and vectors (``error``: the last change extrapolated geometrically) is
    at most ``tol``, or after ``max_sweeps`` (``error`` then says how far it is; callers check it).  Each network stops
    on its own.  A near tie s_j ≈ s_j+1 would converge slowly (the vectors at (s_j+1/s_j)^2 per pair: a gap
    log(s_j/s_j+1) of 0.1 needs ~70 sweeps for 1e-6); with ``ritz`` (default) each near tie (gap below
    :data:`RITZ_GAP`, runs of them together) is resolved by a Ritz rotation of Q_L's columns after the forward sweep
    (:func:`ritz_rotation`), so the sweeps needed are set by the other gaps.  ``ritz=False``: plain subspace iteration.
    The frame carries :data:`GUARD_VECTORS` (or k/8) columns below the top k, so that the edge s_k+1 ≈ s_k is no
    slower than any other near tie; values, vectors and ``error`` are those of the top k.

    A layer that annihilates the frame's j-th direction (``|R_jj|`` below :data:`QR_RANK_TOL` of its largest: a
    product of rank below j, e.g. fewer than j open gates) gives ``log s_j = ... = log s_k = -inf``; an all-zero
    layer makes every value -inf (a collapse).  Convergence is judged on the finite values.

    ``factors``: a sequence (it is traversed twice per sweep); ``frame``: the start Q_0 (B, n, k) (completed with
    guard vectors from a fixed seed; default: a Haar frame with them from ``generator``).  Lyapunov claims: the
    finite-depth constants beyond the explicit product's reach (Haas Fig. 3)."""
    factors = list(factors)
    if not factors:
        raise ValueError("factors must contain at least one layer (depth >= 1)")
    w = factors[0].weight
    k = check_int("k", k, maximum=w.shape[-1])
    max_sweeps = check_int("max_sweeps", max_sweeps)
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    if qr not in QR_METHODS:
        raise ValueError(f"qr must be one of {QR_METHODS}; got {qr!r}")
    n = w.shape[-1]
    width = min(n, k + max(GUARD_VECTORS, k // 8))  # the top k and guard vectors below them
    if frame is None:
        if generator is None:
            raise ValueError("product_svd needs a start frame or a generator to draw a Haar one")
        frame = haar_frame(w.shape[0], n, width, generator, device=w.device, dtype=w.dtype)
    elif frame.shape[1:] != (n, k):
        raise ValueError(f"frame must have shape (batch, {n}, {k}); got {tuple(frame.shape)}")
    else:
        frame = _with_guard_vectors(frame, width)
    batch = frame.shape[0]
    right, left = frame.clone(), torch.empty_like(frame)
    log_sv = torch.zeros(batch, width, dtype=w.dtype, device=w.device)
    change = torch.full((batch,), math.inf, dtype=w.dtype, device=w.device)
    error = change.clone()
    done = torch.zeros(batch, dtype=torch.bool, device=w.device)
    subset = torch.arange(batch, device=w.device)  # the networks whose factors are swept (a superset of the unconverged)
    sweep = 0
    for sweep in range(1, max_sweeps + 1):
        q, total, lost = right[subset], torch.zeros(len(subset), width, dtype=w.dtype, device=w.device), None
        bands = []
        for factor in factors:
            q, r = thin_qr(apply_factor(factor, q), qr)
            inc = log_abs_diagonal(r)
            total = total + inc
            lost = annihilated(inc) if lost is None else lost | annihilated(inc)
            if ritz and width > 1:
                bands.append(upper_band(r, min(RITZ_WIDTH, width)))
        total = torch.where(lost, -math.inf, total)  # a rank below j: s_j, ... = 0
        blocks = near_tie_blocks(total, sweep, width=min(RITZ_WIDTH, width)) if bands else {}
        if blocks:
            q = q @ ritz_rotation(bands, blocks, width)
        going = ~done[subset]  # a converged network keeps its results (its factors may still be swept)
        rows, total = subset[going], total[going]
        left[rows] = q[going]
        previous = change[rows]
        if sweep > 1:  # converged: the top k (the guard vectors only speed them up)
            change[rows] = _sweep_change(total[:, :k], log_sv[rows, :k])
        log_sv[rows] = total
        for factor in reversed(factors):
            q, _ = qr_log_diagonal(apply_factor_transpose(factor, q), qr)
        q = q[going]
        if sweep > 1:  # the frame converges at the square root of the values' rate: it must settle too
            moved = _frame_change(q[..., :k], right[rows, :, :k], torch.isfinite(total[:, :k]))
            change[rows] = torch.maximum(change[rows], moved)
            error[rows] = _geometric_error(change[rows], previous, tol)
        right[rows] = q
        done[rows] = error[rows] <= tol
        if bool(done.all()):
            break
        if 2 * int((~done[subset]).sum()) <= len(subset):  # sweep only the unconverged once they are half or fewer
            keep = ~done[subset]
            subset = subset[keep]
            factors = [f.select(keep) for f in factors]
    return ProductSVD(log_sv[:, :k], right[..., :k], left[..., :k], sweep, error)


def log_norm_of_image(factors: Iterable[Factor], u: torch.Tensor) -> torch.Tensor:
    """``log ||J u||`` (B,) for vectors u (B, n), renormalising as it goes."""
    x = u.unsqueeze(-1)
    total = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
    for factor in factors:
        x, norm = normalised(apply_factor(factor, x), dim=(-2, -1))
        total = total + torch.log(norm[:, 0, 0])
    return total + torch.log(torch.linalg.vector_norm(u, dim=-1))


def suffix_products(factors: Sequence[Factor], lengths: Sequence[int]) -> dict[int, LogScaledProduct]:
    """Products of the last l factors, ``A_l = F_L ... F_{L-l+1}``, for the requested lengths.

    These are the intermediate Jacobians that share the output end with ``J`` (Haas §5).
    """
    wanted = set(lengths)
    out = {}
    matrix = log_scale = None
    for length, (w, gate) in enumerate(reversed(list(factors)), start=1):
        f = w * gate.unsqueeze(-2) if gate is not None else w
        if matrix is None:
            matrix, log_scale = f.clone(), torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        else:
            matrix = matrix @ f
        matrix, log_scale = _renormalise(matrix, log_scale)
        if length in wanted:
            out[length] = LogScaledProduct(matrix, log_scale, length)
    return out


def top_left_singular_vectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k left singular vectors (B, n, k)."""
    u, _, _ = torch.linalg.svd(matrix, full_matrices=False)
    return u[..., :k]


def subspace_sin_theta(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``||sin Θ(U, V)|| = ||(I - U U^T) V||`` between the column spaces of orthonormal U, V.

    Computed from the projection residual, not from ``sqrt(1 - cos^2)``, so tiny angles keep
    full relative precision.
    """
    residual = v - u @ (u.mT @ v)
    return torch.linalg.matrix_norm(residual, ord=2)
