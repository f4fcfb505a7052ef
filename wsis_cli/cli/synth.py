"""wsis synth (being written)."""

from __future__ import annotations


def synth() -> None:
    """Not implemented yet."""
    raise NotImplementedError
