"""The ReLU ensembles' Jacobian factors are the Jacobian of the network they sample: the product of the factors
equals autograd's input-output Jacobian of the MLP ``Y_0 = x, Y_k = W_k relu(Y_{k-1})`` (full eq. (1)).  Exact
(float64 round-off), so it catches a gate taken from the wrong unit or the wrong layer, which the spectral checks
cannot see (a misplaced gate is still a fair coin, and the exponents' law does not change)."""

import pytest
import torch

from theorems.ensembles import Ensemble
from theorems.seeding import generator
from theorems.spectral import jacobian_product
from theorems.training import mlp_factors


def mlp(weights, x):
    """Y_L of one network for input x (n,): Y_0 = x, Y_k = W_k relu(Y_{k-1})."""
    y = x
    for w in weights:
        y = w @ torch.relu(y)
    return y


def autograd_jacobians(weights, x):
    return torch.stack([torch.func.jacrev(lambda v, b=b: mlp([w[b] for w in weights], v))(x)
                        for b in range(weights[0].shape[0])])


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_relu_ensemble_factors_are_the_autograd_jacobian(depth):
    n, batch = 12, 4
    x = torch.randn(n, generator=generator(depth, "cpu"), dtype=torch.float64)
    factors = list(Ensemble(n, depth, gates="relu", batch=batch, inputs=x).factors(generator(7, "cpu")))
    weights = [f.weight for f in factors]
    torch.testing.assert_close(jacobian_product(factors).dense(), autograd_jacobians(weights, x), rtol=1e-10, atol=1e-12)


def test_training_factors_are_the_autograd_jacobian():
    """:func:`theorems.training.mlp_factors` (the factors of a trained MLP at its reference input) likewise."""
    n, batch, depth = 12, 3, 4
    gen = generator(11, "cpu")
    weights = [torch.randn(batch, n, n, generator=gen, dtype=torch.float64) * (2 / n) ** 0.5 for _ in range(depth)]
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    product = jacobian_product(mlp_factors(weights, x.expand(batch, n))).dense()
    torch.testing.assert_close(product, autograd_jacobians(weights, x), rtol=1e-10, atol=1e-12)
