"""Full-batch gradient descent for batches of independent networks, recording log||J|| along training.

* :func:`train_mlp`: the MLP of full eq. (1) (``Y_0 = x``, ``Y_k = W_k relu(Y_{k-1})``) with the loss
  ``(2n)^-1 ||Y_L(x) - z||^2`` of full §4 (averaged over samples for the multi-sample variant), hidden
  weights ``W_1..W_L`` trained, B networks at once (the loss is summed over networks, so each network
  gets its own gradient).
* :func:`train_masked_linear`: Haas' masked linear network ``J = W_L D_{L-1} ... D_1 W_1`` with fixed
  gates, loss ``(2n)^-1 ||J X - Y||_F^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch

from .ensembles import Factor, sample_weights
from .predictions import balanced_singular_value_velocity
from .spectral import jacobian_product, log_spectral_norm
from .validation import check_int, check_real

__all__ = ["TrainingRun", "mlp_forward", "mlp_factors", "train_mlp", "train_masked_linear", "balance_defects",
           "regression_data", "stable_learning_rate", "masked_linear_loss", "trained_fixed_gates_network",
           "mlp_stable_learning_rate", "train_at_largest_stable_rate", "relative_weight_change", "GateShift", "gates_after_training",
           "balanced_masked_network", "gradient_flow_singular_value_velocity", "masked_linear_gd_path",
           "modewise_velocity_coefficients", "top_mode_velocity_laws"]


@dataclass
class TrainingRun:
    steps: np.ndarray  # recorded steps
    log_norm: np.ndarray  # (len(steps), B) log||J|| at the reference input; +inf once a network diverged
    loss: np.ndarray  # (len(steps), B); +inf once a network diverged
    weights: list  # final weights, list of (B, n, n) (a diverged network's: its last finite ones)
    diverged: np.ndarray  # (B,) the loss or a gradient overflowed: GD left every bounded set (an unbounded change)


def mlp_forward(weights, x):
    """Pre-activations Y_0..Y_L for inputs x (B, N, n): Y_0 = x, Y_k = W_k relu(Y_{k-1})."""
    ys = [x]
    for w in weights:
        ys.append(torch.relu(ys[-1]) @ w.mT)
    return ys


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


def train_mlp(weights, x, z, lr: float, steps: int, *, record_every: int = 1, x_ref=None) -> TrainingRun:
    """Full-batch GD on hidden weights (list of (B, n, n)) for inputs x (B, N, n), targets z (B, N, n);
    ``lr``: one learning rate, or one per network.

    A network whose loss or gradient overflows has diverged: it is frozen at its last finite weights, flagged in
    ``diverged``, and its log||J|| and loss are recorded as +inf from then on (an unbounded change, never NaN; claim
    training-stability reads it as such).  The others are unaffected (each network has its own gradient)."""
    steps = check_int("steps", steps, minimum=0)
    n = x.shape[-1]
    rates = _learning_rates(lr, weights[0].shape[0], weights[0])
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    x_ref = x[:, 0] if x_ref is None else x_ref
    diverged = torch.zeros(weights[0].shape[0], dtype=torch.bool, device=weights[0].device)
    rec_steps, norms, losses = [], [], []
    for t in range(steps + 1):
        y = mlp_forward(ws, x)[-1]
        per_net = ((y - z) ** 2).sum(dim=(-2, -1)) / (2 * n * x.shape[1])
        diverged |= ~torch.isfinite(per_net)
        if t % record_every == 0 or t == steps:
            rec_steps.append(t)
            losses.append(torch.where(diverged, math.inf, per_net.detach()).cpu().numpy())
            # renormalised at every layer: a network on its way to diverging has huge but finite weights
            log_norm = log_spectral_norm(jacobian_product(mlp_factors([w.detach() for w in ws], x_ref), renorm_every=1))
            norms.append(torch.where(diverged, math.inf, log_norm).cpu().numpy())
        if t == steps:
            break
        grads = torch.autograd.grad(per_net.sum(), ws)  # a diverged network's inf/NaN stays in its own slice
        with torch.no_grad():
            # a per-network sum is finite iff every entry is (or it overflows: a gradient near overflow is divergence)
            diverged |= ~torch.isfinite(torch.stack([g.sum(dim=(-2, -1)) for g in grads])).all(0)
            frozen = bool(diverged.any())
            for w, g in zip(ws, grads):
                if frozen:
                    g = torch.where(diverged[:, None, None], 0.0, g)
                w.addcmul_(rates, g, value=-1.0)
    return TrainingRun(np.array(rec_steps), np.array(norms), np.array(losses), [w.detach() for w in ws],
                       diverged.cpu().numpy())


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


def train_masked_linear(weights, gates, x, y, lr, steps: int):
    """GD on a masked linear network; returns the final weights (list of (B, n, n)).

    ``lr``: one learning rate, or one per network (e.g. from :func:`stable_learning_rate`)."""
    steps = check_int("steps", steps, minimum=0)
    rates = _learning_rates(lr, weights[0].shape[0], weights[0])
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    for _ in range(steps):
        grads = torch.autograd.grad(_masked_linear_losses(ws, gates, x, y).sum(), ws)
        with torch.no_grad():
            for w, g in zip(ws, grads):
                w -= rates * g
    return [w.detach() for w in ws]


def regression_data(kind: str, batch: int, samples: int, n: int, rng, device="cpu"):
    """Inputs x (B, N, n) and targets z (B, N, n).

    ``synthetic``: Gaussian inputs, targets a fixed random linear map of rank 4 (one map per network).
    ``digits``: scikit-learn's shipped 8x8 digits (64 pixels = the width, standardised), targets the one-hot
    class in the first 10 coordinates scaled to unit row norm times sqrt(n/10); a random subset per network.
    """
    if kind not in ("synthetic", "digits"):
        raise ValueError(f"kind must be 'synthetic' or 'digits'; got {kind!r}")
    batch = check_int("batch", batch, minimum=1)
    samples = check_int("samples", samples, minimum=1)
    n = check_int("n", n, minimum=1)
    if kind == "synthetic":
        x = torch.randn(batch, samples, n, generator=rng, device=device, dtype=torch.float64)
        a = torch.randn(batch, n, 4, generator=rng, device=device, dtype=torch.float64) @ \
            torch.randn(batch, 4, n, generator=rng, device=device, dtype=torch.float64) / n
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


def trained_fixed_gates_network(depth: int, batch: int, steps: int, samples: int, rng, device="cpu",
                                fraction: float = 0.9):
    """Haas' fixed-gates linear network (p = 1/2, σ² = 2, width 64) trained by full-batch GD on the shipped
    digits (:func:`regression_data`), each network at ``fraction`` of its own stability bound
    (:func:`stable_learning_rate`).  Returns ``(initial_factors, trained_factors, loss_ratio)``: Jacobian factors
    ``(W_1, None), (W_l, D_{l-1})`` before and after training, and the per-network final/initial loss."""
    from .ensembles import Ensemble

    n = 64
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
    run = train_mlp(ws, x, z, lr, steps, record_every=steps)
    after = mlp_factors(run.weights, x[:, 0])[layer].gate
    change = relative_weight_change(run.weights, ws)
    w, w_next = run.weights[layer - 1], run.weights[layer]
    return GateShift(before.mean(-1).cpu().numpy(), after.mean(-1).cpu().numpy(), float(change.mean()),
                     (w.cpu().numpy(), after.cpu().numpy(), w_next.cpu().numpy()))
