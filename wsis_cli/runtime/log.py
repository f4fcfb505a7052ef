"""Logging to stderr with a verbosity switch; data never goes through here."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "wsis"


def configure(quiet: bool = False, verbose: bool = False) -> logging.Logger:
    """Route ``wsis`` logs to stderr: warnings only with ``quiet``, debug with ``verbose``."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wsis: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")
