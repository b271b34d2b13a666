"""Reference implementations for the library's tests: what a hand-written kernel must reproduce to rounding."""

from __future__ import annotations

import torch


def autograd_gradient_descent(params, losses, lr: torch.Tensor, steps: int, grad_masks=None):
    """Plain full-batch GD on autograd's gradient of ``losses(params).sum()`` (per-network losses, shape (B,)) with
    per-network rates ``lr`` (B,), each parameter's gradient multiplied by its mask in ``grad_masks`` (None: no mask):
    the reference that :func:`theorems.training.train_mlp` and :func:`theorems.convolution.train_cnn`, which
    backpropagate by hand, must reproduce.  Returns the losses before each step and after the last, (steps + 1, B),
    and the final parameters."""
    ps = [p.clone().requires_grad_(True) for p in params]
    masks = grad_masks or [None] * len(ps)
    history = []
    for t in range(steps + 1):
        loss = losses(ps)
        history.append(loss.detach())
        if t < steps:
            grads = torch.autograd.grad(loss.sum(), ps)
            with torch.no_grad():
                for p, g, m in zip(ps, grads, masks):
                    p -= lr.reshape(-1, *[1] * (p.dim() - 1)) * (g if m is None else g * m)
    return torch.stack(history), [p.detach() for p in ps]
