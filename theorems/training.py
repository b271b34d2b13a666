"""Full-batch gradient descent for batches of independent networks, recording log||J|| along training.

* :func:`train_mlp`: the MLP of full eq. (1) (``Y_0 = x``, ``Y_k = W_k relu(Y_{k-1})``) with the loss
  ``(2n)^-1 ||Y_L(x) - z||^2`` of full §4 (averaged over samples for the multi-sample variant), hidden
  weights ``W_1..W_L`` trained, B networks at once (the loss is summed over networks, so each network
  gets its own gradient).
* :func:`descend`: the GD loop behind :func:`train_mlp` and :func:`theorems.convolution.train_cnn`, for any
  :class:`GradientDescentModel` (a forward pass, a loss, a hand-written backward applied in place); divergence is an
  unbounded change, flagged per network.
* :func:`trainability_of_variants`: App. G.4-G.6's accuracy after a fixed budget, for a :class:`DigitsNetwork`.
* :func:`train_masked_linear`: Haas' masked linear network ``J = W_L D_{L-1} ... D_1 W_1`` with fixed
  gates, loss ``(2n)^-1 ||J X - Y||_F^2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import math

import numpy as np
import torch

from .ensembles import Factor, Pruning, correlated, prune_mask, sample_weights
from .predictions import balanced_singular_value_velocity
from .spectral import jacobian_product, log_spectral_norm
from .validation import check_int, check_real

__all__ = ["TrainingRun", "mlp_forward", "mlp_losses", "mlp_factors", "mlp_log_norm", "train_mlp", "WeightVariant",
           "trainability_of_variants", "train_masked_linear", "balance_defects", "regression_data",
           "stable_learning_rate", "masked_linear_loss", "trained_fixed_gates_network", "mlp_stable_learning_rate",
           "train_at_largest_stable_rate", "relative_weight_change", "GateShift", "gates_after_training",
           "balanced_masked_network", "gradient_flow_singular_value_velocity", "masked_linear_gd_path",
           "modewise_velocity_coefficients", "top_mode_velocity_laws", "loss_sharpness", "masked_linear_sharpness",
           "SpectrumPath", "train_masked_linear_at_half_edge", "masked_linear_gradients", "low_rank_regression_path",
           "Trainability", "trainability_at_one_rate", "GradientDescentModel", "RELU_MLP", "descend", "DigitsNetwork",
           "MLP_ON_DIGITS"]


@dataclass
class TrainingRun:
    steps: np.ndarray  # recorded steps
    log_norm: np.ndarray | None  # (len(steps), B) log||J|| at the reference input; +inf once a network diverged; None
    #                              when not recorded (train_mlp's record_norms=False)
    loss: np.ndarray  # (len(steps), B); +inf once a network diverged
    weights: list  # final weights, list of (B, n, n) (a diverged network's: its last finite ones)
    diverged: np.ndarray  # (B,) the loss or a gradient overflowed: GD left every bounded set (an unbounded change)


def mlp_forward(weights, x):
    """Pre-activations Y_0..Y_L for inputs x (B, N, n): Y_0 = x, Y_k = W_k relu(Y_{k-1})."""
    ys = [x]
    for w in weights:
        ys.append(torch.relu(ys[-1]) @ w.mT)
    return ys


def mlp_losses(weights, x, z) -> torch.Tensor:
    """Per-network loss ``(2n)^-1 ||Y_L(x) - z||^2`` averaged over the N samples (B,), the loss of full §4 that
    :func:`train_mlp` descends."""
    return _output_losses(mlp_forward(weights, x)[-1], z)


def _output_losses(y, z) -> torch.Tensor:
    """``(2n)^-1 ||y - z||^2`` averaged over the N samples, per network (B,), at the outputs y (B, N, n)."""
    return ((y - z) ** 2).sum(dim=(-2, -1)) / (2 * z.shape[-1] * z.shape[-2])


def relative_weight_change(after, before) -> torch.Tensor:
    """Per network (B,): mean over layers of ``||W_l^t - W_l^0||_F / ||W_l^0||_F`` (how far training moved the
    weights; claims approx-trained-gates, alignment)."""
    return torch.stack([torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b)
                        for a, b in zip(after, before)]).mean(0)


def mlp_factors(weights, x0):
    """Jacobian factors (W_l, d_{l-1}) of dY_L/dY_0 at the reference input x0 (B, n)."""
    with torch.no_grad():
        ys = mlp_forward(weights, x0.unsqueeze(1))
        return [Factor(w, (y[:, 0] > 0).to(w.dtype)) for w, y in zip(weights, ys[:-1])]


def mlp_log_norm(weights, x0) -> torch.Tensor:
    """log||J|| (B,) of the MLP at the input x0 (B, n), renormalised at every layer (a network on its way to
    diverging has huge but finite weights)."""
    return log_spectral_norm(jacobian_product(mlp_factors([w.detach() for w in weights], x0), renorm_every=1))


def train_mlp(weights, x, z, lr: float, steps: int, *, record_every: int = 1, x_ref=None,
              record_norms: bool = True, masks=None) -> TrainingRun:
    """Full-batch GD on hidden weights (list of (B, n, n)) for inputs x (B, N, n), targets z (B, N, n);
    ``lr``: one learning rate, or one per network.  Records the loss and (``record_norms``; an SVD per network and
    record, which callers that use only the weights or the loss skip) log||J|| at ``x_ref`` every ``record_every``
    steps and at the end.  ``masks``: per layer a 0/1 tensor like the weights, or None: pruned at initialisation, the
    masked entries get no update and stay 0 (full App. G.4's pruned networks).

    One step is one forward pass and a hand-written backward (:func:`_gd_increments`) whose output-layer error
    already carries each network's rate, so that every layer's update is one fused ``W <- W - delta^T h``
    (``baddbmm``): the gradient is never written out.  Divergence as :func:`descend` states it."""
    return descend(RELU_MLP, weights, x, z, lr, steps, record_every=record_every, x_ref=x[:, 0] if x_ref is None
                   else x_ref, record_norms=record_norms, masks=masks)


class GradientDescentModel:
    """What :func:`descend` needs of a family of networks trained side by side (B at once, each on its own data):
    its forward pass keeping what the backward needs, the per-network loss at the outputs, and a hand-written backward
    whose output error already carries each network's rate, so that a layer's update is applied in place.  Subclasses:
    :data:`RELU_MLP`; :class:`theorems.convolution.CircularCNN`."""

    def activations(self, ws, x):
        """``(cache, y)``: per layer what its update and the backward need (input side first), and the outputs."""
        raise NotImplementedError

    def losses(self, y, z) -> torch.Tensor:
        """Per-network loss (B,) at the outputs y."""
        raise NotImplementedError

    def output_error(self, y, z, rates) -> torch.Tensor:
        """``lr dloss/dy`` per network (``rates``: (B,))."""
        raise NotImplementedError

    def increments(self, ws, cache, delta_out) -> list:
        """Backpropagated errors per layer (input side first), from the weights before the step."""
        raise NotImplementedError

    def increment_bound(self, ws, deltas, cache) -> torch.Tensor:
        """Per network (B,): an upper bound on any entry of the step of any layer."""
        raise NotImplementedError

    def silence(self, delta, h, diverged) -> None:
        """Zero the slices of the networks flagged in ``diverged`` (B,) so that their weights do not move."""
        raise NotImplementedError

    def step(self, w, delta, h) -> None:
        """``w <- w - (the layer's rate-scaled gradient)``, in place."""
        raise NotImplementedError

    def log_norm(self, ws, x_ref) -> torch.Tensor:
        """log||J|| (B,) at the reference inputs."""
        raise NotImplementedError


class _ReLUMLP(GradientDescentModel):
    """The MLP of full eq. (1), ``Y_k = W_k relu(Y_k-1)``: weights (B, n, n), inputs and outputs (B, N, n)."""

    def activations(self, ws, x):
        return _relu_activations(ws, x)

    def losses(self, y, z):
        return _output_losses(y, z)

    def output_error(self, y, z, rates):
        return (y - z) * (rates.reshape(-1, 1, 1) / (z.shape[-1] * z.shape[-2]))  # d loss/d Y_L = (Y_L - z) / (n N)

    def increments(self, ws, cache, delta_out):
        return _gd_increments(ws, cache, delta_out)

    def increment_bound(self, ws, deltas, cache):
        return _increment_bound(deltas, cache)

    def silence(self, delta, h, diverged):
        delta[diverged], h[diverged] = 0.0, 0.0

    def step(self, w, delta, h):
        w.baddbmm_(delta.mT, h, alpha=-1.0)

    def log_norm(self, ws, x_ref):
        return mlp_log_norm(ws, x_ref)


#: :func:`train_mlp`'s model.
RELU_MLP = _ReLUMLP()


def descend(model: GradientDescentModel, weights, x, z, lr, steps: int, *, record_every: int = 1, x_ref=None,
            record_norms: bool = True, masks=None) -> TrainingRun:
    """Full-batch GD of B networks of ``model`` (weights: a list of per-layer (B, ...) tensors) on inputs x and targets
    z, ``lr`` one rate or one per network; records as :func:`train_mlp` states (``x_ref``: the inputs where log||J||
    is recorded; required with ``record_norms``).  A network whose loss overflows, or whose update could
    (:data:`OVERFLOW_BOUND`), has diverged: it is frozen at its last finite weights, flagged in ``diverged``, and its
    log||J|| and loss are recorded as +inf from then on (an unbounded change, never NaN; claim training-stability
    reads it as such).  The others are unaffected (each network has its own gradient)."""
    steps = check_int("steps", steps, minimum=0)
    rates = _learning_rates(lr, weights[0].shape[0], weights[0]).reshape(-1)
    masks = [None] * len(weights) if masks is None else list(masks)
    if len(masks) != len(weights):
        raise ValueError(f"masks must give one mask (or None) per layer: {len(weights)}; got {len(masks)}")
    if record_norms and x_ref is None:
        raise ValueError("x_ref must give the inputs where log||J|| is recorded when record_norms is set")
    ws = [w.detach().clone() for w in weights]
    diverged = torch.zeros(weights[0].shape[0], dtype=torch.bool, device=weights[0].device)
    rec_steps, norms, losses = [], [], []
    with torch.no_grad():
        for t in range(steps + 1):
            cache, y = model.activations(ws, x)
            per_net = model.losses(y, z)
            diverged |= ~torch.isfinite(per_net)
            if t % record_every == 0 or t == steps:
                rec_steps.append(t)
                losses.append(torch.where(diverged, math.inf, per_net).cpu().numpy())
                if record_norms:
                    norms.append(torch.where(diverged, math.inf, model.log_norm(ws, x_ref)).cpu().numpy())
            if t == steps:
                break
            deltas = model.increments(ws, cache, model.output_error(y, z, rates))
            diverged |= ~(model.increment_bound(ws, deltas, cache) < OVERFLOW_BOUND)  # NaN and inf included
            if bool(diverged.any()):  # only the diverged networks' slices are written (a where over all cost as much
                for d, h in zip(deltas, cache):  # as the update itself); their inf/NaN would reach 0 x inf = NaN
                    model.silence(d, h, diverged)
            for w, d, h, mask in zip(ws, deltas, cache, masks):
                model.step(w, d, h)
                if mask is not None:
                    w.mul_(mask)  # W was 0 where masked: (W - step) x mask = W - step x mask
    return TrainingRun(np.array(rec_steps), np.array(norms) if record_norms else None, np.array(losses), ws,
                       diverged.cpu().numpy())


#: A network whose GD increment may reach this size in some entry (``N max|delta| max|h|``, a bound) has left every
#: bounded set: :func:`train_mlp` flags it as diverged before the update could overflow.
OVERFLOW_BOUND = 1e300


def _relu_activations(ws, x):
    """The forward pass that the backward needs: ``h_k = relu(Y_k)`` for k = 0..L-1 (the input of W_{k+1}) and
    Y_L."""
    hs = [torch.relu(x)]
    for w in ws[:-1]:
        hs.append(torch.relu(hs[-1] @ w.mT))
    return hs, hs[-1] @ ws[-1].mT


def _gd_increments(ws, hs, delta_out):
    """Backpropagation of the (rate-scaled) output error ``delta_L = lr dloss/dY_L`` through Y_k = W_k relu(Y_k-1):
    ``delta_k = (delta_k+1 W_k+1) * 1{Y_k > 0}``, from the weights before the step; the step of W_k is
    ``delta_k^T h_k-1`` (returned per layer, input side first)."""
    deltas = [delta_out]
    for w, h in zip(ws[:0:-1], hs[:0:-1]):
        deltas.append((deltas[-1] @ w) * (h > 0))
    return deltas[::-1]


def _increment_bound(deltas, hs) -> torch.Tensor:
    """Per network (B,): an upper bound ``N max|delta_k| max|h_k-1|`` over layers on any entry of a GD increment."""
    return torch.stack([d.abs().amax(dim=(-2, -1)) * h.abs().amax(dim=(-2, -1)) for d, h in zip(deltas, hs)]
                       ).amax(0) * hs[0].shape[-2]


def train_at_largest_stable_rate(weights, x, z, rates, steps: int, *, record_every: int = 1,
                                 x_ref=None) -> tuple[TrainingRun, np.ndarray]:
    """Each network trains by :func:`train_mlp` at the largest of ``rates`` at which it stays stable: all start at
    the largest; a network that diverges (loss or gradient overflow) or dies (log||J|| = -inf: every gate closed at
    the reference input) at some record is rerun from its initial weights at the next rate, and so on (claim
    descent-convergence's grid search).  Returns the merged run and each network's rate, NaN where no rate of the
    grid was stable (that network's run is then the one at the smallest rate).  A network's run is the one it would
    have trained alone: each network has its own gradient."""
    rates = sorted((check_real("rates", r, low=0.0, low_open=True) for r in rates), reverse=True)
    if not rates:
        raise ValueError("rates must hold at least one learning rate; got none")
    batch = weights[0].shape[0]
    x_ref = x[:, 0] if x_ref is None else x_ref
    chosen = np.full(batch, np.nan)
    run, todo = None, np.arange(batch)
    for rate in rates:
        idx = torch.as_tensor(todo, device=x.device)
        sub = train_mlp([w[idx] for w in weights], x[idx], z[idx], rate, steps, record_every=record_every,
                        x_ref=x_ref[idx])
        if run is None:
            run = sub
        else:
            run.log_norm[:, todo], run.loss[:, todo], run.diverged[todo] = sub.log_norm, sub.loss, sub.diverged
            for w, w_sub in zip(run.weights, sub.weights):
                w[idx] = w_sub
        stable = np.isfinite(sub.loss).all(axis=0) & np.isfinite(sub.log_norm).all(axis=0)
        chosen[todo[stable]] = rate
        todo = todo[~stable]
        if not todo.size:
            break
    return run, chosen


def _masked_product(ws, gates):
    j = ws[0]
    for w, d in zip(ws[1:], gates):
        j = w @ (d.unsqueeze(-1) * j)
    return j


def _loss_of_jacobian(j, x, y) -> torch.Tensor:
    """Per-network ``(2n)^-1 ||J X - Y||_F^2`` (B,)."""
    return ((j @ x - y) ** 2).sum(dim=(-2, -1)) / (2 * x.shape[-2])


def _masked_linear_losses(weights, gates, x, y) -> torch.Tensor:
    return _loss_of_jacobian(_masked_product(weights, gates), x, y)


def masked_linear_loss(weights, gates, x, y) -> torch.Tensor:
    """Per-network loss ``(2n)^-1 ||J X - Y||_F^2`` of the masked linear network (B,)."""
    with torch.no_grad():
        return _masked_linear_losses(weights, gates, x, y)


def balance_defects(ws, gates):
    """``C_l = M_{l+1}^T M_{l+1} - M_l M_l^T`` for l = 1..L-1, with ``M_l = D_l W_l D_{l-1}`` (D_0 = D_L = I)."""
    ms = _masked_factors(ws, gates)
    return [ms[l + 1].mT @ ms[l + 1] - ms[l] @ ms[l].mT for l in range(len(ms) - 1)]


def balanced_masked_network(batch: int, width: int, depth: int, rank: int, gen, *, device=None,
                            log_spread: float = 1.2) -> tuple[list, list]:
    """Balanced masked linear factors (Haas Prop. 4.5; claim balanced-dynamics): (weights W_1..W_L, gates D_1..D_{L-1}).

    Each gate opens exactly half the units (Prop. 4.5 holds for any fixed gates; half leaves room for the rank).
    ``M_l = U_l Σ U_{l-1}^T`` with U_l (n x r) Haar-orthonormal inside the open units of D_l (U_0 and U_L anywhere,
    D_0 = D_L = I) and one Σ = diag(σ_i) for every layer, so ``M_{l+1}^T M_{l+1} = U_l Σ² U_l^T = M_l M_l^T``
    exactly and ``J = U_L Σ^L U_0^T`` (W_l = M_l: the weights a closed gate hides are zero).  The singular values
    s_i = σ_i^L are e^(c_i), c_i equally spaced from ``log_spread`` down to ``-log_spread`` with a jitter of ±0.1 per
    network: distinct, and away from 1, where the deep linear law's power 2 - 2/L differs from 2 by the factor
    s^(2/L)."""
    n = check_int("width", width, minimum=2)
    L = check_int("depth", depth, minimum=2)
    r = check_int("rank", rank, minimum=1, maximum=n // 2)
    spread = check_real("log_spread", log_spread, low=0.0, low_open=True)
    b = check_int("batch", batch, minimum=1)
    f64 = dict(device=device, dtype=torch.float64)
    ones = torch.ones(b, n, **f64)
    order = torch.rand(L - 1, b, n, generator=gen, **f64).argsort(dim=-1)
    gates = [torch.zeros(b, n, **f64).scatter_(-1, o[:, : n // 2], 1.0) for o in order]
    frames = []
    for d in [ones, *gates, ones]:
        q = torch.linalg.qr(torch.randn(b, n, r, generator=gen, **f64) * d.unsqueeze(-1)).Q
        frames.append(q * d.unsqueeze(-1))  # exactly zero where the gate is closed
    c = torch.linspace(spread, -spread, r, **f64) + 0.1 * (2 * torch.rand(b, r, generator=gen, **f64) - 1)
    sigma = torch.exp(c / L)
    weights = [(frames[l + 1] * sigma.unsqueeze(-2)) @ frames[l].mT for l in range(L)]
    return weights, gates


def _masked_factors(ws, gates) -> list:
    """``M_l = D_l W_l D_{l-1}`` (D_0 = D_L = I)."""
    ones = torch.ones_like(ws[0][..., 0])
    ds = [ones, *gates, ones]
    return [ds[l + 1].unsqueeze(-1) * w * ds[l].unsqueeze(-2) for l, w in enumerate(ws)]


def gradient_flow_singular_value_velocity(ws, gates, grad_j, u, v) -> torch.Tensor:
    """``ds_k/dt`` (B, k) under gradient flow on the weights of the masked linear network, for any weights (balanced or
    not): first-order perturbation ``u_k^T (dJ/dt) v_k`` with ``dJ/dt = -sum_l A_l A_l^T ∇L(J) B_l^T B_l``,
    A_l = M_L ... M_{l+1}, B_l = M_{l-1} ... M_1 (the flow moves W_l by -A_l^T ∇L B_l^T and J = A_l W_l B_l with the
    gates absorbed: D_l² = D_l).  ``grad_j``: ∇L(J) (B, n, n); ``u``, ``v``: J's top left and right singular vectors
    (B, n, k).  Exact (no balancing assumed): what Prop. 4.5's law is compared with (claim balanced-dynamics)."""
    return _flow_velocity(*_partial_products(ws, gates), grad_j, u, v)


def _flow_velocity(after, before, grad_j, u, v) -> torch.Tensor:
    flow = -sum((a @ a.mT) @ grad_j @ (b.mT @ b) for a, b in zip(after, before))
    return (u * (flow @ v)).sum(dim=-2)


def _partial_products(ws, gates) -> tuple[list, list]:
    """(A_1..A_L, B_1..B_L): A_l = M_L ... M_{l+1} (A_L = I), B_l = M_{l-1} ... M_1 (B_1 = I), M_l the masked factors.
    Not renormalised: for depths at which the products stay within float64's range."""
    ms = _masked_factors(ws, gates)
    eye = torch.eye(ms[0].shape[-1], dtype=ms[0].dtype, device=ms[0].device).expand_as(ms[0])
    before = [eye]
    for m in ms[:-1]:
        before.append(m @ before[-1])
    after = [eye]
    for m in reversed(ms[1:]):
        after.append(after[-1] @ m)
    after.reverse()
    return after, before


def modewise_velocity_coefficients(ws, gates, k: int) -> torch.Tensor:
    """``c_k = sum_l s_k(A_l)² s_k(B_l)²`` (B, k), the intermediate Jacobians' singular values (claim balanced-dynamics,
    statement modewise-dynamics).  If every A_l shared J's left singular vectors and every B_l its right ones, the
    flow's velocity ``u_k^T (-sum_l A_l A_l^T ∇L B_l^T B_l) v_k`` would be exactly ``-c_k u_k^T ∇L v_k``: mode k
    moves by its own projected gradient alone (decoupled), as in a balanced deep linear network, where c_k =
    L s_k^(2-2/L).  Spectral separation makes the intermediate products align (claim alignment), so the decoupled
    form is approached as the depth grows; without balancing c_k is not L s_k^(2-2/L)."""
    k = check_int("k", k, minimum=1, maximum=ws[0].shape[-1])
    return _modewise_coefficients(*_partial_products(ws, gates), k)


def _modewise_coefficients(after, before, k: int) -> torch.Tensor:
    return sum(torch.linalg.svdvals(a)[..., :k] ** 2 * torch.linalg.svdvals(b)[..., :k] ** 2
               for a, b in zip(after, before))


def top_mode_velocity_laws(ws, gates, grad_j) -> dict:
    """For J's top singular value s_1 (claim balanced-dynamics, statement modewise-dynamics), per network (B,) numpy:
    ``exact``, the gradient-flow velocity (:func:`gradient_flow_singular_value_velocity`); ``modewise``, the decoupled
    law ``-c_1 u_1^T ∇L v_1`` (:func:`modewise_velocity_coefficients`); ``cross_mode``, the same coefficient with the
    neighbouring mode's projection ``u_1^T ∇L v_2`` (modes that stay coupled); ``balanced``, the balanced law
    ``-L s_1^(2-2/L) u_1^T ∇L v_1``; and ``coefficient``, c_1 (the natural scale of the velocity: with ∇L of unit
    Gaussian entries the projections are standard normal)."""
    u, s, vh = torch.linalg.svd(_masked_product(ws, gates))
    u, v = u[..., :2], vh[..., :2, :].mT
    projected = (u[..., :1] * (grad_j @ v)).sum(dim=-2)  # u_1^T ∇L v_1, u_1^T ∇L v_2
    after, before = _partial_products(ws, gates)  # once, for the exact velocity and the coefficient
    exact = _flow_velocity(after, before, grad_j, u[..., :1], v[..., :1])[:, 0]
    c = _modewise_coefficients(after, before, 1)[:, 0]
    out = {"exact": exact, "coefficient": c, "modewise": -c * projected[:, 0], "cross_mode": -c * projected[:, 1],
           "balanced": balanced_singular_value_velocity(s[:, 0], projected[:, 0], len(ws))}
    return {key: value.cpu().numpy() for key, value in out.items()}


def masked_linear_gd_path(ws, gates, x, y, lr: float, steps: int, k: int) -> dict:
    """GD (autograd) on the masked linear network with loss ``(2n)^-1 ||J X - Y||_F^2``, recording at every step
    t = 0..steps the top-k singular values ``s`` of J and ``u_k^T ∇L(J) v_k`` (``projected``), each (steps + 1, B, k)
    numpy, and ``exact_velocity`` (:func:`gradient_flow_singular_value_velocity`) at t = 0 (B, k) (claim
    balanced-dynamics)."""
    steps = check_int("steps", steps, minimum=1)
    k = check_int("k", k, minimum=1, maximum=ws[0].shape[-1])
    rate = check_real("lr", lr, low=0.0, low_open=True)
    current = [w.detach().clone() for w in ws]
    s_path, proj_path, exact = [], [], None
    for t in range(steps + 1):
        params = [w.requires_grad_(True) for w in current]
        j = _masked_product(params, gates)  # one forward pass: ∇L(J) and the weights' gradients from one graph
        grad_j, *grads = torch.autograd.grad(_loss_of_jacobian(j, x, y).sum(), [j, *params])
        u, s, vh = torch.linalg.svd(j.detach())
        u, v = u[..., :k], vh[..., :k, :].mT
        s_path.append(s[..., :k])
        proj_path.append((u * (grad_j @ v)).sum(dim=-2))
        if t == 0:
            exact = gradient_flow_singular_value_velocity([w.detach() for w in params], gates, grad_j, u, v)
        current = [(w - rate * g).detach() for w, g in zip(params, grads)]
    as_np = lambda xs: torch.stack(xs).cpu().numpy()  # noqa: E731
    return {"s": as_np(s_path), "projected": as_np(proj_path), "exact_velocity": exact.cpu().numpy()}


def _learning_rates(lr, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar lr or one per network, validated, as a (B, 1, 1) tensor."""
    if isinstance(lr, (torch.Tensor, np.ndarray)):
        lr = torch.as_tensor(lr, dtype=like.dtype, device=like.device).reshape(-1)
        if lr.numel() != batch or not bool(torch.isfinite(lr).all()) or bool((lr <= 0).any()):
            raise ValueError(f"lr must be a finite positive number or {batch} of them (one per network); got {lr}")
        return lr.reshape(batch, 1, 1)
    return torch.full((batch, 1, 1), check_real("lr", lr, low=0.0, low_open=True), dtype=like.dtype, device=like.device)


def _squared_spectral_norm(a: torch.Tensor) -> torch.Tensor:
    """``||a||²`` as the top eigenvalue of ``a^T a`` (symmetric: 40% faster than the SVD for 128 64 x 64 matrices;
    relative error about 1e-15 at the top of the spectrum)."""
    return torch.linalg.eigvalsh(a.mT @ a)[..., -1]


def stable_learning_rate(weights, gates, x, fraction: float = 0.5) -> torch.Tensor:
    """Per-network GD step ``fraction * 2 / kappa`` for the masked linear network, loss (2n)^-1||J X - Y||².

    One GD step moves J by ``-lr * sum_l P_l R Q_l`` with ``R = (J X - Y) X^T / n``, ``P_l = A_l A_l^T`` (the
    factors after layer l) and ``Q_l = B_l^T B_l`` (the factors before it), so on J the step is a linear map of
    norm at most ``kappa = sum_l ||A_l||² ||B_l||² ||X X^T|| / n``; GD is stable for lr < 2/kappa.  Deep
    products fluctuate a lot from network to network (log-normally), so one lr for all would be unstable for a
    few and frozen for the rest; this gives each network the same fraction of its own bound at init.
    """
    fraction = check_real("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    n = x.shape[-2]
    eye = torch.eye(n, dtype=weights[0].dtype, device=weights[0].device).expand_as(weights[0])
    masked = [weights[0]] + [w * d.unsqueeze(-2) for w, d in zip(weights[1:], gates)]
    prefix = [eye]  # B_l = F_{l-1} ... F_1
    for f in masked[:-1]:
        prefix.append(f @ prefix[-1])
    suffix = [eye]  # A_l = F_L ... F_{l+1}
    for f in reversed(masked[1:]):
        suffix.append(suffix[-1] @ f)
    suffix.reverse()
    kappa = sum(_squared_spectral_norm(a) * _squared_spectral_norm(b) for a, b in zip(suffix, prefix))
    kappa = kappa * torch.linalg.matrix_norm(x @ x.mT, ord=2) / n
    return fraction * 2.0 / kappa


def mlp_stable_learning_rate(weights, x, fraction: float = 0.5) -> torch.Tensor:
    """Per-network GD step for :func:`train_mlp` on inputs x (B, N, n): :func:`stable_learning_rate` of the MLP's
    Jacobian at its first input (a masked linear network with the gates of that input).  A heuristic: every
    input has its own gates, so callers should check that training stayed finite."""
    factors = mlp_factors(weights, x[:, 0])
    masked = [factors[0].weight * factors[0].gate.unsqueeze(-2)] + [f.weight for f in factors[1:]]
    return stable_learning_rate(masked, [f.gate for f in factors[1:]], x.mT / math.sqrt(x.shape[1]), fraction)


def masked_linear_gradients(ws, gates, x, y) -> tuple[torch.Tensor, list]:
    """Per-network loss ``(2n)^-1 ||J X - Y||_F^2`` (B,) and its gradients in W_1..W_L, in closed form:
    ``∇_{W_l} = D_l A_l^T ∇L(J) B_l^T D_{l-1} = A_l^T ∇L(J) B_l^T`` with ∇L(J) = (J X X^T - Y X^T) / n and A_l, B_l
    the masked products after and before layer l (A_l's columns carry D_l and B_l's rows D_{l-1}, so the masks come
    for free; A_l^T ∇L(J) by the backward recurrence A_{l-1}^T G = M_l^T A_l^T G).  What autograd computes, for 3L
    products per network and step, none of them with the N samples (X X^T and Y X^T are formed once).  Not
    renormalised: for depths at which the products stay within float64's range (claim spectral-separation, statement
    low-rank-emergence)."""
    grads = torch.empty((len(ws), *ws[0].shape), dtype=ws[0].dtype, device=ws[0].device)
    _masked_linear_gradients_into(grads, _masked_factors(ws, gates), *_second_moments(x, y))
    return masked_linear_loss(ws, gates, x, y), list(grads.unbind(0))


def _second_moments(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X X^T / n, Y X^T / n)``: all the gradient of the loss ``(2n)^-1 ||J X - Y||_F^2`` needs of the data."""
    return x @ x.mT / x.shape[-2], y @ x.mT / x.shape[-2]


def _masked_linear_gradients_into(out, ms, xx, yx) -> None:
    """The gradients of :func:`masked_linear_gradients`, written into ``out`` (L, B, n, n), from the masked factors
    M_1..M_L and the data's second moments."""
    before = [None]  # B_1 = I
    for m in ms[:-1]:
        before.append(m if before[-1] is None else m @ before[-1])
    g = ms[-1] @ before[-1] @ xx - yx  # ∇L(J), J = M_L B_L
    for l in reversed(range(len(ms))):
        if before[l] is None:
            out[l] = g
        else:
            torch.matmul(g, before[l].mT, out=out[l])
        if l:
            g = ms[l].mT @ g


def loss_sharpness(losses, params, gen, *, iters: int = 30) -> torch.Tensor:
    """Per network (B,), the largest |eigenvalue| of the Hessian of its loss in its own weights: power iteration on
    Hessian-vector products (double backward), ``iters`` steps from a random direction drawn from ``gen``, the last
    Rayleigh quotient.  ``losses``: a function of ``params`` (a list of (B, ...) tensors) returning the B per-network
    losses (independent networks: the Hessian of their sum is block diagonal, so each network's block iterates on
    its own).  GD at a rate lr is stable near a minimum iff lr < 2/λ (the edge of stability): λ gives a learning-rate
    rule fixed before any training (claim spectral-separation, statement low-rank-emergence).  The Rayleigh quotient
    approaches λ from below, so lr = c/λ errs towards the larger rate."""
    start = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]
    return _power_iteration(losses, params, start, check_int("iters", iters, minimum=1))[0]


def _power_iteration(losses, params, start, iters: int) -> tuple[torch.Tensor, list]:
    """(|Rayleigh quotient|, the last direction) of ``iters`` power steps on each network's loss Hessian from
    ``start`` (a warm start: the previous direction, when the weights moved little since)."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    batch = ps[0].shape[0]
    grads = torch.autograd.grad(losses(ps).sum(), ps, create_graph=True)

    def per_network(vs, ws):
        return sum((a * b).reshape(batch, -1).sum(-1) for a, b in zip(vs, ws))

    def normalise(vs):
        norm = per_network(vs, vs).sqrt().clamp_min(torch.finfo(vs[0].dtype).tiny)
        return [a / norm.reshape(batch, *([1] * (a.dim() - 1))) for a in vs]

    v = normalise(start)
    for _ in range(iters):
        hv = torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True)
        quotient = per_network(v, hv)
        v = normalise([a.detach() for a in hv])
    return quotient.detach().abs(), v


def masked_linear_sharpness(weights, gates, x, y, gen, *, iters: int = 30) -> torch.Tensor:
    """:func:`loss_sharpness` of the masked linear network's loss ``(2n)^-1 ||J X - Y||_F^2`` (B,)."""
    return loss_sharpness(lambda ws: _masked_linear_losses(ws, gates, x, y), weights, gen, iters=iters)


def train_masked_linear(weights, gates, x, y, lr, steps: int):
    """GD on a masked linear network (loss ``(2n)^-1 ||J X - Y||_F^2``, closed-form gradients:
    :func:`masked_linear_gradients`); returns the final weights (list of (B, n, n)).

    ``lr``: one learning rate, or one per network (e.g. from :func:`stable_learning_rate`)."""
    steps = check_int("steps", steps, minimum=0)
    rates = _learning_rates(lr, weights[0].shape[0], weights[0])
    gd = _MaskedLinearGD(weights, gates, x, y)
    for _ in range(steps):
        gd.step(rates)
    return [w.clone() for w in gd.weights]


class _MaskedLinearGD:
    """GD on the masked linear network with closed-form gradients (:func:`masked_linear_gradients`): the weights
    stacked (L, B, n, n) (one update per step for every layer; ``weights`` are views of it), the masks of
    M_l = W_l ⊙ (d_l d_{l-1}^T), and the data's second moments (the gradient needs nothing else of the N samples)."""

    def __init__(self, weights, gates, x, y):
        self.stack = torch.stack([w.detach() for w in weights])
        self.weights = list(self.stack.unbind(0))
        self.masks = torch.stack(_masked_factors([torch.ones_like(w) for w in weights], gates))
        self.moments = _second_moments(x, y)
        self.grads = torch.empty_like(self.stack)

    def step(self, rates: torch.Tensor) -> None:
        """One GD step, ``rates`` (B, 1, 1)."""
        _masked_linear_gradients_into(self.grads, list((self.stack * self.masks).unbind(0)), *self.moments)
        self.stack.addcmul_(rates, self.grads, value=-1.0)


def regression_data(kind: str, batch: int, samples: int, n: int, rng, device="cpu", *, rank: int = 4):
    """Inputs x (B, N, n) and targets z (B, N, n).

    ``synthetic``: Gaussian inputs, targets a fixed random linear map ``G H / n`` of rank ``rank`` (G, H Gaussian
    n x r and r x n; one map per network; Haas Fig. 1 uses rank 10).
    ``digits``: scikit-learn's shipped 8x8 digits (64 pixels = the width, standardised), targets the one-hot
    class in the first 10 coordinates scaled to unit row norm times sqrt(n/10); a random subset per network.
    """
    if kind not in ("synthetic", "digits"):
        raise ValueError(f"kind must be 'synthetic' or 'digits'; got {kind!r}")
    batch = check_int("batch", batch, minimum=1)
    samples = check_int("samples", samples, minimum=1)
    n = check_int("n", n, minimum=1)
    if kind == "synthetic":
        r = check_int("rank", rank, minimum=1, maximum=n)
        x = torch.randn(batch, samples, n, generator=rng, device=device, dtype=torch.float64)
        a = torch.randn(batch, n, r, generator=rng, device=device, dtype=torch.float64) @ \
            torch.randn(batch, r, n, generator=rng, device=device, dtype=torch.float64) / n
        return x, x @ a.mT
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    if n != digits.data.shape[1]:
        raise ValueError(f"n must be {digits.data.shape[1]} for the digits data; got {n}")
    data = torch.as_tensor(digits.data, dtype=torch.float64)
    data = (data - data.mean(0)) / (data.std(0) + 1e-9)
    onehot = torch.zeros(len(digits.target), n, dtype=torch.float64)
    onehot[torch.arange(len(digits.target)), torch.as_tensor(digits.target)] = math.sqrt(n / 10)
    idx = torch.stack([torch.randperm(len(data), generator=torch.Generator().manual_seed(int(torch.randint(
        2**31, (1,), generator=rng, device=device).item())))[:samples] for _ in range(batch)])
    return data[idx].to(device), onehot[idx].to(device)


@dataclass
class SpectrumPath:
    """Top singular values of J along training (:func:`train_masked_linear_at_half_edge`)."""

    steps: np.ndarray  # recorded steps
    log_s: np.ndarray  # (len(steps), B, k) log singular values of J, descending
    rates: np.ndarray  # (len(steps), B) the learning rate in force at each recorded step
    weights: list  # final weights


def train_masked_linear_at_half_edge(weights, gates, x, y, steps: int, gen, *, every: int = 100, k: int = 15,
                                     record_every: int = 100, iters: int = 20, refresh_iters: int = 3) -> SpectrumPath:
    """GD on the masked linear network (loss ``(2n)^-1 ||J X - Y||_F^2``), each network at half its own edge of
    stability: lr = 1/λ, λ the top |eigenvalue| of its loss Hessian (:func:`loss_sharpness`), re-estimated every
    ``every`` steps (the rule is fixed before training; λ falls several-fold as a large initial J shrinks, so a rate
    fixed at init would leave the later, slow phase of training at a fraction of its stable speed).  The first
    estimate takes ``iters`` power steps from a random direction, each later one ``refresh_iters`` from the last
    direction.  Records the top-k log singular values of J every ``record_every`` steps, with the rate in force
    (claim spectral-separation, statement low-rank-emergence)."""
    steps = check_int("steps", steps, minimum=1)
    every = check_int("every", every, minimum=1)
    record_every = check_int("record_every", record_every, minimum=1)
    k = check_int("k", k, minimum=1, maximum=weights[0].shape[-1])
    iters = check_int("iters", iters, minimum=1)
    refresh_iters = check_int("refresh_iters", refresh_iters, minimum=1)
    gd = _MaskedLinearGD(weights, gates, x, y)
    ws = gd.weights
    direction = [torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype) for w in ws]

    def losses(params):
        return _masked_linear_losses(params, gates, x, y)

    rec_steps, log_s, rates = [], [], []
    for t in range(steps + 1):
        if t % every == 0:
            sharpness, direction = _power_iteration(losses, ws, direction, iters if t == 0 else refresh_iters)
            rate = 1.0 / sharpness
        if t % record_every == 0 or t == steps:
            with torch.no_grad():
                rec_steps.append(t)
                log_s.append(torch.log(torch.linalg.svdvals(_masked_product(ws, gates))[..., :k]).cpu().numpy())
                rates.append(rate.cpu().numpy())
        if t == steps:
            break
        gd.step(rate.reshape(-1, 1, 1))
    return SpectrumPath(np.array(rec_steps), np.array(log_s), np.array(rates), [w.clone() for w in ws])


def low_rank_regression_path(width: int, depth: int, ranks, samples: int, steps: int, gen, device="cpu", *,
                             k: int = 15, record_every: int = 100) -> SpectrumPath:
    """Haas Fig. 1's setting: fixed-gates linear networks (p = 1/2, σ² = 2, no input gate) trained by full-batch GD
    at half each network's edge of stability (:func:`train_masked_linear_at_half_edge`) on Gaussian inputs with
    targets from a fixed random linear map, of rank ``ranks[b]`` for network b (:func:`regression_data`; one batch
    for every rank: a check and its control share the per-step overhead), recording the top ``k`` log singular
    values of J (claim spectral-separation, statement low-rank-emergence)."""
    from .ensembles import Ensemble

    ranks = [check_int("ranks", r, minimum=1, maximum=width) for r in ranks]
    groups = [r for i, r in enumerate(ranks) if i == 0 or ranks[i - 1] != r]
    if not ranks or len(groups) != len(set(groups)):
        raise ValueError(f"ranks must be one or more groups of equal ranks (each rank's networks together); got {ranks}")
    data = [regression_data("synthetic", ranks.count(r), samples, width, gen, device, rank=r) for r in groups]
    x = torch.cat([d[0] for d in data]).mT / math.sqrt(samples)
    z = torch.cat([d[1] for d in data]).mT / math.sqrt(samples)
    factors = list(Ensemble(width, depth, sigma2=2.0, gates="bernoulli", batch=len(ranks), input_gate=False)
                   .factors(gen, device=device))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    return train_masked_linear_at_half_edge(ws, gates, x, z, steps, gen, k=k, record_every=record_every)


def trained_fixed_gates_network(depth: int, batch: int, steps: int, samples: int, rng, device="cpu",
                                fraction: float = 0.9, *, width: int = 64):
    """Haas' fixed-gates linear network (p = 1/2, σ² = 2, width 64 as in his Fig. 4) trained by full-batch GD on the
    shipped digits (:func:`regression_data`), each network at ``fraction`` of its own stability bound
    (:func:`stable_learning_rate`).  Returns ``(initial_factors, trained_factors, loss_ratio)``: Jacobian factors
    ``(W_1, None), (W_l, D_{l-1})`` before and after training, and the per-network final/initial loss."""
    from .ensembles import Ensemble

    n = check_int("width", width)
    x, z = regression_data("digits", batch, samples, n, rng, device)
    ens = Ensemble(n, depth, sigma2=2.0, gates="bernoulli", batch=batch, input_gate=False)
    factors = list(ens.factors(rng, device=device))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    x, z = x.mT / math.sqrt(samples), z.mT / math.sqrt(samples)
    trained = train_masked_linear(ws, gates, x, z, stable_learning_rate(ws, gates, x, fraction), steps)
    loss_ratio = masked_linear_loss(trained, gates, x, z) / masked_linear_loss(ws, gates, x, z)

    def as_factors(w):
        return [Factor(w[0], None)] + [Factor(a, d) for a, d in zip(w[1:], gates)]

    return as_factors(ws), as_factors(trained), loss_ratio


@dataclass(frozen=True)
class WeightVariant:
    """One initialisation of :func:`trainability_of_variants`, built from the shared critical weights W_2 ~ N(0, 2/n)
    of its index: ``sqrt(σ²/2) W_2``, then the correlated shift ``+ eta w`` (:func:`theorems.ensembles.correlated`,
    w shared by the variants of one index), then the random ``pruning`` mask (one mask per sparsity and index, shared
    by the variants that prune at that sparsity; the mask stays during training) times its scale."""

    sigma2: float = 2.0
    pruning: Pruning | None = None
    eta: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "sigma2", check_real("sigma2", self.sigma2, low=0.0, low_open=True))
        object.__setattr__(self, "eta", check_real("eta", self.eta, low=0.0))
        if self.pruning is not None and self.pruning.kind != "random":
            raise ValueError(f"pruning must be random (a mask independent of W); got {self.pruning.kind!r}")


def appendix_g_variants(width: int = 64, sparsity: float = 0.75, edge_degree: int = 2,
                        eta_sqrt_n: float = 4.0) -> dict:
    """The variants of full App. G.4-G.5 (Figs 13-15) that :func:`trainability_of_variants` trains side by side,
    all built from one critical network per index (the first, the reference): random pruning at ``sparsity`` without
    and with the (1-s)^-1/2 scale (they share the mask), the scaled network at the edge of stability (1-s) n =
    ``edge_degree`` (full Thm 5: 1 - s ~ 1/n), and the correlated network at eta = ``eta_sqrt_n``/sqrt(n) (correlation
    eta²/(1 + eta²): 0.2 at n = 64, far outside Thm 8's o(1/(n log³ n))).  Defaults: the suite's check and figure."""
    edge = 1 - check_int("edge_degree", edge_degree, maximum=width) / width

    def scaled(s):
        return Pruning("random", s, (1 - s) ** -0.5)

    return {"critical": WeightVariant(),
            "pruned, unscaled": WeightVariant(pruning=Pruning("random", sparsity)),
            "pruned, scaled": WeightVariant(pruning=scaled(sparsity)),
            "edge, scaled": WeightVariant(pruning=scaled(edge)),
            "correlated": WeightVariant(eta=check_real("eta_sqrt_n", eta_sqrt_n, low=0.0) / math.sqrt(width))}


class DigitsNetwork:
    """A family of networks that :func:`trainability_of_variants` trains on scikit-learn's shipped 8x8 digits: its
    data (inputs and one-hot targets per network), its critical weights, its outputs (the first 10 coordinates are the
    class scores) and its GD model, whose loss at the outputs is the network's (differentiable: the sharpness).  ``dense``: the layers are n x n
    matrices, so that random pruning masks and correlated shifts (:class:`WeightVariant`) apply.  Instances:
    :data:`MLP_ON_DIGITS`; :class:`theorems.convolution.CNNOnDigits`."""

    model: GradientDescentModel
    dense: bool

    def data(self, batch: int, samples: int, gen, device):
        raise NotImplementedError

    def critical_weights(self, batch: int, depth: int, gen, device) -> list:
        raise NotImplementedError

    def losses(self, ws, x, z) -> torch.Tensor:
        """Per-network loss (B,): the GD model's loss at :meth:`outputs` (differentiable in ``ws``)."""
        return self.model.losses(self.outputs(ws, x), z)

    def outputs(self, ws, x) -> torch.Tensor:
        """(B, N, outputs): the last layer's outputs per sample, flattened."""
        raise NotImplementedError


class _MLPOnDigits(DigitsNetwork):
    """The ReLU MLP of full eq. (1) at width 64 (the pixels), σ² = 2 (:func:`regression_data`'s digits)."""

    model, dense, width = RELU_MLP, True, 64

    def data(self, batch, samples, gen, device):
        return regression_data("digits", batch, samples, self.width, gen, device)

    def critical_weights(self, batch, depth, gen, device):
        return [sample_weights(batch, self.width, 2.0, gen, device=device) for _ in range(depth)]

    def outputs(self, ws, x):
        return mlp_forward(ws, x)[-1]


#: The MLP that the trainability checks train (App. G.4-G.5).
MLP_ON_DIGITS = _MLPOnDigits()


@dataclass
class Trainability:
    """Training accuracies after a fixed budget (:func:`trainability_of_variants`)."""

    accuracy: dict  # variant -> (B,) training accuracy on each network's own digits; 1/10 (chance) where it diverged
    diverged: dict  # variant -> (B,) bool
    rates: np.ndarray  # (budget / every, B) the rate of each index over training
    log_norm0: dict  # variant -> (B,) log||J|| at init, at each network's first training digit (Fig. 17's abscissa)
    loss: dict  # variant -> (B,) the training loss after the budget (mlp_losses); +inf where it diverged


def trainability_of_variants(depth: int, variants: dict, batch: int, samples: int, steps: int, gen, device="cpu", *,
                             reference, every: int = 100, iters: int = 10, refresh_iters: int = 3,
                             network: DigitsNetwork = MLP_ON_DIGITS) -> Trainability:
    """Full App. G.4-G.6 (Figs 13-17) on the shipped digits: ``network``s (default the ReLU MLP of full eq. (1),
    width 64, one-hot targets: :func:`regression_data`; or a circular CNN, :class:`theorems.convolution.CNNOnDigits`,
    which takes σ² variants only), one per :class:`WeightVariant` of ``variants`` (name -> variant) and index, the
    variants of one index built from the same critical weights (common random numbers) and trained on the same
    ``samples`` digits by full-batch GD (:func:`descend` with the network's hand-written backward) with one learning
    rate per index: 1/λ_max of the loss Hessian of the ``reference`` variant's network (half its edge of stability;
    :func:`loss_sharpness`), re-estimated every ``every`` steps (``iters`` power steps first, ``refresh_iters``
    warm-started ones after; the paper trains every variant at one rate).  Returns each network's training accuracy
    (argmax of the 10 class outputs) and training loss after ``steps`` steps; a network whose loss or gradient
    overflowed has not trained: chance, 1/10 (its loss +inf)."""
    names = list(variants)
    if reference not in variants:
        raise ValueError(f"reference must be one of the variants {names}; got {reference!r}")
    for name, v in variants.items():
        if not isinstance(v, WeightVariant):
            raise ValueError(f"variants must map names to WeightVariant; got {type(v).__name__} for {name!r}")
        if not network.dense and (v.pruning is not None or v.eta):
            raise ValueError(f"variants of a {type(network).__name__} may change sigma2 only (pruning and eta act on "
                             f"dense layers); got {v} for {name!r}")
    steps, every = check_int("steps", steps, minimum=1), check_int("every", every, minimum=1)
    if steps % every:
        raise ValueError(f"steps must be a multiple of every ({every}); got {steps}")
    b, k = check_int("batch", batch, minimum=1), len(names)
    x, z = network.data(b, samples, gen, device)
    ref = names.index(reference)
    base = network.critical_weights(b, depth, gen, device)
    layers = [_variant_layer(w, [variants[m] for m in names], gen) for w in base]
    ws, masks = [w for w, _ in layers], [m for _, m in layers]
    masks = masks if any(m is not None for m in masks) else None
    xs, zs = (a.repeat(k, *[1] * (a.dim() - 1)) for a in (x, z))

    diverged, rates = np.zeros(k * b, dtype=bool), []
    log_norm0 = network.model.log_norm(ws, xs[:, 0]).cpu().numpy()
    direction = [torch.randn(w[:b].shape, generator=gen, device=w.device, dtype=w.dtype) for w in ws]
    for chunk in range(steps // every):  # the first estimate from a random direction, each later one warm-started
        lam, direction = _power_iteration(partial(network.losses, x=x, z=z), [w[ref * b:(ref + 1) * b] for w in ws],
                                          direction, iters if chunk == 0 else refresh_iters)
        rate = (1.0 / lam).cpu().numpy()  # a reference network that diverged keeps a vanishing rate, never 0 or NaN
        rates.append(np.where(np.isfinite(rate) & (rate > 0), rate, np.finfo(np.float64).tiny))
        run = descend(network.model, ws, xs, zs, np.tile(rates[-1], k), every, record_every=every, record_norms=False,
                      masks=masks)
        ws, diverged = run.weights, diverged | run.diverged
    with torch.no_grad():
        right = network.outputs(ws, xs)[..., :10].argmax(-1) == zs.flatten(2)[..., :10].argmax(-1)
    accuracy = np.where(diverged, 0.1, right.to(torch.float64).mean(-1).cpu().numpy())
    split = lambda a: {m: a[i * b:(i + 1) * b] for i, m in enumerate(names)}  # noqa: E731
    return Trainability(split(accuracy), split(diverged), np.array(rates), split(log_norm0), split(run.loss[-1]))


def _variant_layer(w2: torch.Tensor, variants: list, gen):
    """One layer of every variant (concatenated along the batch) and its training mask (None if nothing is pruned):
    :class:`WeightVariant`.  Draws the shared shift only if a variant is correlated and one mask per sparsity."""
    shift = (torch.randn((w2.shape[0], 1, 1), generator=gen, device=w2.device, dtype=w2.dtype)
             if any(v.eta for v in variants) else None)
    by_sparsity = {}
    for v in variants:
        if v.pruning is not None and v.pruning.sparsity not in by_sparsity:
            by_sparsity[v.pruning.sparsity] = prune_mask(w2, v.pruning, gen)
    weights, masks = [], []
    for v in variants:
        w = w2 * math.sqrt(v.sigma2 / 2.0)
        if v.eta:
            w = correlated(w, v.eta, shift, v.sigma2)
        if v.pruning is not None:
            w = w * by_sparsity[v.pruning.sparsity] * v.pruning.scale
        weights.append(w)
        masks.append(by_sparsity[v.pruning.sparsity] if v.pruning is not None else None)
    if not by_sparsity:
        return torch.cat(weights), None
    return torch.cat(weights), torch.cat([torch.ones_like(w2) if m is None else m for m in masks])


def trainability_at_one_rate(depth: int, sigma2s, batch: int, samples: int, steps: int, gen, device="cpu", *,
                             reference: float = 2.0, every: int = 100, iters: int = 10, refresh_iters: int = 3,
                             network: DigitsNetwork = MLP_ON_DIGITS) -> Trainability:
    """Full App. G.5 (Fig. 15 left): :func:`trainability_of_variants` over σ² (keys: the σ² values), the networks of
    one index sharing their weights' directions (W = sqrt(σ²/2) W_2) with the rate of the ``reference`` σ² (claim
    critical-init, statement trainability)."""
    sigma2s = [check_real("sigma2s", s, low=0.0, low_open=True) for s in sigma2s]
    reference = check_real("reference", reference, low=0.0, low_open=True)
    if reference not in sigma2s:
        raise ValueError(f"reference must be one of sigma2s {sigma2s}; got {reference}")
    return trainability_of_variants(depth, {s: WeightVariant(sigma2=s) for s in sigma2s}, batch, samples, steps, gen,
                                    device, reference=reference, every=every, iters=iters, refresh_iters=refresh_iters,
                                    network=network)


@dataclass
class GateShift:
    """Gates D_l of the MLP at its training input, before and after GD (claim approx-trained-gates)."""

    open_before: np.ndarray  # (B,) fraction of open gates frac(D_l = 1) per network at init
    open_after: np.ndarray  # (B,) the same after training
    weight_change: float  # mean over layers and networks of ||W_l^t - W_l^0||_F / ||W_l^0||_F
    sample: tuple  # (W_l, D_l, W_{l+1}) after training, numpy (B, n, n), (B, n), (B, n, n): for the gate tests

    @property
    def shift(self) -> np.ndarray:
        """Per network: frac(D_l = 1) after training minus before (paired: the init's fluctuation cancels)."""
        return self.open_after - self.open_before


def gates_after_training(n: int, layer: int, batch: int, lr: float, steps: int, rng, device="cpu", *,
                         depth: int | None = None, eta: float = 0.0, shared_data: bool = True) -> GateShift:
    """Full Approx. 2 / App. G.2: ``batch`` MLPs of width n and depth ``depth`` (default ``layer + 1``; σ² = 2, weights
    ``W + eta w``),
    all trained by full-batch GD (loss of full §4) on one shared pair (x, z) for ``steps`` steps at ``lr``; the
    gates ``D_l = 1{Y_l > 0}`` at the training input x before and after (the input where Thm 2 evaluates J).
    ``shared_data=False`` draws one (x, z) per network, so that networks are iid and a mean over them has an honest
    standard error (with one shared pair, its draw moves every network's shift together)."""
    steps = check_int("steps", steps, minimum=1)
    depth = layer + 1 if depth is None else check_int("depth", depth, minimum=layer + 1)
    m = 1 if shared_data else batch  # one (x, z) for all networks (App. G's figures) or one per network (iid networks)
    x = torch.randn(m, 1, n, generator=rng, device=device, dtype=torch.float64).expand(batch, 1, n)
    z = torch.randn(m, 1, n, generator=rng, device=device, dtype=torch.float64).expand(batch, 1, n)
    ws = [sample_weights(batch, n, 2.0, rng, eta=eta, device=device) for _ in range(depth)]
    before = mlp_factors(ws, x[:, 0])[layer].gate
    run = train_mlp(ws, x, z, lr, steps, record_every=steps, record_norms=False)
    after = mlp_factors(run.weights, x[:, 0])[layer].gate
    change = relative_weight_change(run.weights, ws)
    w, w_next = run.weights[layer - 1], run.weights[layer]
    return GateShift(before.mean(-1).cpu().numpy(), after.mean(-1).cpu().numpy(), float(change.mean()),
                     (w.cpu().numpy(), after.cpu().numpy(), w_next.cpu().numpy()))
