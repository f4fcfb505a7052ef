"""``wsis show``'s stage: selection and order, matching, drawing, pages, and the all-or-nothing folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from wsis_cli.io import coco
from wsis_cli.io import rle as rle_utils
from wsis_cli.io.images import read_image
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.stages.baselines.degrade import degrade_dataset
from wsis_cli.stages.show import ShowJob, ShowSettings, parse_ids
from wsis_cli.stages.show import html as pages
from wsis_cli.stages.show.match import agreement, match, mean_iou_vs_reference
from wsis_cli.stages.show.render import Instance, display_size, palette, render, thumb_size
from wsis_cli.stages.show.stage import run
from wsis_cli.stages.synth.stage import SynthJob, SynthSettings
from wsis_cli.stages.synth.stage import run as synth


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six synthetic 96x96 images, their ground truth and damaged labels with one instance in four dropped."""
    d = tmp_path_factory.mktemp("show") / "d"
    synth(SynthSettings(num_images=6, height=96, width=96, seed=3), SynthJob(d))
    gt = coco.load_dataset(d / "gt.json")
    noisy = degrade_dataset(gt, "dilate", radius=2)
    anns = [dict(a, score=0.5 + (a["id"] % 5) / 10) for a in noisy.annotations if a["id"] % 4]
    coco.write_dataset(noisy.with_annotations(anns), d / "pred.json")
    (d / "results.json").write_text(json.dumps([{k: v for k, v in a.items() if k != "id"} for a in anns]))
    return d


def _job(d: Path, out: Path, **kw) -> ShowJob:
    return ShowJob(labels=str(kw.pop("labels", d / "pred.json")), out=str(out), images=str(d / "images"), **kw)


def test_parse_ids_and_settings_validation() -> None:
    assert parse_ids("3, 7,10-12,3") == (3, 7, 10, 11, 12)
    for bad in ("x", "5-2", ",", "1-"):
        with pytest.raises(UsageError):
            parse_ids(bad)
    with pytest.raises(UsageError):
        ShowSettings(sort="random")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ShowSettings(min_side=800, max_side=400)
    with pytest.raises(UsageError):
        ShowJob(labels="-", out="r", gt="-")
    assert ShowSettings().resolved_sort(True) == "worst" and ShowSettings().resolved_sort(False) == "id"


def test_match_scores_and_agreement() -> None:
    a = np.zeros((20, 20), np.uint8)
    a[2:10, 2:10] = 1
    b = np.zeros((20, 20), np.uint8)
    b[2:10, 2:6] = 1
    ra, rb = rle_utils.encode(a), rle_utils.encode(b)
    m = match([ra], [1], [rb, ra], [1, 2])
    assert m.a.tolist() == [0.5] and m.a_to_b.tolist() == [0]  # the identical mask is of another class
    assert m.b.tolist() == [0.5, 0.0]
    assert match([ra], [1], [rb, ra], [1, 2], class_agnostic=True).a.tolist() == [1.0]
    assert mean_iou_vs_reference(1, m.b) == 0.25
    assert mean_iou_vs_reference(0, np.zeros(0)) == 1.0 and mean_iou_vs_reference(2, np.zeros(0)) == 0.0
    assert agreement(m) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_render_fills_outlines_and_sizes() -> None:
    img = np.full((40, 60, 3), 128, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:30] = 1
    red = (255, 0, 0)
    out = render(img, [Instance(mask, [10, 10, 20, 20], red, "disc 0.9")], (80, 120), alpha=0.5)
    assert out.shape == (80, 120, 3) and out.dtype == np.uint8
    inside = out[40, 40]
    assert inside[0] > inside[1] + 50  # the fill is tinted red
    assert (out[5, 110] == 128).all()  # far from the instance nothing changed
    assert display_size(96, 96, 512, 1024) == (512, 512)
    assert display_size(480, 640, 512, 1024) == (480, 640)
    assert display_size(1000, 4000, 512, 1024) == (256, 1024)
    assert thumb_size(480, 640, 192) == (144, 192)
    cols = palette(12)
    assert len(set(cols)) == 12 and cols == palette(12)


def test_pages_escape_input_strings() -> None:
    panel = pages.Panel("labels: <b>.json", "img/1.labels.png", "thumb/1.labels.png", (10, 10), (5, 5),
                        "1 instance", (pages.Row("#ff0000", "1", "<script>", "", "", "4"),))
    entry = pages.Entry(1, "a&<b>.png", 10, 10, "", (panel,))
    index = pages.index_page("t<", ["s"], "", [entry], 1, 1)
    view = pages.view_page("t<", entry, 1, 1, "index.html", None, None, "")
    for text in (index, view):
        assert "<b>.json" not in text and "a&<b>" not in text and "<script>\"" not in text
    assert "&lt;script&gt;" in view
    assert 'loading="lazy"' in index


def _no_network(report: Path) -> None:
    for f in [*report.glob("*.html"), *report.glob("view/*.html"), report / "style.css"]:
        text = f.read_text()
        assert not re.search(r"(https?:)?//[a-z]", re.sub(r"<!DOCTYPE[^>]*>", "", text)), f"{f} reaches out"


def test_report_with_ground_truth_sorts_worst_first(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = run(ShowSettings(page_size=4), _job(data, out, gt=str(data / "gt.json")))
    assert summary.images == 6 and summary.pages == 2 and summary.sort == "worst"
    assert summary.panels == ("labels", "gt")
    rep = json.loads((out / "report.json").read_text())
    scores = [im["score"] for im in rep["images"]]
    assert scores == sorted(scores) and scores[0] < scores[-1]
    assert 0 < rep["mean_iou"] < 1
    for im in rep["images"]:
        for key in ("labels", "gt"):
            view = read_image(out / f"img/{im['id']}.{key}.png")
            assert view.shape == (512, 512, 3)
            assert read_image(out / f"thumb/{im['id']}.{key}.png").shape == (192, 192, 3)
        assert (out / f"view/{im['id']}.html").is_file()
    index1, index2 = (out / "index.html").read_text(), (out / "index-2.html").read_text()
    first = rep["images"][0]["id"]
    assert f'href="view/{first}.html"' in index1 and 'href="index-2.html"' in index1
    assert index1.count('class="card"') == 4 and index2.count('class="card"') == 2
    last_view = (out / f"view/{rep['images'][-1]['id']}.html").read_text()
    assert "index-2.html#img-" in last_view and 'rel="next"' not in last_view
    _no_network(out)
    # nothing is left beside the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_results_list_compare_limit_ids_shard(data: Path, tmp_path: Path) -> None:
    # a results list with a folder of images, compared with the ground truth as a second label set
    s = run(ShowSettings(limit=3), _job(data, tmp_path / "a", labels=data / "results.json",
                                       compare=str(data / "gt.json")))
    assert s.images == 3 and s.sort == "worst" and s.panels == ("labels", "compare")
    assert s.mean_iou is None
    s = run(ShowSettings(ids=(2, 3, 5), sort="id"), _job(data, tmp_path / "b", shard="1/2"))
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [im["id"] for im in rep["images"]] == [2]  # shard 1/2 holds ids 2, 4, 6
    with pytest.raises(UsageError, match="needs something to measure against"):
        run(ShowSettings(sort="best"), _job(data, tmp_path / "c"))
    with pytest.raises(UsageError, match="image id 99"):
        run(ShowSettings(ids=(1, 99)), _job(data, tmp_path / "c"))


def test_bad_image_leaves_no_partial_report(data: Path, tmp_path: Path) -> None:
    ds = json.loads((data / "pred.json").read_text())
    ds["images"][4]["file_name"] = "missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(ds))
    out = tmp_path / "report"
    with pytest.raises(BadInputError, match=r"bad\.json: image id 5 \(missing\.png\): image file not found"):
        run(ShowSettings(), _job(data, out, labels=tmp_path / "bad.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_box_only_records_are_drawn_even_in_thumbnails() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    out = render(img, [Instance(None, [5, 5, 20, 20], (0, 255, 0))], (40, 40), boxes=False, labels=False)
    assert out[5, 10, 1] == 255 and out[15, 15].sum() == 0  # the outline, not a fill


def test_full_views_are_jpeg_for_jpeg_sources_or_when_asked(data: Path, tmp_path: Path) -> None:
    """--format auto: JPEG views where the image is a JPEG (photos), PNG otherwise; thumbnails stay PNG."""
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    ds = json.loads((data / "gt.json").read_text())
    for im in ds["images"]:
        pixels = cv2.imread(str(data / "images" / im["file_name"]))
        im["file_name"] = Path(im["file_name"]).stem + ".jpg"
        cv2.imwrite(str(photos / im["file_name"]), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "gt.json").write_text(json.dumps(ds))
    job = ShowJob(labels=str(tmp_path / "gt.json"), out=str(tmp_path / "auto"), images=str(photos))
    run(ShowSettings(limit=2), job)
    views = sorted(p.name for p in (tmp_path / "auto" / "img").iterdir())
    assert len(views) == 2 and all(v.endswith(".labels.jpg") for v in views)
    assert all(p.suffix == ".png" for p in (tmp_path / "auto" / "thumb").iterdir())
    first = (tmp_path / "auto" / "img" / views[0]).read_bytes()
    assert first[:3] == b"\xff\xd8\xff"  # a JPEG, not a PNG under another name
    assert f'src="../img/{views[0]}"' in (tmp_path / "auto" / "view" / views[0].split(".")[0]).with_suffix(
        ".html").read_text()
    run(ShowSettings(limit=2, image_format="png"), ShowJob(labels=str(tmp_path / "gt.json"),
                                                           out=str(tmp_path / "png"), images=str(photos)))
    assert all(p.suffix == ".png" for p in (tmp_path / "png" / "img").iterdir())
    run(ShowSettings(limit=2), _job(data, tmp_path / "synth"))  # PNG sources: PNG views
    assert all(p.suffix == ".png" for p in (tmp_path / "synth" / "img").iterdir())
    run(ShowSettings(limit=2, image_format="jpg"), _job(data, tmp_path / "forced"))
    assert all(p.suffix == ".jpg" for p in (tmp_path / "forced" / "img").iterdir())
    with pytest.raises(UsageError, match="--format"):
        ShowSettings(image_format="gif")  # type: ignore[arg-type]


def test_gallery_page_draws_every_row_beside_the_ground_truth(data: Path, tmp_path: Path) -> None:
    from wsis_cli.stages.show.gallery import GalleryRow, write_gallery

    rows = [GalleryRow("damaged <dataset>", data / "pred.json", ("damaged <dataset>", "51.0", "80.0")),
            GalleryRow("results & co", data / "results.json", ("results & co", "52.0", "81.0"), class_agnostic=True),
            GalleryRow("never written", tmp_path / "missing.json", ("never written", "–", "–"))]
    page = write_gallery(tmp_path / "report.html", "demo <t>", ["method", "mask AP", "AP50"], rows,
                         data / "gt.json", data / "images", per_row=3)
    text = page.read_text()
    assert "<h1>demo &lt;t&gt;</h1>" in text and "damaged &lt;dataset&gt;" in text and "results &amp; co" in text
    assert 'href="report/style.css"' in text and (tmp_path / "report" / "style.css").is_file()
    assert "mask AP 51.0 · AP50 80.0" in text and "class-agnostic" in text
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == 2 * 3 * 2  # two drawn rows x three images x (labels, ground truth)
    assert all((tmp_path / s).is_file() for s in srcs)
    assert all((tmp_path / h).is_file() for h in re.findall(r'<a href="(report/[^"]+)"', text))
    assert '<a href="#row-1">' in text and '<a href="#row-3">' not in text  # nothing to draw: table line only
    gt = coco.load_dataset(data / "gt.json")
    first = sorted(im["id"] for im in gt.images)[:3]
    assert re.findall(r"<figcaption[^>]*>#(\d+)", text) == [str(i) for i in first] * 2  # same images every row
    # a bad label file: nothing new is written, the old page and assets stay as they were
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": 3, "categories": []}')
    before = page.read_text()
    with pytest.raises(BadInputError, match="bad.json"):
        write_gallery(page, "t", ["method"], [GalleryRow("ok", data / "pred.json", ("ok",)),
                                              GalleryRow("bad", bad, ("bad",))], data / "gt.json", data / "images")
    assert page.read_text() == before and not list(tmp_path.glob("*partial*"))
