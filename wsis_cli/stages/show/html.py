"""The report's static pages as text: paged thumbnail indexes and one full view per image.

No server, no network, no framework: plain HTML with relative links, one stylesheet, images with their
sizes written in (no layout jumps) and ``loading="lazy"`` in the indexes, so a report of thousands of
images opens from the file system and only fetches the thumbnails in view. The only script is a few
lines on the view pages for arrow-key navigation. Every string that comes from the inputs is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

STYLE_NAME = "style.css"


@dataclass(frozen=True)
class Row:
    """One instance in a view page's table."""

    colour: str  # "#rrggbb"
    ann_id: str
    category: str
    score: str
    iou: str
    area: str


@dataclass(frozen=True)
class Panel:
    """One label set drawn on one image: files relative to the report root and what it shows."""

    title: str  # e.g. "prediction: masks.json"
    image: str  # full view PNG
    thumb: str  # thumbnail PNG
    size: tuple[int, int]  # (h, w) of the full view
    thumb_size: tuple[int, int]
    caption: str  # e.g. "12 instances, mean IoU 0.71"
    rows: tuple[Row, ...] = ()


@dataclass(frozen=True)
class Entry:
    """One image of the report, in report order."""

    image_id: int
    file_name: str
    width: int
    height: int
    score_text: str  # "" when nothing was measured
    panels: tuple[Panel, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Section:
    """One label set on a gallery page: its anchor, name, a line of numbers and its images."""

    anchor: str
    title: str
    caption: str
    entries: tuple[Entry, ...]


def index_name(page: int) -> str:
    """File name of index page ``page`` (1-based)."""
    return "index.html" if page == 1 else f"index-{page}.html"


def view_name(image_id: int) -> str:
    return f"view/{image_id}.html"


def _head(title: str, root: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<link rel=\"stylesheet\" href=\"{root}{STYLE_NAME}\">\n</head>\n"
    )


def _pager(page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    shown = sorted({1, pages, *range(max(1, page - 4), min(pages, page + 4) + 1)})
    parts = []
    if page > 1:
        parts.append(f"<a href=\"{index_name(page - 1)}\" rel=\"prev\">&lsaquo; previous</a>")
    last = 0
    for p in shown:
        if p - last > 1:
            parts.append("<span class=\"gap\">&hellip;</span>")
        parts.append(f"<b>{p}</b>" if p == page else f"<a href=\"{index_name(p)}\">{p}</a>")
        last = p
    if page < pages:
        parts.append(f"<a href=\"{index_name(page + 1)}\" rel=\"next\">next &rsaquo;</a>")
    return "<nav class=\"pager\">" + " ".join(parts) + "</nav>\n"


def index_page(title: str, summary: Sequence[str], legend: str, entries: Sequence[Entry], page: int,
               pages: int) -> str:
    """Index page ``page`` of ``pages``: the summary lines, a pager and a grid of thumbnail cards."""
    out = [_head(f"{title} ({page}/{pages})" if pages > 1 else title, "")]
    out.append(f"<body class=\"index\">\n<header>\n<h1>{escape(title)}</h1>\n")
    out.extend(f"<p class=\"summary\">{escape(line)}</p>\n" for line in summary)
    if legend:
        out.append(f"<p class=\"legend\">{escape(legend)}</p>\n")
    out.append("</header>\n")
    out.append(_pager(page, pages))
    out.append("<main class=\"grid\">\n")
    for e in entries:
        out.append(f"<a class=\"card\" href=\"{view_name(e.image_id)}\" id=\"img-{e.image_id}\">")
        out.append("<span class=\"thumbs\">")
        for p in e.panels:
            th, tw = p.thumb_size
            out.append(f"<img src=\"{escape(p.thumb)}\" width=\"{tw}\" height=\"{th}\" loading=\"lazy\" "
                       f"decoding=\"async\" alt=\"{escape(p.title)}\" title=\"{escape(p.title)}\">")
        out.append("</span>")
        name = escape(e.file_name)
        score = f" &middot; {escape(e.score_text)}" if e.score_text else ""
        counts = " / ".join(escape(p.caption.split(",")[0].replace(" instances", "").replace(" instance", ""))
                            for p in e.panels) + " instances"
        out.append(f"<span class=\"name\" title=\"{name}\">{name}</span>"
                   f"<span class=\"meta\">#{e.image_id}{score} &middot; {counts}</span></a>\n")
    out.append("</main>\n")
    out.append(_pager(page, pages))
    out.append("</body>\n</html>\n")
    return "".join(out)


def gallery_page(title: str, summary: Sequence[str], header: Sequence[str], rows: Sequence[Sequence[str]],
                 sections: Sequence[Section], legend: str, root: str) -> str:
    """A table of numbers (one row per label set, linked to its section) and a few images of every set.

    ``root`` is the asset folder's path relative to the page (``"report/"``); panel paths include it.
    """
    out = [_head(title, root)]
    out.append(f"<body class=\"gallery\">\n<header>\n<h1>{escape(title)}</h1>\n")
    out.extend(f"<p class=\"summary\">{escape(line)}</p>\n" for line in summary)
    out.append("</header>\n<table class=\"metrics\">\n<tr>")
    out.extend(f"<th>{escape(h)}</th>" for h in header)
    out.append("</tr>\n")
    for sec, cells in zip(sections, rows, strict=True):
        first = f"<a href=\"#{escape(sec.anchor)}\">{escape(cells[0])}</a>" if sec.entries else escape(cells[0])
        out.append(f"<tr><td>{first}</td>" + "".join(f"<td>{escape(c)}</td>" for c in cells[1:]) + "</tr>\n")
    out.append("</table>\n")
    if legend:
        out.append(f"<p class=\"legend\">{escape(legend)}</p>\n")
    for sec in sections:
        out.append(f"<section id=\"{escape(sec.anchor)}\">\n<h2>{escape(sec.title)}</h2>\n"
                   f"<p class=\"summary\">{escape(sec.caption)}</p>\n<div class=\"pairs\">\n")
        for e in sec.entries:
            score = f" &middot; {escape(e.score_text)}" if e.score_text else ""
            out.append(f"<figure class=\"pair\"><figcaption title=\"{escape(e.file_name)}\">#{e.image_id}{score}"
                       "</figcaption><span class=\"thumbs\">")
            for p in e.panels:
                th, tw = p.thumb_size
                tip = escape(f"{p.title} ({p.caption})")
                out.append(f"<a href=\"{escape(p.image)}\"><img src=\"{escape(p.thumb)}\" width=\"{tw}\" "
                           f"height=\"{th}\" alt=\"{escape(p.title)}\" title=\"{tip}\"></a>")
            out.append("</span></figure>\n")
        out.append("</div>\n</section>\n")
    out.append("</body>\n</html>\n")
    return "".join(out)


_KEYS = """<script>
document.addEventListener("keydown", function (ev) {
  if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
  var rel = {ArrowLeft: "prev", ArrowRight: "next", Escape: "index"}[ev.key];
  var link = rel && document.querySelector("a[data-key=" + rel + "]");
  if (link) window.location.href = link.href;
});
</script>
"""


def view_page(title: str, entry: Entry, position: int, total: int, index_page_name: str,
              prev_id: int | None, next_id: int | None, legend: str) -> str:
    """The full view of one image: every panel side by side at display size, with its instance table."""
    root = "../"
    out = [_head(f"{entry.file_name} - {title}", root)]
    out.append("<body class=\"view\">\n<nav class=\"top\">")
    out.append(f"<a href=\"{root}{index_page_name}#img-{entry.image_id}\" data-key=\"index\">&uarr; index</a> ")
    if prev_id is not None:
        out.append(f"<a href=\"{prev_id}.html\" rel=\"prev\" data-key=\"prev\">&lsaquo; previous</a> ")
    out.append(f"<span>{position} / {total}</span> ")
    if next_id is not None:
        out.append(f"<a href=\"{next_id}.html\" rel=\"next\" data-key=\"next\">next &rsaquo;</a>")
    out.append("</nav>\n")
    score = f" &middot; {escape(entry.score_text)}" if entry.score_text else ""
    out.append(f"<h1>{escape(entry.file_name)}</h1>\n<p class=\"summary\">image id {entry.image_id} &middot; "
               f"{entry.width}&times;{entry.height}{score}</p>\n")
    if legend:
        out.append(f"<p class=\"legend\">{escape(legend)}</p>\n")
    out.append("<main class=\"panels\">\n")
    for p in entry.panels:
        h, w = p.size
        out.append(f"<figure>\n<figcaption><b>{escape(p.title)}</b> &middot; {escape(p.caption)}</figcaption>\n")
        out.append(f"<a href=\"{root}{escape(p.image)}\"><img src=\"{root}{escape(p.image)}\" width=\"{w}\" "
                   f"height=\"{h}\" alt=\"{escape(p.title)}\"></a>\n")
        if p.rows:
            is_open = " open" if len(p.rows) <= 40 else ""
            plural = "s" if len(p.rows) != 1 else ""
            out.append(f"<details{is_open}><summary>{len(p.rows)} instance{plural}</summary>\n<table>\n"
                       "<tr><th></th><th>id</th><th>class</th><th>score</th><th>IoU</th><th>area</th></tr>\n")
            for r in p.rows:
                out.append(f"<tr><td><i style=\"background:{r.colour}\"></i></td><td>{escape(r.ann_id)}</td>"
                           f"<td>{escape(r.category)}</td><td>{escape(r.score)}</td><td>{escape(r.iou)}</td>"
                           f"<td>{escape(r.area)}</td></tr>\n")
            out.append("</table>\n</details>\n")
        out.append("</figure>\n")
    out.append("</main>\n")
    out.append(_KEYS)
    out.append("</body>\n</html>\n")
    return "".join(out)


STYLE = """:root { color-scheme: light dark; --bg: #f4f4f5; --fg: #18181b; --card: #fff; --muted: #52525b;
  --line: #d4d4d8; --link: #1d4ed8; }
@media (prefers-color-scheme: dark) { :root { --bg: #18181b; --fg: #e4e4e7; --card: #27272a; --muted: #a1a1aa;
  --line: #3f3f46; --link: #93c5fd; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 12px 16px; background: var(--bg); color: var(--fg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--link); text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 18px; margin: 4px 0; word-break: break-all; }
.summary, .legend { margin: 2px 0; color: var(--muted); }
.pager { margin: 10px 0; display: flex; flex-wrap: wrap; gap: 6px; align-items: baseline; }
.pager b, .pager a { padding: 1px 6px; border-radius: 4px; }
.pager b { background: var(--fg); color: var(--bg); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 10px; }
.card { display: flex; flex-direction: column; background: var(--card); border: 1px solid var(--line);
  border-radius: 6px; padding: 6px; color: var(--fg); min-width: 0; }
.card:hover { border-color: var(--link); text-decoration: none; }
.thumbs { display: flex; gap: 4px; justify-content: center; align-items: center; }
.thumbs img { max-width: 100%; height: auto; min-width: 0; flex: 1 1 0; object-fit: contain;
  image-rendering: auto; background: #000; }
.name { font-size: 12px; margin-top: 4px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.meta { font-size: 12px; color: var(--muted); }
nav.top { display: flex; gap: 14px; align-items: baseline; margin-bottom: 6px; }
.panels { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 10px; align-items: flex-start; }
figure { margin: 0; flex: 1 1 360px; max-width: max-content; min-width: 0; }
figcaption { margin-bottom: 4px; }
figure img { max-width: 100%; height: auto; display: block; background: #000; }
table { border-collapse: collapse; font-size: 12px; margin-top: 4px; }
td, th { padding: 1px 8px 1px 0; text-align: right; }
td:nth-child(3), th:nth-child(3) { text-align: left; }
td i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; }
summary { cursor: pointer; color: var(--muted); margin-top: 4px; }
table.metrics { font-size: 13px; margin: 8px 0; }
table.metrics td, table.metrics th { padding: 2px 12px 2px 0; text-align: right; border-bottom: 1px solid var(--line); }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
section h2 { font-size: 16px; margin: 18px 0 2px; }
.pairs { display: flex; flex-wrap: wrap; gap: 10px; }
.pair { flex: 0 1 auto; max-width: none; background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 4px 6px; }
.pair figcaption { font-size: 12px; color: var(--muted); margin-bottom: 2px; }
.pair .thumbs img { flex: none; display: block; }
"""
