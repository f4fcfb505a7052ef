"""JSON in and out, with ``-`` meaning stdin/stdout so COCO files can flow through pipes.

Only data goes to stdout; everything else (logs, progress, tables) goes to stderr.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsis_cli.io.atomic import atomic_write_text
from wsis_cli.runtime.errors import BadInputError, WsisError

STDIO = "-"


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large JSON tree is built or walked.

    Parsing allocates a container per record; every few hundred allocations the collector runs and, ever
    more often as the heap grows, walks every live container: about half of ``json.loads``' time on a
    COCO-train-sized file. Parsed JSON holds no reference cycles, so nothing is lost by waiting; the
    collector's previous state is restored on exit (nested uses are fine).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (or stdin for ``-``); malformed or missing input raises :class:`BadInputError`."""
    name = display_name(path)
    try:
        if str(path) == STDIO:
            text = sys.stdin.read()
        else:
            p = Path(path)
            if not p.is_file():
                raise BadInputError(name, None, "file not found" if not p.exists() else "not a file")
            text = p.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark (Windows tools) is fine
    except UnicodeDecodeError as e:
        raise BadInputError(name, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except PermissionError:
        raise BadInputError(name, None, "permission denied") from None
    text = text.removeprefix("\ufeff")
    if not text or text.isspace():  # (not strip(): that copies the whole text)
        raise BadInputError(name, None, "empty file, expected JSON")
    try:
        with gc_paused():
            return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(name, f"line {e.lineno} column {e.colno}", f"malformed JSON: {e.msg}") from None
    except RecursionError:
        raise BadInputError(name, None, "JSON nested too deeply (no COCO file nests more than a few levels)") from None


def write_json(obj: Any, path: str | os.PathLike, *, indent: int | None = None) -> None:
    """Write JSON to ``path`` atomically, or to stdout for ``-``.

    Encoded in one ``json.dumps``: ``json.dump`` streams through the pure-Python encoder, 3-4x slower on
    COCO-train-sized datasets; the price is one string the size of the file. No circular-reference check
    (10-15% of the encoding): what is written is a tree of records, and a cycle would still fail, as a
    RecursionError.
    """
    text = json.dumps(obj, indent=indent, check_circular=False)
    if str(path) == STDIO:
        if sys.stdout is None:  # started with fd 1 closed (`>&-`)
            raise WsisError("-o -: standard output is closed; nothing can be written to it")
        sys.stdout.write(text)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    with atomic_write_text(path) as fh:
        fh.write(text)
        fh.write("\n")
