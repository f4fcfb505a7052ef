"""Per-image progress of a stage that writes one COCO JSON at the end, so ``--resume`` can continue it.

Finished images are appended as JSON lines to ``<out>.partial`` (one line per image: its id and its
output records) and flushed, so a crash or a preemption loses at most the image in flight. A resumed run
reads the file back, skips those ids, appends the rest (finished lines are never rewritten) and, once every
image is done, the final JSON is written atomically and the ``.partial`` file removed. The first line
records the stage, its settings and a fingerprint of each input (see :mod:`wsis_cli.io.fingerprint`):
resuming with other settings or a changed input is refused, because the output would silently mix two
configurations. With ``-o -`` (stdout), a
device or a FIFO the records are only kept in memory: there is no file to resume from.

Used as a context manager around the whole per-image loop and the final write::

    with ImageCheckpoint(out, "stage", identity, resume=resume) as ckpt:
        for image_id in ids:
            if image_id not in ckpt:
                ckpt.add(image_id, label(image_id))
        write_dataset(Dataset(images, ckpt.annotations(), ...), out)

Leaving the block by an exception keeps the ``.partial`` file for ``--resume``; leaving it normally (the
final output written) removes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, KeysView, Mapping
from pathlib import Path
from typing import Any, TextIO

from wsis_cli.io.atomic import check_output_path, is_stream, naming_disk_full, partial_name
from wsis_cli.io.fingerprint import check_unchanged, fingerprints
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger

log = get_logger("checkpoint")


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError
        return None


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ImageCheckpoint:
    """Append-only record of finished images: ``done``, ``add(image_id, records)``, ``records()``.

    ``inputs`` names the files the output is made from (``{"pseudo": path, ...}``, ``None`` and ``-``
    skipped): their fingerprints go into the header, and a resume refuses an input that changed since.
    """

    def __init__(self, out: str | os.PathLike, stage: str, settings: dict[str, Any], *, resume: bool,
                 inputs: Mapping[str, str | os.PathLike | None] | None = None) -> None:
        self.stage = stage
        self.settings = json.loads(json.dumps(settings, default=str))
        self._done: dict[int, list[dict[str, Any]]] = {}
        self._fh: TextIO | None = None
        if str(out) == "-" or is_stream(out):  # stdout, a device or a FIFO: memory only
            self.path = None
            return
        self.path = partial_name(check_output_path(out))
        self.inputs = fingerprints(inputs or {})
        if resume and self.path.is_file() and self._load():
            # append: finished work already on disk is never rewritten, so no crash can lose it
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            return
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._write({"stage": stage, "settings": self.settings, "inputs": self.inputs})

    def _load(self) -> bool:
        """Read the finished images back; False when the file holds none (empty or its header cut short).

        A last line cut short by a crash or a full disk is cut off the file (that image is done again);
        any other damage is refused with the line number.
        """
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end == 0:
            log.warning("%s holds no finished image (empty or cut short): starting afresh", self.path)
            return False
        lines = data[:end].split(b"\n")[:-1]
        head = _parse(lines[0])
        if not isinstance(head, dict) or "stage" not in head:
            raise BadInputError(self.path, "line 1", "is not the header of a wsis progress file; "
                                "delete the file to start afresh")
        if head.get("stage") != self.stage:
            raise BadInputError(self.path, None, f"written by stage {head.get('stage')!r}, expected {self.stage!r}")
        if head.get("settings") != self.settings:
            raise BadInputError(self.path, None, "--resume needs the same settings as the interrupted run "
                                "(delete the .partial file to start afresh)")
        check_unchanged(head.get("inputs"), self.inputs, self.path)
        for n, line in enumerate(lines[1:], start=2):
            rec = _parse(line)
            if not (isinstance(rec, dict) and isinstance(rec.get("records"), list) and is_int(rec.get("image_id"))):
                raise BadInputError(self.path, f"line {n}", "is damaged (not a finished image); "
                                    "delete the file to start afresh")
            self._done[rec["image_id"]] = rec["records"]
        if end < len(data):
            os.truncate(self.path, end)  # only the torn tail goes
        return True

    def _write(self, obj: Any) -> None:
        if self._fh is None:
            return
        with naming_disk_full(self.path):
            self._fh.write(json.dumps(obj) + "\n")
            self._fh.flush()

    @property
    def done(self) -> KeysView[int]:
        """The finished image ids: a live read-only view (no copy), cheap to test per image."""
        return self._done.keys()

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._done

    def add(self, image_id: int, records: list[dict[str, Any]]) -> None:
        self._done[int(image_id)] = records
        self._write({"image_id": int(image_id), "records": records})

    def records(self) -> Iterator[dict[str, Any]]:
        for rs in self._done.values():
            yield from rs

    def annotations(self) -> list[dict[str, Any]]:
        """Every finished image's records (this run's and a resumed run's), sorted by ``id``."""
        return sorted(self.records(), key=lambda r: r["id"])

    def close(self, *, completed: bool) -> None:
        """Close the file; a completed run removes it (its content is in the final output by now)."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        if completed and self.path is not None:
            Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> ImageCheckpoint:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(completed=exc_type is None)
