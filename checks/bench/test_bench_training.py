"""Benchmarks of the training kernels: run with ``pytest checks/bench --benchmark-only -n 0``.

Each benchmark times a number of full-batch GD steps of the suite's hand-written backward
(:func:`theorems.training.train_mlp`, :func:`theorems.convolution.train_cnn`, both through
:func:`theorems.training.descend`) and reports in ``extra_info`` the ratio of plain autograd GD on the same networks
(the loss summed over networks, ``torch.autograd.grad``, one update per layer), timed in the same run.
"""

import pytest
import torch

from bench_timing import best_time, synchronize as _sync
from theorems.convolution import cnn_losses, sample_conv_kernels, train_cnn
from theorems.ensembles import sample_weights
from theorems.seeding import generator
from theorems.training import mlp_losses, train_mlp

#: The trainability checks' shapes: the MLP's (60 networks of width 64, depth 16, 16 digits: the σ² check's 20
#: triples) and the CNN's (30 networks of 8 maps of 8x8, depth 12, 16 digits; the check trains 120).
SIZES = {"cpu": dict(mlp=(60, 64, 16, 16), cnn=(30, 8, 12, 16), steps=10),
         "cuda": dict(mlp=(1024, 64, 48, 256), cnn=(120, 8, 12, 16), steps=20)}


@pytest.fixture(scope="module")
def sizes(device):
    return SIZES["cuda" if device == "cuda" else "cpu"]


def autograd_gd(losses, params, x, z, lr, steps):
    """What a researcher would write: ``steps`` GD steps on autograd's gradient of the summed per-network losses."""
    ps = [p.clone().requires_grad_(True) for p in params]
    for _ in range(steps):
        grads = torch.autograd.grad(losses(ps, x, z).sum(), ps)
        with torch.no_grad():
            for p, g in zip(ps, grads):
                p -= lr * g
    return ps


def benchmark_against_autograd(benchmark, device, train, losses, params, x, z, lr, steps, **sizes):
    """Time ``steps`` steps of ``train`` (ours) with pytest-benchmark, after checking that it ends where plain autograd
    GD does, and record the ratio of autograd's best time (same run) in ``extra_info``."""
    ours = train(params, x, z, lr, steps, record_every=steps, record_norms=False).weights
    ref = autograd_gd(losses, params, x, z, lr, steps)
    assert all(torch.allclose(a, r, rtol=1e-10, atol=1e-13) for a, r in zip(ours, ref))
    naive = best_time(lambda: autograd_gd(losses, params, x, z, lr, steps), device, 3)
    benchmark(lambda: (train(params, x, z, lr, steps, record_every=steps, record_norms=False), _sync(device)))
    benchmark.extra_info.update(autograd_s=naive, autograd_over_ours=naive / benchmark.stats.stats.min, steps=steps,
                                **sizes)


def test_bench_mlp_gd_vs_autograd(benchmark, device, sizes):
    """Target: the fused hand-written step faster than autograd's (ratio > 1)."""
    b, n, depth, samples = sizes["mlp"]
    g = generator(5, device)
    ws = [sample_weights(b, n, 2.0, g, device=device) for _ in range(depth)]
    x, z = (torch.randn(b, samples, n, generator=g, device=device, dtype=torch.float64) for _ in range(2))
    benchmark_against_autograd(benchmark, device, train_mlp, mlp_losses, ws, x, z, 1e-3, sizes["steps"], B=b, n=n,
                               L=depth, samples=samples)


def test_bench_cnn_gd_vs_autograd(benchmark, device, sizes):
    """Target: the hand-written step (adjoint convolution, conv2d's weight gradient) faster than autograd's."""
    b, c, depth, samples = sizes["cnn"]
    g = generator(6, device)
    ks = [sample_conv_kernels(b, c, 3, 2.0, g, device=device) for _ in range(depth)]
    x, z = (torch.randn(b, samples, c, 8, 8, generator=g, device=device, dtype=torch.float64) for _ in range(2))
    benchmark_against_autograd(benchmark, device, train_cnn, cnn_losses, ks, x, z, 1e-2, sizes["steps"], B=b, maps=c,
                               L=depth, samples=samples)
