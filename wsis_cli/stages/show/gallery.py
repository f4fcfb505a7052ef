"""One static page comparing several label sets of one dataset: a table of their numbers and, for each set,
the same few images drawn beside the ground truth (``wsis demo --out DIR`` writes ``DIR/report.html``).

Drawing, matching, colours and page markup are ``wsis show``'s (:mod:`.stage`, :mod:`.render`, :mod:`.html`):
each label set is scored and drawn exactly as ``wsis show LABELS --gt GT`` would draw it. The page sits
beside an asset folder (``report/``: stylesheet, full views, thumbnails) that appears whole or not at all;
the page itself is written last, atomically, and links only relative paths, so it opens from disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsis_cli.io import coco
from wsis_cli.io.atomic import atomic_write_text
from wsis_cli.io.report import ReportWriter, report_dir
from wsis_cli.stages.show import html
from wsis_cli.stages.show.settings import ShowJob, ShowSettings
from wsis_cli.stages.show.stage import _by_image, _draw, _LabelSet, _legend, _reference, _score

# thumbnails on the page (each links to its full view); weak labels' low-scoring detections would hide the rest
GALLERY_SETTINGS = ShowSettings(thumb_side=128, min_side=384, max_side=768, score_threshold=0.5, max_tags=12)


@dataclass(frozen=True)
class GalleryRow:
    """One label set: its name in the table, its file (COCO dataset or results list) and its table cells."""

    name: str
    labels: Path
    cells: tuple[str, ...]
    class_agnostic: bool = False  # match it to the ground truth whatever the classes


def write_gallery(page: Path, title: str, header: Sequence[str], rows: Sequence[GalleryRow], gt: Path,
                  images: Path, *, per_row: int = 4, settings: ShowSettings = GALLERY_SETTINGS) -> Path:
    """Write ``page`` (an HTML file) and its assets folder (``page`` without the suffix); return ``page``.

    Every row shows the same ``per_row`` images (the first image ids of ``gt``), so the label sets can be
    compared image for image; a row without a file (``labels`` missing) keeps its table line only.
    """
    base = coco.load_dataset(gt)
    chosen = sorted(base.images, key=lambda im: im["id"])[:per_row]
    ids = {im["id"] for im in base.images}
    names = {c["id"]: str(c.get("name", c["id"])) for c in base.categories}
    gt_set = _LabelSet("gt", "ground truth", gt.name, _by_image(base.annotations, ids, 0.0))
    assets = page.with_suffix("")
    sections: list[html.Section] = []
    with report_dir(assets, force=True) as writer:
        for k, row in enumerate(rows):
            anchor = f"row-{k + 1}"
            if not row.labels.is_file():
                sections.append(html.Section(anchor, row.name, "no labels to draw", ()))
                continue
            agnostic = row.class_agnostic or settings.class_agnostic
            labels = coco.load_predictions(row.labels, base, class_agnostic=agnostic)
            sets = [_LabelSet("labels", "labels", row.labels.name, _by_image(labels, ids, settings.score_threshold)),
                    gt_set]
            ref = _reference(sets)
            job = ShowJob(labels=str(row.labels), out=str(assets), images=str(images), gt=str(gt))
            sub = ReportWriter(writer.root / anchor)
            entries = []
            for im in chosen:
                entry, _ = _draw(_score(im, sets, ref, agnostic), sets, ref, names, settings, job, sub)
                panels = tuple(dataclasses.replace(p, image=f"{assets.name}/{anchor}/{p.image}",
                                                   thumb=f"{assets.name}/{anchor}/{p.thumb}") for p in entry.panels)
                entries.append(dataclasses.replace(entry, panels=panels))
            metrics = " · ".join(f"{h} {c}" for h, c in zip(header[1:], row.cells[1:], strict=False) if c)
            sections.append(html.Section(anchor, row.name, metrics + (" · class-agnostic" if agnostic else ""),
                                         tuple(entries)))
        writer.text(html.STYLE_NAME, html.STYLE)
    legend = (_legend([gt_set], {"gt": "labels"}, settings.match_iou)
              + f" Labels scoring under {settings.score_threshold:g} are neither drawn nor measured here (the table counts "
              "them). Click an image for its full view.")
    text = html.gallery_page(title, [f"{len(chosen)} of {len(base.images)} images ({gt.name}), the same in every "
                                     "row; each label set on the left, the ground truth on the right"],
                             header, [r.cells for r in rows], sections, legend, f"{assets.name}/")
    with atomic_write_text(page) as fh:
        fh.write(text)
    return page
