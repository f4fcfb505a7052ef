"""Overlays drawn with OpenCV and numpy: a colour per instance, filled masks, outlines, boxes and labels.

Images are ``(H, W, 3)`` uint8 RGB, masks ``(H, W)`` uint8 0/1 at the image's size, boxes XYWH in image
pixels. A view is drawn at a display size (see :func:`display_size`): masks are resized there with
nearest-neighbour sampling, so outlines follow the pixels a mask really covers, and text is drawn at the
display resolution so it stays sharp whatever the image size.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Colour = tuple[int, int, int]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette(n: int) -> list[Colour]:
    """``n`` distinct, saturated RGB colours, the same for the same ``n`` (golden-ratio hue steps, with
    two alternating brightness levels so neighbours in the sequence differ in more than hue)."""
    out = []
    for i in range(n):
        h = (0.07 + i * 0.618033988749895) % 1.0
        s, v = (0.85, 1.0) if i % 2 == 0 else (0.65, 0.85)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def hex_colour(c: Colour) -> str:
    return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"


def display_size(height: int, width: int, min_side: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` with the long side scaled into ``[min_side, max_side]`` (aspect kept, at least 1 px)."""
    long = max(height, width)
    scale = min_side / long if long < min_side else min(1.0, max_side / long)
    return max(1, round(height * scale)), max(1, round(width * scale))


def thumb_size(height: int, width: int, side: int) -> tuple[int, int]:
    """``(h, w)`` with the long side at ``side`` pixels."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class Instance:
    """One instance to draw: its mask (None for a box-only record), box, colour and label text."""

    mask: np.ndarray | None  # (H, W) uint8 at the image's size
    bbox: Sequence[float] | None  # XYWH, image pixels
    colour: Colour
    label: str = ""
    dashed: bool = False  # drawn with a dashed box: e.g. a reference instance nothing found


def _resize(img: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    enlarge = h > img.shape[0]
    interp = cv2.INTER_NEAREST if nearest or enlarge else cv2.INTER_AREA
    return cv2.resize(img, (w, h), interpolation=interp)


def render(
    image: np.ndarray,
    instances: Sequence[Instance],
    size: tuple[int, int],
    *,
    alpha: float = 0.45,
    boxes: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """Draw ``instances`` over ``image`` at display ``size`` ``(h, w)``; returns ``(h, w, 3)`` uint8 RGB.

    Larger masks are filled first so that small instances stay visible on top of large ones.
    """
    h, w = size
    H, W = image.shape[:2]
    sy, sx = h / H, w / W
    base = _resize(image, size, nearest=False)
    fill = base.copy()
    thick = max(1, round(max(h, w) / 600))
    masks: list[np.ndarray | None] = []
    for inst in instances:
        masks.append(None if inst.mask is None else _resize(inst.mask, size, nearest=True).astype(bool))
    order = sorted(range(len(instances)), key=lambda k: -(int(masks[k].sum()) if masks[k] is not None else 0))
    for k in order:
        m = masks[k]
        if m is not None:
            fill[m] = instances[k].colour
    out = cv2.addWeighted(base, 1.0 - alpha, fill, alpha, 0.0) if alpha > 0 else base.copy()
    for k in order:
        m = masks[k]
        if m is not None and m.any():
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, instances[k].colour, thick, cv2.LINE_8)
    for inst in instances:
        if inst.bbox is not None and (boxes or labels or inst.mask is None):
            x, y, bw, bh = inst.bbox
            p0 = (int(math.floor(x * sx)), int(math.floor(y * sy)))
            p1 = (int(math.ceil((x + bw) * sx)) - 1, int(math.ceil((y + bh) * sy)) - 1)
            if boxes or inst.mask is None:  # a box-only record is its box, even in a thumbnail
                _rectangle(out, p0, p1, inst.colour, thick, dashed=inst.dashed)
            if labels and inst.label:
                _label(out, inst.label, p0, inst.colour, max(h, w))
    return out


def _rectangle(img: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], colour: Colour, thick: int,
               *, dashed: bool) -> None:
    if not dashed:
        cv2.rectangle(img, p0, p1, colour, thick, cv2.LINE_8)
        return
    # a colour box with white dashes over it: visible on dark and light images alike
    cv2.rectangle(img, p0, p1, colour, thick, cv2.LINE_8)
    (x0, y0), (x1, y1) = p0, p1
    dash = max(3, 4 * thick)
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False),
                                    (y0, y1, x1, False)):
        for s in range(a, b + 1, 2 * dash):
            e = min(s + dash, b)
            q0, q1 = ((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e))
            cv2.line(img, q0, q1, (255, 255, 255), thick, cv2.LINE_8)


def _label(img: np.ndarray, text: str, corner: tuple[int, int], colour: Colour, long_side: int) -> None:
    """Text on a tag of the instance's colour at the box's top-left corner, kept inside the image."""
    scale = 0.4 * max(1.0, long_side / 640)
    thickness = 1
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = 2
    h, w = img.shape[:2]
    x = min(max(corner[0], 0), max(w - tw - 2 * pad, 0))
    y = corner[1] - th - base - 2 * pad  # above the box when there is room, else inside it
    if y < 0:
        y = min(max(corner[1], 0), max(h - th - base - 2 * pad, 0))
    dark = tuple(int(c * 0.45) for c in colour)
    cv2.rectangle(img, (x, y), (x + tw + 2 * pad, y + th + base + 2 * pad), dark, -1)
    cv2.putText(img, text, (x + pad, y + pad + th), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
