"""Run profiles: ``quick`` (default; the whole suite in minutes on a 2-core CPU) and ``full``
(the papers' sizes and beyond: width 256+, depth 100+, meant for a GPU)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Profile", "Sizes", "Window", "WidthSweep", "TrainabilitySizes", "product_flops", "training_flops",
           "conv_training_flops", "CONV_SLOWDOWN", "SAMPLE_FLOPS",
           "ACHIEVED_FRACTION", "gemm_rate"]


@dataclass(frozen=True)
class Profile:
    name: str

    def __post_init__(self):
        if self.name not in ("quick", "full"):
            raise ValueError(f"profile must be 'quick' or 'full'; got {self.name!r}")

    @property
    def full(self) -> bool:
        return self.name == "full"

    def pick(self, quick, full):
        """The quick or the full value, by profile (``profile.pick(*TABLE)`` for a :class:`Sizes` table)."""
        return full if self.full else quick


class Sizes(NamedTuple):
    """A family's size table: its quick row and its full row, each a NamedTuple naming its fields (or a list of such
    rows for ``@pytest.mark.parametrize_by_profile``).  ``TABLE.of(profile)`` is the run's row."""

    quick: Any
    full: Any

    def of(self, profile: Profile | str) -> Any:
        return getattr(self, profile.name if isinstance(profile, Profile) else Profile(profile).name)


class Window(NamedTuple):
    """The depth window of per-layer slope checks: width n, depths L1 < L2, networks B."""

    n: int
    l1: int
    l2: int
    batch: int


class WidthSweep(NamedTuple):
    """A sweep over widths: the widths, networks per ensemble, and the depth window L1 < L2 of the slopes."""

    widths: tuple
    batch: Any
    l1: int
    l2: int


class TrainabilitySizes(NamedTuple):
    """A trainability comparison (full App. G.4-G.5): the depth where the variants are compared, the shallow depth of
    the negative controls (where every variant trains), networks per variant, training digits per network, GD steps."""

    depth: int
    shallow: int
    batch: int
    samples: int
    steps: int


# --- cost model (the CPU time estimate of ``--profile full``, conftest.py) -----------------------------------------
# Each check module states the float64 work of its dominant kernels at a profile's sizes (its ``work(profile)``,
# computed from its own size tables) with these two counts; an order-of-magnitude model, not a benchmark.

#: Cost of drawing one Gaussian weight, in flops (measured order: torch.randn float64 ~ 20 GEMM flops per draw).
SAMPLE_FLOPS = 20


def product_flops(batch: int, depth: int, width: int, columns: int | None = None) -> float:
    """Float64 work of B products of ``depth`` n x n layers applied to ``columns`` vectors (default: the whole
    product, n columns), weights drawn included."""
    cols = width if columns is None else columns
    return float(batch) * depth * width**2 * (2 * cols + SAMPLE_FLOPS)


def training_flops(batch: int, depth: int, width: int, samples: int, steps: int) -> float:
    """Float64 work of full-batch GD on B networks: forward and backward, about 6 n^2 per sample, layer and step."""
    return 6.0 * batch * depth * width**2 * samples * steps


#: Grouped float64 ``conv2d`` (the CNN's layers, :mod:`theorems.convolution`) runs about 8x below the GEMM rate on
#: the CPU (measured: ~4 GFLOP/s per thread for 30 networks of 4 maps of 8 x 8, against ~38 for GEMMs): its work is
#: counted in GEMM-equivalent flops.
CONV_SLOWDOWN = 8.0


def conv_training_flops(batch: int, depth: int, channels: int, pixels: int, size: int, samples: int,
                        steps: int) -> float:
    """GEMM-equivalent work of full-batch GD on B circular CNNs (forward, the adjoint convolution, the kernel
    gradient: 6 c² k² flops per pixel, sample, layer and step, times :data:`CONV_SLOWDOWN`)."""
    return CONV_SLOWDOWN * 6.0 * batch * depth * channels**2 * size**2 * pixels * samples * steps


#: The fraction of the machine's float64 GEMM rate (:func:`gemm_rate`, all cores) that the suite achieves on the work
#: its cost model counts: measured on the 2-core CPU, the quick profile's checks/claims (6.1e12 modelled flops) take
#: about 380 s with -n 2 against a probe rate of about 76 GFLOP/s (38 per thread): 0.2.  Small matrices, QR, SVD,
#: sampling and Python overhead make up the rest.
ACHIEVED_FRACTION = 0.2


def gemm_rate(width: int = 512, repeats: int = 4) -> float:
    """This machine's float64 matrix-product rate (flop/s) on the CPU with torch's current threads: the best of five
    timings of ``repeats`` n x n products (about 0.1 s)."""
    import time

    import torch

    a = torch.randn(width, width, dtype=torch.float64)
    b = torch.randn(width, width, dtype=torch.float64)
    a @ b
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return repeats * 2 * width**3 / best
