"""Per-test seeds derived from one master seed and the test's node id (after JAX's test util).

The seed depends only on (master seed, node id), never on test order, ``-n`` or which xdist
worker runs the test, so the same master seed reproduces the same numbers everywhere.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed", "generator", "canonical_nodeid"]


def canonical_nodeid(nodeid: str) -> str:
    """The node id without the ``@group`` suffix pytest-xdist's ``--dist loadgroup`` appends on workers
    (the same rule as xdist's scheduler: an ``@`` after the last ``]``), so that seeds and report keys are
    the same with and without ``-n``."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > nodeid.rfind("]") else nodeid


def derive_seed(master: int, name: str) -> int:
    """A 63-bit seed from the master seed and a name (the pytest node id)."""
    digest = hashlib.sha256(f"{int(master)}::{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, device="cpu") -> "torch.Generator":  # noqa: F821  (torch is imported on first use)
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
