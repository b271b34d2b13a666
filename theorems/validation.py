"""Input validation shared by every public entry point.

Each helper raises :class:`ValueError` naming the parameter and the allowed range *before* any
work is done, so a typo in a sweep fails at once with a message a researcher can act on.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_int",
    "check_real",
    "check_width",
    "check_depth",
    "check_sigma2",
    "check_keep_prob",
    "check_sparsity",
    "check_probability",
]


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in ``[minimum, maximum]``."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if _is_real(value) and math.isfinite(value) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be {allowed}; got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}; got {value}")
    return value


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is finite and inside the stated interval."""
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    allowed = f"a finite real number in {lo}, {hi}"
    if not _is_real(value):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}; got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {allowed}; got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {allowed}; got {value:g}")
    return value


def check_width(value, name: str = "width") -> int:
    """Network width n >= 1."""
    return check_int(name, value, minimum=1)


def check_depth(value, name: str = "depth") -> int:
    """Network depth L >= 1."""
    return check_int(name, value, minimum=1)


def check_sigma2(value, name: str = "sigma2") -> float:
    """Weight variance scale sigma2 > 0 (weights are N(0, sigma2 / n))."""
    return check_real(name, value, low=0.0, low_open=True)


def check_keep_prob(value, name: str = "keep_prob") -> float:
    """Gate keep probability p in (0, 1]."""
    return check_real(name, value, low=0.0, high=1.0, low_open=True)


def check_sparsity(value, name: str = "sparsity") -> float:
    """Pruning sparsity s in [0, 1) (fraction of weights removed)."""
    return check_real(name, value, low=0.0, high=1.0, high_open=True)


def check_probability(value, name: str) -> float:
    """A probability in (0, 1)."""
    return check_real(name, value, low=0.0, high=1.0, low_open=True, high_open=True)
