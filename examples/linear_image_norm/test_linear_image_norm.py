"""A check written against the theorems plugin: arrange the ensemble, measure, compare (and reject near misses)."""

import math

import pytest
import torch
from scipy.special import digamma

from theorems.stats import compare, mean_estimate


def log_image_norm(n: int, depth: int, sigma2: float, batch: int, rng: torch.Generator, device: str) -> torch.Tensor:
    """log||W_L ... W_1 u|| for ``batch`` independent linear networks, W_l iid N(0, sigma2/n), |u| = 1."""
    x = torch.zeros(batch, n, 1, dtype=torch.float64, device=device)
    x[:, 0] = 1.0  # by rotation invariance any fixed unit u gives the same law
    log_norm = torch.zeros(batch, dtype=torch.float64, device=device)
    for _ in range(depth):
        w = torch.randn(batch, n, n, generator=rng, dtype=torch.float64, device=device) * math.sqrt(sigma2 / n)
        x = w @ x
        norm = x.norm(dim=(1, 2))
        log_norm += norm.log()
        x = x / norm[:, None, None]  # renormalise and carry the log scale
    return log_norm


def expected_log_image_norm(n: int, depth: int, sigma2: float) -> float:
    """(L/2) (log σ² + ψ(n/2) - log(n/2)): E log(χ²_n / n) = ψ(n/2) - log(n/2)."""
    return 0.5 * depth * (math.log(sigma2) + digamma(n / 2) - math.log(n / 2))


@pytest.mark.claim("linear-image-norm")
@pytest.mark.parametrize("n", [8, 32])
def test_log_image_norm_has_the_chi_square_mean(n, profile, rng, device, verdict):
    depth, sigma2, batch = 10, 2.0, profile.pick(10000, 100000)
    verdict.sizes.update(n=n, L=depth, sigma2=sigma2, B=batch)
    est = mean_estimate(log_image_norm(n, depth, sigma2, batch, rng, device).cpu().numpy())
    verdict.check(compare("E log||J u||", est, expected_log_image_norm(n, depth, sigma2)))
    verdict.reject(compare("E log||J u|| vs the infinite-width rate (L/2) log σ² (negative control)", est,
                           0.5 * depth * math.log(sigma2)))
    verdict.reject(compare("E log||J u|| vs σ² off by 2% (negative control)", est,
                           expected_log_image_norm(n, depth, 1.02 * sigma2)))
