"""Rich tables of evaluation reports, always on stderr (stdout is for data only).

``render_eval`` shows one report (``wsis eval``); ``render_comparison`` shows several methods as rows of
one table (``wsis demo``). Values are printed ×100 with one decimal, as papers quote COCO AP; missing
values (no ground truth in a size range, masks not evaluated) show as "–".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from wsis_cli.stages.evaluate.stage import EvalReport

DASH = "–"

# (row label, stat key template); {n} is the max-dets N
_STAT_ROWS = (
    ("AP @[.50:.95]", "AP"),
    ("AP50", "AP50"),
    ("AP75", "AP75"),
    ("AP small", "APs"),
    ("AP medium", "APm"),
    ("AP large", "APl"),
    ("AR@1", "AR1"),
    ("AR@10", "AR10"),
    ("AR@{n}", "AR{n}"),
    ("AR small", "ARs"),
    ("AR medium", "ARm"),
    ("AR large", "ARl"),
)


def pct(v: float | None) -> str:
    """A 0–1 value as percent points with one decimal ("–" when missing)."""
    return DASH if v is None else f"{100.0 * v:.1f}"


def stderr_console() -> Console:
    return Console(stderr=True)


def eval_tables(report: EvalReport) -> list[Table]:
    """The tables of one report: the COCO summary, then per category (when there is more than one row)."""
    n = report.settings.max_dets
    types = report.iou_types
    col = {"segm": "mask", "bbox": "box"}
    s = report.settings
    summary = Table(title="COCO evaluation (×100)", title_justify="left")
    summary.add_column("metric")
    for t in types:
        summary.add_column(col[t], justify="right")
    for label, key in _STAT_ROWS:
        k = key.format(n=n)
        summary.add_row(label.format(n=n), *(pct(report.coco[t].stats[k]) for t in types))
    if "segm" in types:
        summary.add_section()
        summary.add_row("mean mask IoU", pct(report.mean_iou), *([""] * (len(types) - 1)))
    if report.retention is not None:
        ref = s.reference_fraction
        label = f"retention vs {pct(ref)} {col[report.retention_iou_type]} AP"
        cells = [f"{100 * report.retention:.1f}%" if t == report.retention_iou_type else "" for t in types]
        summary.add_row(label, *cells)
    tables = [summary]

    per_cat = _per_category_table(report)
    if per_cat is not None:
        tables.append(per_cat)
    return tables


def _per_category_table(report: EvalReport) -> Table | None:
    ap_types = () if report.settings.class_agnostic else report.iou_types
    ap = {t: {c["id"]: c for c in report.coco[t].per_category} for t in ap_types}
    ious = {c.id: c for c in report.mean_iou_per_category}
    cat_ids = list(ious) or [c["id"] for t in ap_types for c in report.coco[t].per_category]
    cat_ids = list(dict.fromkeys(cat_ids))
    if len(cat_ids) < 2:
        return None
    table = Table(title="Per category (×100)", title_justify="left")
    table.add_column("category")
    if ious:
        table.add_column("instances", justify="right")
        table.add_column("mean IoU", justify="right")
    for t in ap_types:
        name = {"segm": "mask", "bbox": "box"}[t]
        table.add_column(f"{name} AP", justify="right")
        table.add_column(f"{name} AP50", justify="right")
    for cid in cat_ids:
        name = ious[cid].name if cid in ious else next(
            (ap[t][cid]["name"] for t in ap_types if cid in ap[t]), str(cid))
        cells = [f"{name} ({cid})"]
        if ious:
            cells += [str(ious[cid].instances), pct(ious[cid].mean_iou)] if cid in ious else [DASH, DASH]
        for t in ap_types:
            row = ap[t].get(cid, {})
            cells += [pct(row.get("AP")), pct(row.get("AP50"))]
        table.add_row(*cells)
    return table


def eval_summary_line(report: EvalReport) -> str:
    """Counts and settings in one line (kept out of the tables, whose width follows their columns)."""
    c, s = report.counts, report.settings
    flags = [f"maxDets {s.max_dets}", f"backend {s.backend}"] + (["class-agnostic"] if s.class_agnostic else [])
    crowd = f" (+{c['gt_crowd']} crowd)" if c.get("gt_crowd") else ""
    return (f"{c['images']} images, {c['gt_instances']} GT instances{crowd}, {c['predictions']} predictions "
            f"on {c['images_with_predictions']} images; {', '.join(flags)}")


def render_eval(report: EvalReport, console: Console | None = None) -> None:
    """Print one evaluation report as Rich tables on stderr (or on ``console``)."""
    console = console or stderr_console()
    for table in eval_tables(report):
        console.print(table)
    console.print(eval_summary_line(report), style="dim", highlight=False, soft_wrap=True)


def comparison_cells(rows: list[tuple[str, EvalReport]]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows of cells)``: mask AP, AP50, AP75, box AP, mean IoU (x100), retention where a reference is set."""
    header = ["method", "mask AP", "AP50", "AP75", "box AP", "mean IoU"]
    with_retention = any(r.retention is not None for _, r in rows)
    if with_retention:
        header.append("retention")
    body = []
    for method, r in rows:
        segm = r.coco.get("segm")
        cells = [
            method,
            pct(segm.stats["AP"] if segm else None),
            pct(segm.stats["AP50"] if segm else None),
            pct(segm.stats["AP75"] if segm else None),
            pct(r.box_ap),
            pct(r.mean_iou),
        ]
        if with_retention:
            cells.append(DASH if r.retention is None else f"{100 * r.retention:.1f}%")
        body.append(cells)
    return header, body


def comparison_table(rows: list[tuple[str, EvalReport]], title: str) -> Table:
    """One row per method: mask AP, AP50, AP75, box AP, mean IoU, and retention where a reference is set."""
    header, body = comparison_cells(rows)
    table = Table(title=f"{title} (×100)", title_justify="left")
    table.add_column(header[0])
    for name in header[1:]:
        table.add_column(name, justify="right")
    for cells in body:
        table.add_row(*cells)
    return table


def comparison_markdown(rows: list[tuple[str, EvalReport]], title: str) -> str:
    """The same table in GitHub Markdown, for the README (``wsis demo --markdown``)."""
    header, body = comparison_cells(rows)
    lines = [f"{title} (×100)", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def render_comparison(rows: list[tuple[str, EvalReport]], title: str, console: Console | None = None) -> None:
    """Print several methods' reports as rows of one table on stderr (used by ``wsis demo``)."""
    (console or stderr_console()).print(comparison_table(rows, title))
