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

import numpy as np
import torch

from .ensembles import Factor
from .spectral import jacobian_product, log_spectral_norm
from .validation import check_int, check_real

__all__ = ["TrainingRun", "mlp_forward", "mlp_factors", "train_mlp", "train_masked_linear", "balance_defects"]


@dataclass
class TrainingRun:
    steps: np.ndarray  # recorded steps
    log_norm: np.ndarray  # (len(steps), B) log||J|| at the reference input
    loss: np.ndarray  # (len(steps), B)
    weights: list  # final weights, list of (B, n, n)


def mlp_forward(weights, x):
    """Pre-activations Y_0..Y_L for inputs x (B, N, n): Y_0 = x, Y_k = W_k relu(Y_{k-1})."""
    ys = [x]
    for w in weights:
        ys.append(torch.relu(ys[-1]) @ w.mT)
    return ys


def mlp_factors(weights, x0):
    """Jacobian factors (W_l, d_{l-1}) of dY_L/dY_0 at the reference input x0 (B, n)."""
    with torch.no_grad():
        ys = mlp_forward(weights, x0.unsqueeze(1))
        return [Factor(w, (y[:, 0] > 0).to(w.dtype)) for w, y in zip(weights, ys[:-1])]


def train_mlp(weights, x, z, lr: float, steps: int, *, record_every: int = 1, x_ref=None) -> TrainingRun:
    """Full-batch GD on hidden weights (list of (B, n, n)) for inputs x (B, N, n), targets z (B, N, n)."""
    lr = check_real("lr", lr, low=0.0, low_open=True)
    steps = check_int("steps", steps, minimum=0)
    n = x.shape[-1]
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    x_ref = x[:, 0] if x_ref is None else x_ref
    rec_steps, norms, losses = [], [], []
    for t in range(steps + 1):
        y = mlp_forward(ws, x)[-1]
        per_net = ((y - z) ** 2).sum(dim=(-2, -1)) / (2 * n * x.shape[1])
        if t % record_every == 0 or t == steps:
            rec_steps.append(t)
            losses.append(per_net.detach().cpu().numpy())
            norms.append(log_spectral_norm(jacobian_product(mlp_factors([w.detach() for w in ws], x_ref))).cpu().numpy())
        if t == steps:
            break
        grads = torch.autograd.grad(per_net.sum(), ws)
        with torch.no_grad():
            for w, g in zip(ws, grads):
                w -= lr * g
    return TrainingRun(np.array(rec_steps), np.array(norms), np.array(losses), [w.detach() for w in ws])


def _masked_product(ws, gates):
    j = ws[0]
    for w, d in zip(ws[1:], gates):
        j = w @ (d.unsqueeze(-1) * j)
    return j


def balance_defects(ws, gates):
    """``C_l = M_{l+1}^T M_{l+1} - M_l M_l^T`` for l = 1..L-1, with ``M_l = D_l W_l D_{l-1}`` (D_0 = D_L = I)."""
    L = len(ws)
    ones = torch.ones_like(ws[0][..., 0])
    ds = [ones] + list(gates) + [ones]
    ms = [ds[l + 1].unsqueeze(-1) * ws[l] * ds[l].unsqueeze(-2) for l in range(L)]
    return [ms[l + 1].mT @ ms[l + 1] - ms[l] @ ms[l].mT for l in range(L - 1)]


def train_masked_linear(weights, gates, x, y, lr: float, steps: int):
    """GD on a masked linear network; returns the final weights (list of (B, n, n))."""
    lr = check_real("lr", lr, low=0.0, low_open=True)
    steps = check_int("steps", steps, minimum=0)
    n = x.shape[-2]
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    for _ in range(steps):
        j = _masked_product(ws, gates)
        loss = ((j @ x - y) ** 2).sum() / (2 * n)
        grads = torch.autograd.grad(loss, ws)
        with torch.no_grad():
            for w, g in zip(ws, grads):
                w -= lr * g
    return [w.detach() for w in ws]
