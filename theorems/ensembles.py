"""Batched samplers for the network ensembles (the models of ``docs/claims.md``).

An :class:`Ensemble` describes B independent networks of width n and depth L.  Its
:meth:`Ensemble.factors` streams the Jacobian factors layer by layer,

    J = F_L F_{L-1} ... F_1,   F_l = W_l diag(d_{l-1}),

so peak memory is O(B n^2) whatever the depth.  Every random draw comes from the
``torch.Generator`` passed in: nothing touches torch's global RNG.

Models:

* ``gates="relu"``: the MLP of full eq. (1), ``Y_0 = x``, ``Y_k = W_k relu(Y_{k-1})``,
  ``d_k = 1{Y_k > 0}``.  The pre-activations are renormalised as they go (ReLU is positively
  homogeneous, so the gates do not change), hence depth 500 at any sigma2 is safe.
* ``gates="bernoulli"``: the gated model of Approximation 1, ``d_k`` iid Bernoulli(p)
  independent of the weights (p = 1/2 mimics ReLU).
* ``gates="none"``: plain Gaussian products (p = 1).
* ``input_gate=False`` drops ``D_0``, giving Haas' masked linear network ``W_L D_{L-1} ... D_1 W_1``.
* ``pruning``: ``W_l -> t (B_l ⊙ W_l)`` with a random, magnitude or bounded non-binary mask.
* ``eta``: correlated weights ``W^{ij} = W_ind^{ij} + eta w`` with one shared scalar
  ``w ~ N(0, sigma2/n)`` per layer and network (full, App. F); corr = eta^2 / (1 + eta^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator, Literal, NamedTuple

import torch

from .validation import (
    check_depth,
    check_int,
    check_keep_prob,
    check_real,
    check_sigma2,
    check_sparsity,
    check_width,
)

__all__ = [
    "Pruning", "Ensemble", "Factor", "correlated", "prune_mask", "sample_weights", "gaussian_image", "haar_frame",
    "normalised"]

GateKind = Literal["relu", "bernoulli", "none"]
MaskKind = Literal["random", "magnitude", "uniform"]


class Factor(NamedTuple):
    """One Jacobian factor ``F = W diag(gate)`` for a batch: ``weight`` (B, n, n), ``gate`` (B, n) or None."""

    weight: torch.Tensor
    gate: torch.Tensor | None

    def select(self, index) -> "Factor":
        """The factor of the networks ``index`` picks (a boolean mask or indices over the batch)."""
        return Factor(self.weight[index], None if self.gate is None else self.gate[index])


@dataclass(frozen=True)
class Pruning:
    """Pruning at initialisation ``W -> scale * (mask ⊙ W)`` (the pruned network of full Thm 7).

    kind:
      * ``"random"``: mask entries iid Bernoulli(1 - sparsity) (full, Thm 5);
      * ``"magnitude"``: keep the r = round((1 - sparsity) n^2) largest |w| of each layer (Thm 6);
      * ``"uniform"``: a bounded non-binary mask, entries iid Uniform(0, 1) independent of W
        (an instance of the stability theorem's setting; ``sparsity`` must be 0).
    scale: the multiplier t applied to the kept weights.
    """

    kind: MaskKind
    sparsity: float
    scale: float = 1.0

    def __post_init__(self):
        if self.kind not in ("random", "magnitude", "uniform"):
            raise ValueError(f"pruning kind must be one of 'random', 'magnitude', 'uniform'; got {self.kind!r}")
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        object.__setattr__(self, "scale", check_real("scale", self.scale, low=0.0, low_open=True))
        if self.kind == "uniform" and self.sparsity != 0.0:
            raise ValueError("sparsity must be 0 for the 'uniform' (non-binary) mask; got %g" % self.sparsity)


def prune_mask(weight: torch.Tensor, pruning: Pruning, generator: torch.Generator) -> torch.Tensor:
    """The mask B for a batch of weight matrices (B, n, n), same dtype as the weights."""
    if pruning.kind == "random":
        keep = 1.0 - pruning.sparsity
        u = torch.rand(weight.shape, generator=generator, device=weight.device, dtype=weight.dtype)
        return (u < keep).to(weight.dtype)
    if pruning.kind == "uniform":
        return torch.rand(weight.shape, generator=generator, device=weight.device, dtype=weight.dtype)
    # magnitude: keep the r largest |w| of each matrix
    batch, n, m = weight.shape
    total = n * m
    r = int(round((1.0 - pruning.sparsity) * total))
    if r >= total:
        return torch.ones_like(weight)
    if r <= 0:
        return torch.zeros_like(weight)
    flat = weight.abs().reshape(batch, total)
    threshold = torch.kthvalue(flat, total - r, dim=1).values  # (B,) the (n^2 - r)-th smallest
    return (flat > threshold[:, None]).reshape(weight.shape).to(weight.dtype)


def correlated(w: torch.Tensor, eta: float, g: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Full App. F's correlated weights ``W_ind + eta w``: ``w = sqrt(sigma2/n) g`` is one number shared by every entry
    of a layer (``g ~ N(0, 1)``, shape (B, 1, 1): one per network), so entries have correlation
    ``eta^2 / (1 + eta^2)`` (:func:`theorems.predictions.correlation_from_eta`).  The one place this shift is built."""
    return w + (eta * math.sqrt(sigma2 / w.shape[-1])) * g


def sample_weights(
    batch: int,
    width: int,
    sigma2: float,
    generator: torch.Generator,
    *,
    eta: float = 0.0,
    pruning: Pruning | None = None,
    columns: torch.Tensor | None = None,
    device=None,
    dtype=torch.float64,
) -> torch.Tensor:
    """One layer of weights for B networks: iid N(0, sigma2/n), optionally correlated and pruned.

    Only what is needed is drawn, with the same law: random pruning at sparsity >= 1/2 (or with ``columns``) draws
    its mask first and normals for the kept entries only (entries iid ``scale * Bernoulli(1-s) * N(0, sigma2/n)``;
    (1-s) n^2 normals instead of n^2; denser masks are cheaper drawn dense); ``columns`` (B, n) of 0/1, optional:
    only the columns with a 1 are drawn and the others are 0, which keeps the law of ``W diag(columns)`` (see
    :meth:`Ensemble.factors` with ``jacobian_only``).  Not with magnitude pruning, whose mask depends on every entry."""
    std = math.sqrt(sigma2 / width)
    shape = (batch, width, width)
    random_mask = pruning is not None and pruning.kind == "random"
    if columns is not None and pruning is not None and pruning.kind == "magnitude":
        raise ValueError("columns cannot be combined with magnitude pruning: its mask depends on every entry of W")
    drawn = None if columns is None else columns.bool()[:, None, :].expand(shape)
    masked = random_mask and (drawn is not None or pruning.sparsity >= 0.5)
    if masked:
        kept = prune_mask(torch.empty(shape, device=device, dtype=dtype), pruning, generator).bool()
        drawn = kept if drawn is None else drawn & kept
    if drawn is None:
        w = torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(std)
    else:
        values = torch.randn(int(drawn.sum()), generator=generator, device=device, dtype=dtype).mul_(std)
        w = torch.zeros(shape, device=device, dtype=dtype).masked_scatter_(drawn, values)
    if eta:
        w = correlated(w, eta, torch.randn((batch, 1, 1), generator=generator, device=device, dtype=dtype), sigma2)
        if drawn is not None:
            w = w.masked_fill_(~drawn, 0.0)
    if masked:
        return w.mul_(pruning.scale)
    if pruning is not None:
        w = pruning.scale * prune_mask(w, pruning, generator) * w
    return w


def gaussian_image(h: torch.Tensor, sigma2: float, generator: torch.Generator, *, eta: float = 0.0) -> torch.Tensor:
    """``W h`` for a fresh W with iid N(0, sigma2/n) entries, per network (h: (B, n)), without drawing W: given h it
    is exactly N(0, sigma2 ||h||^2 / n I_n), so n normals replace n^2.  With ``eta``, W is :func:`correlated`'s
    ``W_ind + eta sqrt(sigma2/n) g`` (one g ~ N(0, 1) per network), whose image adds ``eta sqrt(sigma2/n) g sum_j h_j``
    to every coordinate.  For a forward pass through layers whose weights are not needed afterwards (claim
    approx-gates samples W_l in full only at the layers it inspects)."""
    scale = math.sqrt(sigma2 / h.shape[-1])
    y = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
    y.mul_(torch.linalg.vector_norm(h, dim=-1, keepdim=True) * scale)
    if eta:
        g = torch.randn((h.shape[0], 1), generator=generator, device=h.device, dtype=h.dtype)
        y += (eta * scale) * g * h.sum(dim=-1, keepdim=True)
    return y


def normalised(v: torch.Tensor, dim=-1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v / ||v||, ||v||)``, the Euclidean norm over ``dim`` (kept as size-1 dimensions); a zero ``v`` stays 0 with
    norm 0, never NaN (a collapsed product or a dead layer is a result).  The one place products, images and
    pre-activations are renormalised.

    The sum of squares overflows once entries pass about 1e154 although the norm is representable (GD that blew
    a network's weights up to 1e266 in one step, after which every ReLU died: its Jacobian is exactly 0, a
    collapse, but an overflowed norm made its log norm inf - inf = NaN; training-stability's control at master seed
    718): there, and only there, the norm is taken of ``v`` scaled by its largest entry (as LAPACK's dnrm2 does)."""
    norm = torch.linalg.vector_norm(v, dim=dim, keepdim=True)
    overflowed = torch.isinf(norm)
    if bool(overflowed.any()):
        peak = torch.amax(torch.abs(v), dim=dim, keepdim=True)
        rescaled = peak * torch.linalg.vector_norm(v / torch.where(peak > 0, peak, torch.ones_like(peak)), dim=dim,
                                                   keepdim=True)
        norm = torch.where(overflowed, rescaled, norm)
    return v / torch.where(norm > 0, norm, torch.ones_like(norm)), norm


def haar_frame(batch: int, width: int, k: int, generator: torch.Generator, *, device=None, dtype=torch.float64):
    """B uniformly random (Haar) orthonormal n x k frames: the Q of a Gaussian matrix's QR."""
    g = torch.randn((batch, width, k), generator=generator, device=device, dtype=dtype)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


@dataclass(frozen=True)
class Ensemble:
    """B independent networks of width n and depth L (see the module docstring for the models)."""

    width: int
    depth: int
    sigma2: float = 2.0
    gates: GateKind = "bernoulli"
    keep_prob: float = 0.5
    batch: int = 1
    eta: float = 0.0
    pruning: Pruning | None = None
    input_gate: bool = True
    inputs: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "width", check_width(self.width))
        object.__setattr__(self, "depth", check_depth(self.depth))
        object.__setattr__(self, "sigma2", check_sigma2(self.sigma2))
        object.__setattr__(self, "batch", check_int("batch", self.batch, minimum=1))
        object.__setattr__(self, "eta", check_real("eta", self.eta, low=0.0))
        if self.gates not in ("relu", "bernoulli", "none"):
            raise ValueError(f"gates must be one of 'relu', 'bernoulli', 'none'; got {self.gates!r}")
        if self.gates == "bernoulli":
            object.__setattr__(self, "keep_prob", check_keep_prob(self.keep_prob))
        if self.inputs is not None:
            if self.gates != "relu":
                raise ValueError("inputs only apply to gates='relu'")
            if self.inputs.shape[-1] != self.width or not torch.isfinite(self.inputs).all():
                raise ValueError(f"inputs must be finite with last dimension width={self.width}")

    def with_(self, **changes) -> "Ensemble":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def effective_keep_prob(self) -> float:
        """The gate keep probability p of the model (1/2 for ReLU, 1 without gates)."""
        return {"relu": 0.5, "bernoulli": self.keep_prob, "none": 1.0}[self.gates]

    # --- the model's closed forms, so that a check states its model once (theorems.predictions) --------------------

    def _iid_gaussian(self, what: str):
        if self.pruning is not None or self.eta:
            kind = "pruned" if self.pruning is not None else "correlated (eta > 0)"
            raise ValueError(f"{what} is the closed form of iid Gaussian weights; this ensemble's weights are {kind}: "
                             "use ens.with_(pruning=None, eta=0.0) for the unperturbed model's")

    def lyapunov_exponents(self, k: int = 1, **options):
        """gamma_1..gamma_k(n, p, σ²) of this model (closed form 2; claims lyapunov, critical-init): exact at every
        depth for Gaussian weights with Bernoulli(p) gates, none (p = 1) or ReLU gates (p = 1/2).  ``options``:
        those of :func:`theorems.predictions.lyapunov_exponents` (``max_dropout``, ``dof_offset``)."""
        from .predictions import lyapunov_exponents

        self._iid_gaussian("lyapunov_exponents")
        return lyapunov_exponents(self.width, self.effective_keep_prob, self.sigma2, k, **options)

    def finite_depth_correction(self, k: int = 1):
        """``b_j = d_{j-1} - d_j``, j = 1..k: the limit of ``E log s_{j,L} - L gamma_j`` as L -> inf (claim lyapunov,
        statement finite-depth-constants; :func:`theorems.predictions.finite_depth_constants`).  It depends on the
        width only; it holds wherever ``E log vol_k(J Q) = L sum gamma_i`` is exact (the models of
        :meth:`lyapunov_exponents`)."""
        from .predictions import finite_depth_correction

        self._iid_gaussian("finite_depth_correction")
        return finite_depth_correction(self.width, k)

    def free_log_rate(self) -> float:
        """½ log(σ² p): the n -> inf per-layer rate of log||J|| of this model (theorems.predictions.free_log_rate)."""
        from .predictions import free_log_rate

        self._iid_gaussian("free_log_rate")
        return free_log_rate(self.sigma2, self.effective_keep_prob)

    def factors(self, generator: torch.Generator, *, device=None, dtype=torch.float64,
                jacobian_only: bool = False) -> Iterator[Factor]:
        """Stream the L factors ``W_l diag(d_{l-1})``, input side first.

        ``jacobian_only``: for callers that use the factors only through ``W_l diag(d_{l-1})`` (products, images,
        spectra): the columns of W_l that a closed gate multiplies by 0 are not drawn (they are 0), which keeps the law
        of every product of factors and draws a fraction p of the normals (half for ReLU gates).  Callers that read
        W_l itself (its signs, its pruning by magnitude, training) leave it False; magnitude pruning ignores it."""
        n, b = self.width, self.batch
        pre = None
        if self.gates == "relu":
            if self.inputs is None:
                pre = torch.randn((b, n), generator=generator, device=device, dtype=dtype)
            else:
                pre = self.inputs.to(device=device, dtype=dtype).expand(b, n).clone()
        lean = jacobian_only and (self.pruning is None or self.pruning.kind != "magnitude")
        for layer in range(1, self.depth + 1):
            if layer == 1 and not self.input_gate:
                gate = None
            elif self.gates == "relu":
                gate = (pre > 0).to(dtype)
            elif self.gates == "bernoulli":
                u = torch.rand((b, n), generator=generator, device=device, dtype=dtype)
                gate = (u < self.keep_prob).to(dtype)
            else:
                gate = None
            w = sample_weights(b, n, self.sigma2, generator, eta=self.eta, pruning=self.pruning,
                               columns=gate if lean else None, device=device, dtype=dtype)
            if self.gates == "relu":
                pre, _ = normalised(torch.einsum("bij,bj->bi", w, torch.relu(pre)))
            yield Factor(w, gate)
