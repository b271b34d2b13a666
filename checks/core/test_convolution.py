"""The circular CNN in factor form (theorems.convolution): its layers are the convolutions they stand for, its factors
multiply to autograd's Jacobian, and He initialisation keeps a layer's mean-square gain at σ² exactly."""

from __future__ import annotations

import pytest
import torch

from theorems.convolution import circular_conv, circular_conv_matrix, cnn_factors, cnn_forward, sample_conv_kernels
from theorems.seeding import generator
from theorems.spectral import jacobian_product


def rolled_conv(kernel, x):
    """One network, one input: ``out[o, y, x] = sum_{i, a, b} K[o, i, a, b] x[i, y + a - p, x + b - p]`` (indices mod
    the map), written with ``torch.roll`` (independent of conv2d and its padding)."""
    c, _, k, _ = kernel.shape
    p = k // 2
    out = torch.zeros_like(x)
    for a in range(k):
        for b in range(k):
            shifted = torch.roll(x, shifts=(p - a, p - b), dims=(-2, -1))  # shifted[i, y, x] = x[i, y + a - p, ...]
            out += torch.einsum("oi,ihw->ohw", kernel[:, :, a, b], shifted)
    return out


@pytest.mark.parametrize("size,height,width", [(3, 5, 4), (1, 3, 3), (5, 4, 6)])
def test_circular_conv_is_the_wrapped_window_sum_and_its_matrix(size, height, width):
    gen = generator(31, "cpu")
    kernels = sample_conv_kernels(2, 3, size, 2.0, gen)
    x = torch.randn(2, 4, 3, height, width, generator=gen, dtype=torch.float64)
    out = circular_conv(kernels, x)
    for b in range(2):
        for m in range(4):
            torch.testing.assert_close(out[b, m], rolled_conv(kernels[b], x[b, m]), rtol=1e-12, atol=1e-13)
    matrix = circular_conv_matrix(kernels, height, width)
    assert matrix.shape == (2, 3 * height * width, 3 * height * width)
    torch.testing.assert_close((matrix @ x.reshape(2, 4, -1).mT).mT, out.reshape(2, 4, -1), rtol=1e-12, atol=1e-13)


def test_cnn_factors_are_the_autograd_jacobian():
    """The factor list (dense circular convolutions, gates of the pre-activations) multiplies to dY_L/dY_0."""
    gen = generator(32, "cpu")
    batch, c, h, w, depth = 2, 2, 4, 4, 4
    kernels = [sample_conv_kernels(batch, c, 3, 2.0, gen) for _ in range(depth)]
    x0 = torch.randn(batch, c, h, w, generator=gen, dtype=torch.float64)
    product = jacobian_product(cnn_factors(kernels, x0)).dense()
    for b in range(batch):
        def net(v, b=b):
            return cnn_forward([k[b:b + 1] for k in kernels], v.reshape(1, 1, c, h, w))[-1].reshape(-1)
        torch.testing.assert_close(product[b], torch.func.jacrev(net)(x0[b].reshape(-1)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size,height,width", [(3, 8, 8), (3, 2, 2), (5, 4, 3)])
def test_he_initialisation_keeps_the_mean_square_gain_at_sigma2(size, height, width):
    """``E[W^T W] = σ² I`` exactly: W = sum_j K_j A_j over kernel entries j (A_j the convolution by a unit kernel),
    so ``E[W^T W] = σ²/(c k²) sum_j A_j^T A_j``, computed here entry by entry (maps smaller than the window wrap onto
    themselves and still give σ² I)."""
    c, sigma2 = 2, 2.0
    entries = c * c * size * size
    units = torch.eye(entries, dtype=torch.float64).reshape(entries, c, c, size, size)
    a = circular_conv_matrix(units, height, width)  # (entries, N, N)
    second_moment = sigma2 / (c * size * size) * (a.mT @ a).sum(0)
    n = c * height * width
    torch.testing.assert_close(second_moment, sigma2 * torch.eye(n, dtype=torch.float64), rtol=1e-13, atol=1e-13)


def test_bad_kernel_parameters_fail_before_any_work():
    gen = generator(1, "cpu")
    with pytest.raises(ValueError, match="size must be an odd integer"):
        sample_conv_kernels(1, 2, 2, 2.0, gen)
    with pytest.raises(ValueError, match="sigma2"):
        sample_conv_kernels(1, 2, 3, 0.0, gen)
    with pytest.raises(ValueError, match="channels"):
        sample_conv_kernels(1, 0, 3, 2.0, gen)
