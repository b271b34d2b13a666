"""Benchmarks of the spectral core (issue 8): run with ``pytest checks/bench --benchmark-only -n 0``.

Each benchmark reports, in ``extra_info``, the ratio to its reference measured in the same run: the
renormalised product against bare batched GEMMs of the same shapes (the floor), spectral-norm extraction
against forming the product, and the naive per-network autograd Jacobian against ours.
"""

import numpy as np
import pytest
import torch

from bench_timing import best_time as _time, synchronize as _sync
from theorems.ensembles import Ensemble, Pruning, prune_mask, sample_weights
from theorems.seeding import generator
from theorems.spectral import jacobian_product, krylov_log_spectral_norm, log_spectral_norm, lyapunov_qr, product_svd

SIZES = {"cpu": dict(B=8, n=256, L=10, big_n=1024, naive=(8, 128, 20)),
         "cuda": dict(B=32, n=1024, L=10, big_n=1024, naive=(32, 256, 50))}


@pytest.fixture(scope="module")
def sizes(device):
    return SIZES["cuda" if device == "cuda" else "cpu"]


@pytest.fixture(scope="module")
def layers(sizes, device):
    g = generator(0, device)
    e = Ensemble(sizes["n"], sizes["L"], batch=sizes["B"])
    return list(e.factors(g, device=device))


def bare_gemms(layers):
    p = layers[0].weight
    for f in layers[1:]:
        p = torch.matmul(f.weight, p)
    return p


def test_bench_product_vs_bare_gemm(benchmark, layers, device, sizes):
    """Target: the renormalised product within 1.3x of bare batched GEMMs of the same shapes."""
    floor = _time(lambda: bare_gemms(layers), device)
    benchmark(lambda: (jacobian_product(layers), _sync(device)))
    ours = benchmark.stats.stats.min
    benchmark.extra_info.update(sizes=sizes, floor_s=floor, ratio_to_gemm_floor=ours / floor)


def test_bench_spectral_norm_vs_product(benchmark, device, sizes):
    """Target: extracting ||J|| costs at most a quarter of forming the product (n = big_n, L = 10):
    block Krylov (verified against svdvals to 1e-6 in checks/core) vs the full SVD."""
    g = generator(1, device)
    layers = list(Ensemble(sizes["big_n"], 10, batch=2).factors(g, device=device))
    prod = jacobian_product(layers)
    form = _time(lambda: jacobian_product(layers), device, 3)
    svd = _time(lambda: log_spectral_norm(prod, method="svd"), device, 3)
    benchmark(lambda: (krylov_log_spectral_norm(prod, g), _sync(device)))
    ours = benchmark.stats.stats.min
    benchmark.extra_info.update(product_s=form, svd_s=svd, krylov_over_product=ours / form, svd_over_product=svd / form)


def test_bench_lyapunov_qr(benchmark, layers, device, sizes):
    """Top-16 Lyapunov exponents by QR, relative to the full product."""
    g = generator(2, device)
    floor = _time(lambda: bare_gemms(layers), device)
    benchmark(lambda: (lyapunov_qr(layers, 16, g), _sync(device)))
    benchmark.extra_info.update(ratio_to_full_product=benchmark.stats.stats.min / floor)


def test_bench_cholesky_qr2_vs_householder_lyapunov(benchmark, layers, device, sizes):
    """QR Lyapunov (k = 64) with CholeskyQR2 (the CUDA path) against torch.linalg.qr (Householder) on the same
    layers, measured in the same run (issue 15: batched Householder loops over the batch on CUDA)."""
    k = min(64, sizes["n"])
    g = generator(5, device)
    householder = _time(lambda: lyapunov_qr(layers, k, g, qr="householder"), device, 3)
    benchmark(lambda: (lyapunov_qr(layers, k, g, qr="cholesky2"), _sync(device)))
    benchmark.extra_info.update(k=k, householder_s=householder, cholesky2_over_householder=benchmark.stats.stats.min / householder)


def test_bench_product_svd_ritz_vs_plain_subspace_iteration(benchmark, device):
    """The product SVD (top 16 of n = 32, L = 128, 16 Gaussian networks: near ties s_j ≈ s_j+1 are common) to
    tol = 1e-6 with the Ritz rotations of near ties against plain subspace iteration (``ritz=False``), whose sweeps a
    near tie sets; both in the same run, with the sweeps each needed."""
    g = generator(6, device)
    factors = list(Ensemble(32, 128, sigma2=2.0, gates="none", batch=16).factors(g, device=device, jacobian_only=True))
    plain_sweeps = product_svd(factors, 16, generator(7, device), tol=1e-6, ritz=False).sweeps
    plain = _time(lambda: product_svd(factors, 16, generator(7, device), tol=1e-6, ritz=False), device, 2)
    benchmark(lambda: (product_svd(factors, 16, generator(7, device), tol=1e-6), _sync(device)))
    ritz_sweeps = product_svd(factors, 16, generator(7, device), tol=1e-6).sweeps
    benchmark.extra_info.update(plain_s=plain, ritz_over_plain=benchmark.stats.stats.min / plain,
                                sweeps_ritz=ritz_sweeps, sweeps_plain=plain_sweeps)


@pytest.mark.parametrize("kind", ["random", "magnitude"])
def test_bench_masks(benchmark, kind, device, sizes):
    """Mask generation per layer (magnitude: per-layer top-r selection by kthvalue)."""
    g = generator(3, device)
    w = sample_weights(sizes["B"], sizes["n"], 2.0, g, device=device)
    pr = Pruning(kind, 0.9)
    gemm = _time(lambda: torch.matmul(w, w), device)
    benchmark(lambda: (prune_mask(w, pr, g), _sync(device)))
    benchmark.extra_info.update(ratio_to_one_gemm=benchmark.stats.stats.min / gemm)


def naive_norms(ws, gates):
    """What a researcher would write: nn.Sequential per network, jacrev, matrix_norm(ord=2)."""
    out = []
    for b in range(ws[0].shape[0]):
        layers = []
        for w, d in zip(ws, gates):
            lin = torch.nn.Linear(w.shape[-1], w.shape[-1], bias=False, dtype=w.dtype, device=w.device)
            lin.weight.data = w[b]
            layers.append(_Gate(d[b]))
            layers.append(lin)
        net = torch.nn.Sequential(*layers)
        x = torch.zeros(w.shape[-1], dtype=w.dtype, device=w.device)
        jac = torch.func.jacrev(net)(x)
        out.append(torch.linalg.matrix_norm(jac, ord=2))
    return torch.stack(out)


class _Gate(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.d = d

    def forward(self, x):
        return self.d * x


def test_bench_ours_vs_naive_autograd(benchmark, device, sizes):
    """Target: at least 10x faster than per-network jacrev for 32 networks at n = 256, L = 50 (GPU sizes;
    CPU uses (B, n, L) = SIZES['cpu']['naive'])."""
    B, n, L = sizes["naive"]
    g = generator(4, device)
    factors = list(Ensemble(n, L, batch=B).factors(g, device=device))
    ws = [f.weight for f in factors]
    gates = [f.gate for f in factors]
    naive = _time(lambda: naive_norms(ws, gates), device, 1)
    ref = naive_norms(ws, gates)
    ours_val = torch.exp(log_spectral_norm(jacobian_product(factors)))
    assert torch.allclose(ours_val, ref, rtol=1e-8)
    benchmark(lambda: (log_spectral_norm(jacobian_product(factors)), _sync(device)))
    benchmark.extra_info.update(naive_s=naive, naive_over_ours=naive / benchmark.stats.stats.min, B=B, n=n, L=L)


def test_bench_numpy_reference(benchmark, layers, sizes):
    """numpy equivalent of the product (float64, same shapes) for reference."""
    arrs = [(f.weight.cpu().numpy(), f.gate.cpu().numpy()) for f in layers]

    def run():
        p = arrs[0][0] * arrs[0][1][:, None, :]
        for w, d in arrs[1:]:
            p = w @ (d[:, :, None] * p)
        return np.linalg.norm(p, ord=2, axis=(1, 2))

    benchmark(run)
