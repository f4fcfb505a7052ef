"""wsis merge (being written)."""

from __future__ import annotations


def merge() -> None:
    """Not implemented yet."""
    raise NotImplementedError
