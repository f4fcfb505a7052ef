"""Settings and job of ``wsis show``: torch-free, validated, one field per command-line option.

``ShowSettings`` holds what changes the report's content (which images, in which order, how they are
drawn); ``ShowJob`` holds where the inputs and the output are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from wsis_cli.runtime.errors import UsageError

SortKey = Literal["auto", "id", "file", "worst", "best", "instances"]
SORT_KEYS: tuple[str, ...] = ("auto", "id", "file", "worst", "best", "instances")
ImageFormat = Literal["auto", "png", "jpg"]
IMAGE_FORMATS: tuple[str, ...] = ("auto", "png", "jpg")
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")


@dataclass(frozen=True)
class ShowSettings:
    """What the report shows.

    ``sort="auto"`` is ``worst`` when there is something to measure against (``--gt`` or ``--compare``),
    else ``id``. ``ids`` keeps only those image ids (applied after the shard); ``limit`` keeps the first N
    after sorting. Full views are drawn with their long side scaled into ``[min_side, max_side]`` pixels
    (small images are enlarged so that labels stay legible), thumbnails with their long side at
    ``thumb_side``. Predictions scoring under ``score_threshold`` are left out; ``match_iou`` is the IoU at
    which a prediction counts as finding a reference instance (it then takes that instance's colour).
    Tags (class, score, IoU) are written only on panels of at most ``max_tags`` instances: on crowded images
    (nuclei, cells) they would hide what they label; the view page's table still lists every instance.
    ``image_format`` is the full views' file type: ``png`` keeps mask edges crisp, ``jpg`` makes views of
    photos several times smaller, ``auto`` picks ``jpg`` for an image whose own file is a JPEG and ``png``
    otherwise. Thumbnails stay PNG.
    """

    sort: SortKey = "auto"
    limit: int | None = None
    ids: tuple[int, ...] | None = None
    page_size: int = 100
    thumb_side: int = 192
    min_side: int = 512
    max_side: int = 1024
    score_threshold: float = 0.0
    match_iou: float = 0.5
    class_agnostic: bool = False
    alpha: float = 0.45
    boxes: bool = True
    labels: bool = True
    max_tags: int = 40
    title: str | None = None
    image_format: ImageFormat = "auto"

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {self.sort!r}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.ids is not None and not self.ids:
            raise UsageError("--ids needs at least one image id")
        if self.page_size < 1:
            raise UsageError(f"--page-size must be at least 1, got {self.page_size}")
        if not 16 <= self.thumb_side <= 1024:
            raise UsageError(f"--thumb-side must be within 16..1024, got {self.thumb_side}")
        if not 16 <= self.min_side <= self.max_side <= 8192:
            raise UsageError(f"need 16 <= --min-side <= --max-side <= 8192, got {self.min_side}, {self.max_side}")
        if not 0.0 <= self.match_iou <= 1.0:
            raise UsageError(f"--match-iou must be within 0..1, got {self.match_iou}")
        if self.max_tags < 0:
            raise UsageError(f"--max-tags must be at least 0, got {self.max_tags}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be within 0..1, got {self.alpha}")
        if self.image_format not in IMAGE_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")

    def view_suffix(self, file_name: str) -> str:
        """``"png"`` or ``"jpg"``: the file type of the full view of the image stored as ``file_name``."""
        if self.image_format != "auto":
            return self.image_format
        return "jpg" if file_name.lower().endswith(JPEG_SUFFIXES) else "png"

    def resolved_sort(self, has_reference: bool) -> str:
        if self.sort != "auto":
            return self.sort
        return "worst" if has_reference else "id"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ids"] = None if self.ids is None else list(self.ids)
        return out


@dataclass(frozen=True)
class ShowJob:
    """Where ``run`` reads and writes. ``labels``, ``gt`` and ``compare`` may be ``-`` (stdin; one of them)."""

    labels: str
    out: str
    images: str | None = None
    gt: str | None = None
    compare: str | None = None
    shard: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        stdin = [name for name in (self.labels, self.gt, self.compare) if name == "-"]
        if len(stdin) > 1:
            raise UsageError("only one of LABELS, --gt and --compare can read stdin (-)")
        if self.out == "-":
            raise UsageError("the report is a folder; -o - (stdout) is not possible")


def parse_ids(text: str) -> tuple[int, ...]:
    """``"3,7,10-12"`` -> ``(3, 7, 10, 11, 12)``; raises :class:`UsageError` on anything else."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep and lo:
                a, b = int(lo), int(hi)
                if b < a or b - a > 10_000_000:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UsageError(f"--ids: expected image ids such as 3,7,10-12, got {part!r}") from None
    if not out:
        raise UsageError("--ids needs at least one image id")
    return tuple(dict.fromkeys(out))
