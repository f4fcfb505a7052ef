"""wsis evaluate (being written)."""

from __future__ import annotations


def eval_cmd() -> None:
    """Not implemented yet."""
    raise NotImplementedError
