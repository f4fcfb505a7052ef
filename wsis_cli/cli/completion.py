"""wsis completion (being written)."""

from __future__ import annotations


def completion() -> None:
    """Not implemented yet."""
    raise NotImplementedError
