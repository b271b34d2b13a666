"""Run profiles: ``quick`` (default; the whole suite in minutes on a 2-core CPU) and ``full``
(the papers' sizes and beyond: width 256+, depth 100+, meant for a GPU)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Profile"]


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
        """The quick or the full value, by profile."""
        return full if self.full else quick
