"""wsis_cli.io.images: every image file becomes (H, W, 3) uint8 RGB at its displayed size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from wsis_cli.io import images
from wsis_cli.runtime.errors import BadInputError, ExitCode


def check_rgb(a: np.ndarray, h: int, w: int) -> None:
    assert a.dtype == np.uint8 and a.shape == (h, w, 3) and a.flags["C_CONTIGUOUS"]


def test_rgb_png_channel_order(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 3), dtype=np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 200, 100, 50
    Image.fromarray(x, "RGB").save(tmp_path / "a.png")
    a = images.read_image(tmp_path / "a.png")
    check_rgb(a, 3, 4)
    assert a[0, 0].tolist() == [200, 100, 50]  # RGB, not OpenCV's BGR


def test_grayscale_becomes_three_channels(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 6), 100, dtype=np.uint8), "L").save(tmp_path / "g.png")
    a = images.read_image(tmp_path / "g.png")
    check_rgb(a, 4, 6)
    assert (a == 100).all()


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    x = np.zeros((4, 6, 4), dtype=np.uint8)
    x[..., :3] = [10, 20, 30]
    x[..., 3] = 0  # fully transparent: colour is still what it is
    Image.fromarray(x, "RGBA").save(tmp_path / "a.png")
    a = images.read_image(tmp_path / "a.png")
    check_rgb(a, 4, 6)
    assert a[2, 3].tolist() == [10, 20, 30]


def test_palette_image(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 1, 1], [1, 0, 2]], dtype=np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    a = images.read_image(tmp_path / "p.png")
    check_rgb(a, 2, 3)
    assert a[0, 0].tolist() == [255, 0, 0] and a[0, 1].tolist() == [0, 0, 255] and a[1, 2].tolist() == [0, 255, 0]


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.save(tmp_path / "pt.png", transparency=0)
    a = images.read_image(tmp_path / "pt.png")
    check_rgb(a, 1, 2)
    assert a[0, 1].tolist() == [0, 0, 255]


def gray16(tmp_path: Path) -> Path:
    y = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)  # a camera using 13 of 16 bits
    Image.fromarray(y).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16") or Image.open(tmp_path / "g16.png").mode == "I"
    return tmp_path / "g16.png"


def test_16bit_full_range(tmp_path: Path) -> None:
    a = images.read_image(gray16(tmp_path), depth="full")
    check_rgb(a, 2, 2)
    expected = np.rint(np.array([[1000, 2000], [3000, 5000]]) / 65535 * 255)
    np.testing.assert_array_equal(a[..., 0], expected)
    assert (a[..., 0] == a[..., 2]).all()


def test_16bit_stretch(tmp_path: Path) -> None:
    a = images.read_image(gray16(tmp_path), depth="stretch")
    check_rgb(a, 2, 2)
    expected = np.rint((np.array([[1000, 2000], [3000, 5000]]) - 1000) / 4000 * 255)
    np.testing.assert_array_equal(a[..., 1], expected)
    assert a.min() == 0 and a.max() == 255


def test_16bit_constant_stretch_is_black(tmp_path: Path) -> None:
    Image.fromarray(np.full((2, 2), 777, dtype=np.uint16)).save(tmp_path / "c.png")
    assert (images.read_image(tmp_path / "c.png", depth="stretch") == 0).all()


def test_16bit_colour(tmp_path: Path) -> None:
    bgr = np.zeros((2, 2, 3), dtype=np.uint16)
    bgr[...] = [0, 32768, 65535]  # OpenCV writes BGR
    assert cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    a = images.read_image(tmp_path / "c16.png")
    assert a[0, 0].tolist() == [255, 128, 0]


@pytest.mark.parametrize("channels", [1, 3])
def test_float_tiff(tmp_path: Path, channels: int) -> None:
    x = np.full((3, 4) if channels == 1 else (3, 4, 3), 0.5, dtype=np.float32)
    assert cv2.imwrite(str(tmp_path / "f.tiff"), x)
    a = images.read_image(tmp_path / "f.tiff")
    check_rgb(a, 3, 4)
    assert (a == 128).all()


def test_exif_rotated_jpeg_uses_displayed_size(tmp_path: Path) -> None:
    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # stored 80 wide, 40 tall
    stored[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    a = images.read_image(tmp_path / "r.jpg")
    check_rgb(a, 80, 40)  # width and height swap
    assert a[:40].mean() > 200 and a[40:].mean() < 50  # the stored left half is now on top


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        images.read_image(tmp_path / "nope.png", record="gt.json image id 3")
    e = info.value
    assert e.exit_code == ExitCode.BAD_INPUT
    assert str(e) == f"{tmp_path / 'nope.png'}: gt.json image id 3: image file not found"


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not a file"):
        images.read_image(tmp_path)


@pytest.mark.parametrize(
    ("name", "data"),
    [("bad.png", b"\x89PNG\r\n\x1a\ngarbage"), ("bad.jpg", b"\xff\xd8\xff\xe0 garbage"), ("text.png", b"hello")],
)
def test_corrupt_file(tmp_path: Path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(BadInputError, match="cannot decode image") as info:
        images.read_image(tmp_path / name)
    assert info.value.path == str(tmp_path / name)


def test_truncated_jpeg(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[:200])
    with pytest.raises(BadInputError, match="cannot decode"):
        images.read_image(tmp_path / "t.jpg")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(BadInputError, match="empty image file"):
        images.read_image(tmp_path / "e.png")


def test_corrupt_file_prints_nothing_else() -> None:
    """OpenCV's own warnings must not precede our one-line error on stderr."""
    code = (
        "import sys, tempfile, pathlib\n"
        "from wsis_cli.io.images import read_image\n"
        "p = pathlib.Path(tempfile.mkdtemp()) / 'bad.png'\n"
        "p.write_bytes(b'\\x89PNG\\r\\n\\x1a\\ngarbage')\n"
        "try:\n    read_image(p)\nexcept Exception as e:\n    print(type(e).__name__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "BadInputError"
    assert res.stderr == ""


# --------------------------------------------------------------------------------- writing, listing


def test_write_then_read(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    images.write_image(tmp_path / "w.png", x)
    np.testing.assert_array_equal(images.read_image(tmp_path / "w.png"), x)
    images.write_image(tmp_path / "g.png", x[..., 0])
    np.testing.assert_array_equal(images.read_image(tmp_path / "g.png")[..., 1], x[..., 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "w.png"]


def test_write_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        images.write_image(tmp_path / "no" / "w.png", np.zeros((2, 2, 3), dtype=np.uint8))


def test_list_images_sorted_recursive_relative(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 3), dtype=np.uint8)
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.JPG", "sub/c.png", ".hidden.png", "notes.txt", "sub/d.jpeg"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()  # a folder named like an image is not an image
    images.write_image(tmp_path / "b.png", x)
    assert images.list_images(tmp_path) == ["a.JPG", "b.png", "sub/c.png", "sub/d.jpeg"]


def test_list_images_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no images found") as info:
        images.list_images(tmp_path)
    assert info.value.path == str(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(BadInputError, match="no images found"):
        images.list_images(tmp_path)
    with pytest.raises(BadInputError, match="image folder not found"):
        images.list_images(tmp_path / "nope")
    with pytest.raises(BadInputError, match="not a folder"):
        images.list_images(tmp_path / "readme.txt")


def test_folder_images_ids_from_sorted_names(tmp_path: Path) -> None:
    (tmp_path / "z").mkdir()
    sizes = {"b.png": (3, 5), "a.png": (4, 2), "z/c.png": (6, 6)}
    for name, (h, w) in sizes.items():
        images.write_image(tmp_path / name, np.zeros((h, w, 3), dtype=np.uint8))
    recs = images.folder_images(tmp_path)
    assert recs == [
        {"id": 1, "file_name": "a.png", "width": 2, "height": 4},
        {"id": 2, "file_name": "b.png", "width": 5, "height": 3},
        {"id": 3, "file_name": "z/c.png", "width": 6, "height": 6},
    ]
    assert images.folder_images(tmp_path) == recs  # deterministic


def test_image_path(tmp_path: Path) -> None:
    assert images.image_path(tmp_path, {"file_name": "sub/a.png"}) == tmp_path / "sub" / "a.png"
    assert images.image_path(None, {"file_name": "a.png"}) == Path("a.png")
    with pytest.raises(BadInputError, match=r"gt.json: image id 4: file_name '/abs/a.png' leads outside"):
        images.image_path(tmp_path, {"id": 4, "file_name": "/abs/a.png"}, "gt.json")
    with pytest.raises(BadInputError, match="leads outside"):
        images.image_path(tmp_path, {"id": 4, "file_name": "sub/../../a.png"})
    assert images.image_path(tmp_path, {"file_name": "sub/../a.png"}) == tmp_path / "sub" / ".." / "a.png"


def test_image_path_outside_root_by_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(images.ALLOW_OUTSIDE_ENV, "1")
    assert images.image_path(tmp_path, {"id": 1, "file_name": "/abs/a.png"}) == Path("/abs/a.png")


def test_load_image_for_checks_the_size(tmp_path: Path) -> None:
    images.write_image(tmp_path / "a.png", np.zeros((4, 6, 3), dtype=np.uint8))
    good = {"id": 3, "file_name": "a.png", "width": 6, "height": 4}
    check_rgb(images.load_image_for(tmp_path, good, "gt.json"), 4, 6)
    wrong = {**good, "width": 4, "height": 6}
    with pytest.raises(BadInputError) as info:
        images.load_image_for(tmp_path, wrong, "gt.json")
    e = info.value
    assert e.exit_code == ExitCode.BAD_INPUT
    assert e.path == "gt.json" and e.record == "image id 3 (a.png)"
    assert "file is 6x4 (WxH) but the JSON says 4x6" in e.message


def test_load_image_for_missing_and_corrupt(tmp_path: Path) -> None:
    rec = {"id": 9, "file_name": "gone.png", "width": 2, "height": 2}
    with pytest.raises(BadInputError) as info:
        images.load_image_for(tmp_path, rec, "gt.json")
    assert info.value.path == "gt.json" and info.value.record == "image id 9 (gone.png)"
    assert "not found" in info.value.message and str(tmp_path / "gone.png") in info.value.message
    (tmp_path / "gone.png").write_bytes(b"junk")
    with pytest.raises(BadInputError) as info:
        images.load_image_for(tmp_path, rec, "gt.json")
    assert "gt.json image id 9" in str(info.value) and "cannot decode" in str(info.value)
