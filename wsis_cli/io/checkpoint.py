"""Per-image progress of a stage that writes one COCO JSON at the end, so ``--resume`` can continue it.

Finished images are appended as JSON lines to ``<out>.partial`` (one line per image: its id and its
output records) and flushed, so a crash or a preemption loses at most the image in flight. A resumed run
reads the file back, skips those ids and, once every image is done, the final JSON is written atomically
and the ``.partial`` file removed. The first line records the stage and its settings: resuming with other
settings is refused, because the output would silently mix two configurations. With ``-o -`` (stdout), a
device or a FIFO the records are only kept in memory: there is no file to resume from.

Used as a context manager around the whole per-image loop and the final write::

    with ImageCheckpoint(out, "stage", identity, resume=resume) as ckpt:
        for image_id in ids:
            if image_id not in ckpt.done:
                ckpt.add(image_id, label(image_id))
        write_dataset(Dataset(images, ckpt.annotations(), ...), out)

Leaving the block by an exception keeps the ``.partial`` file for ``--resume``; leaving it normally (the
final output written) removes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from wsis_cli.io.atomic import check_output_path, is_stream, partial_name
from wsis_cli.runtime.errors import BadInputError


class ImageCheckpoint:
    """Append-only record of finished images: ``done``, ``add(image_id, records)``, ``records()``."""

    def __init__(self, out: str | os.PathLike, stage: str, settings: dict[str, Any], *, resume: bool) -> None:
        self.stage = stage
        self.settings = json.loads(json.dumps(settings, default=str))
        self._done: dict[int, list[dict[str, Any]]] = {}
        self._fh: TextIO | None = None
        if str(out) == "-" or is_stream(out):  # stdout, a device or a FIFO: memory only
            self.path = None
            return
        self.path = partial_name(check_output_path(out))
        if resume and self.path.is_file():
            self._load()
        # (re)write the file whole: a line cut short by a crash must not glue onto the next one
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._write({"stage": stage, "settings": self.settings})
        for image_id, records in self._done.items():
            self._write({"image_id": image_id, "records": records})

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if head.get("stage") != self.stage:
            raise BadInputError(self.path, None, f"written by stage {head.get('stage')!r}, expected {self.stage!r}")
        if head.get("settings") != self.settings:
            raise BadInputError(self.path, None, "--resume needs the same settings as the interrupted run "
                                "(delete the .partial file to start afresh)")
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by the crash: that image is simply done again
            self._done[int(rec["image_id"])] = rec["records"]

    def _write(self, obj: Any) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(obj) + "\n")
        self._fh.flush()

    @property
    def done(self) -> set[int]:
        return set(self._done)

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
