"""The circular CNN in factor form (theorems.convolution): its layers are the convolutions they stand for, its factors
multiply to autograd's Jacobian, and He initialisation keeps a layer's mean-square gain at σ² exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checks.core.autograd_reference import autograd_gradient_descent
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


def test_cnn_gradient_descent_is_autograds():
    """:func:`theorems.convolution.train_cnn` backpropagates by hand (the adjoint convolution, conv2d's weight
    gradient on the wrapped maps): its kernels and losses are those of plain GD on autograd's gradient of
    :func:`theorems.convolution.cnn_losses` (per-network rates, several samples, a 3x3 window wrapping a 5x4 map),
    to rounding."""
    from theorems.convolution import cnn_losses, train_cnn
    gen = generator(33, "cpu")
    batch, c, h, w, depth, samples, steps = 3, 2, 5, 4, 4, 3, 10
    kernels = [sample_conv_kernels(batch, c, 3, 2.0, gen) for _ in range(depth)]
    x, z = (torch.randn(batch, samples, c, h, w, generator=gen, dtype=torch.float64) for _ in range(2))
    lr = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    run = train_cnn(kernels, x, z, lr, steps, record_every=1, record_norms=False)
    losses, ks = autograd_gradient_descent(kernels, lambda ks: cnn_losses(ks, x, z), lr, steps)
    np.testing.assert_allclose(run.loss, losses.numpy(), rtol=1e-12)
    assert (run.loss[-1] < 0.9 * run.loss[0]).all()  # each network trains
    for k, k_ref in zip(run.weights, ks):
        torch.testing.assert_close(k, k_ref, rtol=1e-12, atol=1e-14)


def test_a_diverging_cnn_is_flagged_frozen_and_leaves_the_others_alone():
    """As for the MLP (:func:`theorems.training.descend`): overflow is an unbounded change (+inf, never NaN, kernels
    frozen finite), and the network beside it trains exactly as it would alone; log||J|| is recorded at x_ref."""
    from theorems.convolution import cnn_log_norm, train_cnn
    gen = generator(34, "cpu")
    kernels = [sample_conv_kernels(2, 3, 3, 2.0, gen) for _ in range(5)]
    x, z = (torch.randn(2, 2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    run = train_cnn(kernels, x, z, torch.tensor([0.1, 1e200], dtype=torch.float64), 12, record_every=4)
    assert run.diverged.tolist() == [False, True]
    assert np.isposinf(run.log_norm[1:, 1]).all() and np.isposinf(run.loss[1:, 1]).all()
    assert not (np.isnan(run.log_norm).any() or np.isnan(run.loss).any())
    assert all(bool(torch.isfinite(k).all()) for k in run.weights)
    np.testing.assert_allclose(run.log_norm[0], cnn_log_norm(kernels, x[:, 0]).numpy(), rtol=1e-13)
    alone = train_cnn([k[:1] for k in kernels], x[:1], z[:1], 0.1, 12, record_every=4)
    np.testing.assert_allclose(run.log_norm[:, 0], alone.log_norm[:, 0], rtol=1e-13)
    np.testing.assert_allclose(run.loss[:, 0], alone.loss[:, 0], rtol=1e-13)
    assert run.loss[-1, 0] < 0.95 * run.loss[0, 0]  # it trains (a network with every gate closed would not)
    for k, k_alone in zip(run.weights, alone.weights):
        torch.testing.assert_close(k[:1], k_alone, rtol=1e-13, atol=1e-15)


def test_the_digits_cnn_sees_each_digit_in_its_first_map_and_takes_sigma2_variants_only():
    from theorems.convolution import CNNOnDigits
    from theorems.ensembles import Pruning
    from theorems.training import MLP_ON_DIGITS, WeightVariant, trainability_of_variants
    net = CNNOnDigits(channels=3)
    x, z = net.data(2, 5, generator(35, "cpu"), "cpu")
    pixels, onehot = MLP_ON_DIGITS.data(2, 5, generator(35, "cpu"), "cpu")  # the same draws
    assert x.shape == z.shape == (2, 5, 3, 8, 8)
    torch.testing.assert_close(x[:, :, 0].reshape(2, 5, 64), pixels, rtol=0, atol=0)
    assert not x[:, :, 1:].any()
    flat = z.flatten(2)
    assert torch.equal(flat[..., :10].argmax(-1), onehot[..., :10].argmax(-1)) and not flat[..., 10:].any()
    torch.testing.assert_close(flat.norm(dim=-1), torch.full((2, 5), (3 * 64 / 10) ** 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma2 only"):
        trainability_of_variants(2, {"critical": WeightVariant(), "pruned": WeightVariant(pruning=Pruning("random", 0.5))},
                                 2, 4, 100, generator(1, "cpu"), reference="critical", network=net)
    for bad in (dict(channels=0), dict(size=2)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CNNOnDigits(**bad)
