"""The classes of ``wsis synth``: shape families, colour distributions, textures and backgrounds.

Every class has its own outline family, base hue and texture, but each of those overlaps with other
classes and with the background on purpose (hue jitter, a share of instances with a random hue, a share
with a borrowed texture, backgrounds of any hue with the same kinds of grain), so that colour alone does
not solve the task and a model has to look at shape and texture too.

Everything here is a pure function of a ``numpy.random.Generator``: no global state, no files.
Colours are float32 RGB in 0..1; outlines are lists of (N, 2) float ``x, y`` polygons centred on the origin,
the first one filled and any others holes.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Polygons = list[np.ndarray]


@dataclass(frozen=True)
class ShapeClass:
    """One synthetic class: its name, outline family, base hue (degrees) and usual texture."""

    name: str
    outline: Callable[[np.random.Generator, float], Polygons]
    hue: float
    texture: str
    description: str


# ------------------------------------------------------------------------------------------- outlines


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _n_points(r: float) -> int:
    # enough vertices that curved outlines stay smooth at any size, without wasting time on small ones
    return int(min(160, max(24, 2.0 * r)))


def _ellipse(rx: float, ry: float, n: int) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _disc(rng: np.random.Generator, r: float) -> Polygons:
    pts = _ellipse(r, r * rng.uniform(0.6, 1.0), _n_points(r))
    return [_rotate(pts, rng.uniform(0, math.pi))]


def _box(rng: np.random.Generator, r: float) -> Polygons:
    a, b = r * 0.92, r * 0.92 * rng.uniform(0.45, 1.0)
    c = b * rng.uniform(0.0, 0.35)  # corner radius
    k = max(3, _n_points(c) // 4) if c > 0.5 else 1
    t = np.linspace(0.0, 0.5 * math.pi, k)
    pts = []
    for sx, sy, start in ((1, 1, 0.0), (-1, 1, 0.5), (-1, -1, 1.0), (1, -1, 1.5)):
        cx, cy = sx * (a - c), sy * (b - c)
        ang = t + start * math.pi
        pts.append(np.stack([cx + c * np.cos(ang), cy + c * np.sin(ang)], axis=1))
    return [_rotate(np.concatenate(pts), rng.uniform(0, math.pi))]


def _triangle(rng: np.random.Generator, r: float) -> Polygons:
    ang = np.array([0.0, 2.0, 4.0]) * math.pi / 3 + rng.normal(0.0, 0.2, 3) + rng.uniform(0, 2 * math.pi)
    rad = r * rng.uniform(0.9, 1.15, 3)
    return [np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)]


def _star(rng: np.random.Generator, r: float) -> Polygons:
    n = int(rng.integers(5, 8))
    ang = np.arange(2 * n) * math.pi / n + rng.uniform(0, 2 * math.pi)
    rad = np.where(np.arange(2 * n) % 2 == 0, r * 1.1, r * 1.1 * rng.uniform(0.42, 0.6))
    rad = rad * rng.uniform(0.92, 1.08, 2 * n)
    return [np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)]


def _ring(rng: np.random.Generator, r: float) -> Polygons:
    n, squash, angle = _n_points(r), rng.uniform(0.85, 1.0), rng.uniform(0, math.pi)
    inner = rng.uniform(0.4, 0.6)
    outer = _rotate(_ellipse(r, r * squash, n), angle)
    hole = _rotate(_ellipse(r * inner, r * inner * squash, n), angle) + rng.uniform(-0.08, 0.08, 2) * r
    return [outer, hole]


def _cross(rng: np.random.Generator, r: float) -> Polygons:
    w, a = r * rng.uniform(0.28, 0.4), r * rng.uniform(0.95, 1.1)
    pts = np.array([[w, w], [w, a], [-w, a], [-w, w], [-a, w], [-a, -w],
                    [-w, -w], [-w, -a], [w, -a], [w, -w], [a, -w], [a, w]], dtype=np.float64)
    return [_rotate(pts, rng.uniform(0, math.pi / 2))]


def _hexagon(rng: np.random.Generator, r: float) -> Polygons:
    ang = np.arange(6) * math.pi / 3
    pts = np.stack([r * np.cos(ang), r * rng.uniform(0.75, 1.0) * np.sin(ang)], axis=1)
    return [_rotate(pts, rng.uniform(0, math.pi))]


def _blob(rng: np.random.Generator, r: float) -> Polygons:
    n = _n_points(r)
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in (2, 3, 4, 5):
        rad += rng.uniform(0.0, 0.22 / (k - 1)) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    rad *= r
    return [np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)]


# The order fixes the category ids (1-based): `--classes K` uses the first K.
CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("disc", _disc, 5.0, "shaded", "ellipses, red-orange, smooth spherical shading"),
    ShapeClass("box", _box, 215.0, "stripes", "rotated rounded rectangles, blue, striped"),
    ShapeClass("triangle", _triangle, 105.0, "speckle", "irregular triangles, green, speckled"),
    ShapeClass("star", _star, 48.0, "mottled", "5-7 pointed stars, yellow, mottled"),
    ShapeClass("ring", _ring, 280.0, "gradient", "annuli (mask with a hole), purple, two-tone gradient"),
    ShapeClass("cross", _cross, 175.0, "checker", "rotated plus signs, teal, checkerboard"),
    ShapeClass("hexagon", _hexagon, 330.0, "dots", "squashed hexagons, pink, dotted"),
    ShapeClass("blob", _blob, 25.0, "mottled", "smooth irregular blobs, orange-brown (near disc), mottled"),
)
MAX_CLASSES = len(CLASSES)
TEXTURES = ("shaded", "stripes", "speckle", "mottled", "gradient", "checker", "dots")

P_RANDOM_HUE = 0.3  # share of instances whose hue ignores their class
P_BORROWED_TEXTURE = 0.2  # share of instances drawn with a random texture


# --------------------------------------------------------------------------------------------- colour


def hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    """RGB float32 (3,) in 0..1 from hue in degrees, saturation and value in 0..1."""
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.array([r, g, b], dtype=np.float32)


def instance_colours(rng: np.random.Generator, cls: ShapeClass) -> tuple[np.ndarray, np.ndarray]:
    """The primary and secondary colour of one instance of ``cls``."""
    hue = rng.uniform(0, 360) if rng.random() < P_RANDOM_HUE else cls.hue + rng.normal(0.0, 28.0)
    sat, val = rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.95)
    c1 = hsv(hue, sat, val)
    c2 = hsv(hue + rng.normal(0.0, 25.0), sat * rng.uniform(0.5, 1.2), val * rng.choice([0.55, 1.35]))
    return c1, c2


# -------------------------------------------------------------------------------------------- texture


def _noise_field(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth noise in about -1..1 with roughly ``cells`` blobs across the longer side."""
    gh = max(2, round(cells * h / max(h, w)) + 2)
    gw = max(2, round(cells * w / max(h, w)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def texture(
    rng: np.random.Generator, kind: str, x: np.ndarray, y: np.ndarray, r: float,
    c1: np.ndarray, c2: np.ndarray,
) -> np.ndarray:
    """Colour ``(h, w, 3)`` float32 of an instance over its window.

    ``x``, ``y`` are float32 pixel offsets from the instance centre (``(1, w)`` and ``(h, 1)``),
    ``r`` its radius: patterns scale mildly with size so large instances do not look like flat paint.
    """
    h, w = y.shape[0], x.shape[1]
    scale = max(1.0, r / 30.0) ** 0.5
    t: np.ndarray  # mix weight of c2, (h, w)
    if kind == "shaded":
        # a sphere lit from a random side: bright spot, darker rim
        lx, ly = rng.uniform(-0.4, 0.4, 2) * r
        d2 = ((x - lx) ** 2 + (y - ly) ** 2) / (r * r)
        t = np.clip(d2 * rng.uniform(0.3, 0.6), 0.0, 1.0)
    elif kind == "stripes":
        a, period = rng.uniform(0, math.pi), rng.uniform(4.0, 9.0) * scale
        u = x * math.cos(a) + y * math.sin(a)
        t = (0.5 + 0.5 * np.sin(u * (2 * math.pi / period) + rng.uniform(0, 6.3))) * rng.uniform(0.5, 0.9)
    elif kind == "speckle":
        t = (rng.random((h, w), dtype=np.float32) < rng.uniform(0.12, 0.3)).astype(np.float32)
        t *= rng.uniform(0.6, 1.0)
    elif kind == "mottled":
        t = np.clip(0.5 + 0.45 * _noise_field(rng, h, w, rng.uniform(3, 6)), 0.0, 1.0)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + 0.5 * (x * math.cos(a) + y * math.sin(a)) / r, 0.0, 1.0) * rng.uniform(0.6, 1.0)
    elif kind == "checker":
        a, period = rng.uniform(0, math.pi / 2), rng.uniform(4.0, 8.0) * scale
        u = (x * math.cos(a) + y * math.sin(a)) / period
        v = (y * math.cos(a) - x * math.sin(a)) / period
        t = ((np.floor(u) + np.floor(v)) % 2.0).astype(np.float32) * rng.uniform(0.5, 0.85)
    elif kind == "dots":
        period = rng.uniform(5.0, 9.0) * scale
        fu, fv = (x / period) % 1.0 - 0.5, (y / period) % 1.0 - 0.5
        t = ((fu * fu + fv * fv) < rng.uniform(0.04, 0.09)).astype(np.float32) * rng.uniform(0.6, 1.0)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    t = np.broadcast_to(t, (h, w))[..., None]
    col = c1 * (1.0 - t) + c2 * t
    # mild directional lighting on every instance
    b = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.2) * (x * math.cos(b) + y * math.sin(b)) / r
    return (col * light[..., None]).astype(np.float32)


def pick_texture(rng: np.random.Generator, cls: ShapeClass) -> str:
    return str(rng.choice(TEXTURES)) if rng.random() < P_BORROWED_TEXTURE else cls.texture


# ------------------------------------------------------------------------------------------ background


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background ``(h, w, 3)`` float32: gradient, low-frequency noise, grain and clutter."""
    ca = hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.6), rng.uniform(0.25, 0.85))
    cb = hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.6), rng.uniform(0.25, 0.85))
    a = rng.uniform(0, 2 * math.pi)
    yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / max(h, w)
    xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / max(h, w)
    t = np.clip(0.5 + (xx * math.cos(a) + yy * math.sin(a)) * rng.uniform(0.6, 1.6), 0.0, 1.0)[..., None]
    img = ca * (1.0 - t) + cb * t
    img = img + _noise_field(rng, h, w, rng.uniform(2, 5))[..., None] * (rng.uniform(0.03, 0.09) * (ca - cb + 0.3))
    grain = rng.choice(["none", "speckle", "mottled", "stripes"], p=[0.4, 0.25, 0.2, 0.15])
    if grain == "speckle":
        img = img + ((rng.random((h, w), dtype=np.float32) < 0.15) * rng.uniform(-0.12, 0.12))[..., None]
    elif grain == "mottled":
        img = img + (_noise_field(rng, h, w, max(h, w) / rng.uniform(6, 14)) * rng.uniform(0.03, 0.07))[..., None]
    elif grain == "stripes":
        b, period = rng.uniform(0, math.pi), rng.uniform(5.0, 14.0)
        u = (xx * math.cos(b) + yy * math.sin(b)) * max(h, w)
        img = img + (np.sin(u * (2 * math.pi / period)) * rng.uniform(0.02, 0.06))[..., None]
    return _clutter(rng, np.ascontiguousarray(img, dtype=np.float32))


def _clutter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Thin lines and small dots that are not objects (premultiplied layer, blurred once)."""
    h, w = img.shape[:2]
    n = int(rng.integers(0, 4 + round(4 * math.sqrt(h * w) / 256)))
    if n == 0:
        return img
    layer = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    side = min(h, w)
    for _ in range(n):
        col = hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.7), rng.uniform(0.15, 0.95))
        op = float(rng.uniform(0.25, 0.7))
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            q = (p[0] + int(rng.normal(0, side / 4)), p[1] + int(rng.normal(0, side / 4)))
            th = int(rng.integers(1, 3))
            cv2.line(layer, p, q, tuple(float(c) * op for c in col), th)
            cv2.line(alpha, p, q, op, th)
        else:
            rad = int(rng.integers(1, max(2, side // 40) + 1))
            cv2.circle(layer, p, rad, tuple(float(c) * op for c in col), -1)
            cv2.circle(alpha, p, rad, op, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.7)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.7)
    return img * (1.0 - alpha[..., None]) + layer
