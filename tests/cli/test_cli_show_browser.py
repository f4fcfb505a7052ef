"""`wsis show`'s report in a real browser: headless Chromium opens it from disk (file://, no server).

Checked on the first index page, the second one and a full view: no console message and no error event,
and every image loads (``naturalWidth > 0``). The index pages lazy-load their thumbnails, so the check
runs on a copy of each page beside it (same relative links) whose images are made eager and which
carries a small script that writes what it saw into the page; Chromium's ``--dump-dom`` returns it.
Screenshots of the real pages are taken too (``WSIS_SCREENSHOTS=DIR`` keeps them to look at).

``wsis demo --out DIR``'s ``report.html`` (the table and a few images of every row beside the ground truth,
drawn by the same modules) gets the same checks and a screenshot.

Needs Debian's ``chromium`` (``.ci/run`` installs it where apt is available); skipped with the reason
otherwise.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wsis_cli.io import coco
from wsis_cli.stages.baselines.degrade import degrade_dataset
from wsis_cli.stages.show import ShowJob, ShowSettings
from wsis_cli.stages.show.stage import run
from wsis_cli.stages.synth.stage import SynthJob, SynthSettings
from wsis_cli.stages.synth.stage import run as synth

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

_PROBE = """<script>
window.__wsisErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__wsisErrors.push(String(e.message || (t && t.getAttribute && ("failed to load " + t.getAttribute("src")))));
}, true);
["error", "warn", "log"].forEach(function (level) {
  var orig = console[level];
  console[level] = function () { window.__wsisErrors.push(level + ": " + [].join.call(arguments, " ")); orig.apply(console, arguments); };
});
window.addEventListener("load", function () {
  var imgs = [].slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute("src"); });
  var pre = document.createElement("pre");
  pre.id = "wsis-check";
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__wsisErrors});
  document.body.appendChild(pre);
});
</script>
"""


def _browser() -> str:
    for name in (os.environ.get("WSIS_CHROMIUM"), *BROWSERS):
        if name and shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.skip("headless Chromium not found: install Debian's chromium (apt-get install -y chromium; "
                ".ci/run does this where apt is available) or set WSIS_CHROMIUM")


def _chromium(browser: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="wsis-chromium-") as profile:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--hide-scrollbars", *extra, url],
            capture_output=True, text=True, timeout=90,
        )


def _console(stderr: str) -> list[str]:
    """Console messages Chromium logged (``...:INFO:CONSOLE:12] "message", source: ...``)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("show-browser")
    synth(SynthSettings(num_images=6, height=96, width=128, seed=5), SynthJob(root / "d"))
    gt = coco.load_dataset(root / "d" / "gt.json")
    noisy = degrade_dataset(gt, "erode", radius=1)
    coco.write_dataset(noisy.with_annotations([a for a in noisy.annotations if a["id"] % 3]), root / "pred.json")
    run(ShowSettings(page_size=4, title='wsis & "friends" <check>'),
        ShowJob(labels=str(root / "pred.json"), out=str(root / "report"), images=str(root / "d" / "images"),
                gt=str(root / "d" / "gt.json")))
    return root / "report"


def _pages(report: Path) -> list[str]:
    first = json.loads((report / "report.json").read_text())["images"][0]["id"]
    return ["index.html", "index-2.html", f"view/{first}.html"]


def _probe(browser: str, src: Path) -> tuple[dict, list[str]]:
    """Open a checking copy of ``src`` beside it; returns what the page saw and the console lines."""
    text = src.read_text()
    probe = src.with_name("_check-" + src.name)
    probe.write_text(text.replace('loading="lazy"', 'loading="eager"').replace("<head>", "<head>\n" + _PROBE, 1))
    try:
        res = _chromium(browser, probe.as_uri(), "--dump-dom", "--virtual-time-budget=10000")
    finally:
        probe.unlink()
    m = re.search(r'<pre id="wsis-check">(.*?)</pre>', res.stdout, re.S)
    assert m, f"{src}: the check did not run (rc {res.returncode}): {res.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1))), _console(res.stderr)


def test_pages_load_without_errors_and_every_image_loads(report: Path) -> None:
    browser = _browser()
    for page in _pages(report):
        text = (report / page).read_text()
        if page.startswith("index"):
            assert text.count('loading="lazy"') == text.count("<img") > 0
        seen, console = _probe(browser, report / page)
        assert seen["images"] == text.count("<img") > 0, (page, seen)
        assert seen["broken"] == [], f"{page}: images that did not load: {seen['broken']}"
        assert seen["errors"] == [], f"{page}: {seen['errors']}"
        assert console == [], f"{page}: {console}"


def test_the_check_sees_a_missing_image(report: Path, tmp_path: Path) -> None:
    """Guard against a vacuous check: with one thumbnail deleted, it is reported."""
    browser = _browser()
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    victim = sorted((copy / "thumb").iterdir())[0]
    victim.unlink()
    seen, _ = _probe(browser, copy / "index.html") if f"thumb/{victim.name}" in (
        copy / "index.html").read_text() else _probe(browser, copy / "index-2.html")
    assert seen["broken"] == [f"thumb/{victim.name}"]
    assert seen["errors"] == [f"failed to load thumb/{victim.name}"]


def test_screenshots_of_the_real_pages(report: Path, tmp_path: Path) -> None:
    browser = _browser()
    keep = os.environ.get("WSIS_SCREENSHOTS")
    for page, size in zip(_pages(report), ("1280,900", "1280,900", "1280,1000"), strict=True):
        shot = tmp_path / (page.replace("/", "-") + ".png")
        res = _chromium(browser, (report / page).as_uri(), f"--screenshot={shot}", f"--window-size={size}",
                        "--virtual-time-budget=5000")
        assert shot.is_file() and shot.stat().st_size > 10_000, f"{page}: no screenshot: {res.stderr[-2000:]}"
        assert _console(res.stderr) == [], f"{page}: {_console(res.stderr)}"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory) -> Path:
    """A small real ``wsis demo --out``: the box-filled path and two one-epoch students (three rows)."""
    out = tmp_path_factory.mktemp("demo-browser") / "demo"
    res = subprocess.run([sys.executable, "-m", "wsis_cli", "demo", "-n", "4", "--size", "64x80", "--methods",
                          "box-filled", "--student-epochs", "1", "--student-jobs", "1", "--out", str(out), "-q"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return out / "report.html"


def test_demo_report_loads_without_errors_and_every_image_loads(demo_page: Path, tmp_path: Path) -> None:
    browser = _browser()
    text = demo_page.read_text()
    assert "http:" not in text and "https:" not in text  # nothing to fetch from a network
    seen, console = _probe(browser, demo_page)
    # three rows (box-filled, student <- ground truth, student <- box-filled) x four images x two panels
    assert seen["images"] == text.count("<img") == 3 * 4 * 2, seen
    assert seen["broken"] == [] and seen["errors"] == [] and console == [], (seen, console)
    shot = tmp_path / "demo-report.png"
    res = _chromium(browser, demo_page.as_uri(), f"--screenshot={shot}", "--window-size=1280,1400",
                    "--virtual-time-budget=5000")
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot: {res.stderr[-2000:]}"
    assert _console(res.stderr) == [], _console(res.stderr)
    keep = os.environ.get("WSIS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
