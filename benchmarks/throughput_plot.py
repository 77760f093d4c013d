"""Line plots written as PNG with the standard library only (zlib + struct).

matplotlib is not part of the project's pinned stack; this draws what the benchmarks need (axes,
ticks, one line per series, a legend) with a built-in 5x7 pixel font: samples/s against history
length, log-log (``benchmarks.throughput``), and a metric per category, e.g. test AUC per item
train-frequency bucket (``benchmarks.buckets``).

Example::

    plot_samples_per_s({"id": [(10, 900.0), (50, 700.0)]}, Path("out.png"), title="demo")
    plot_by_category({"EM3": [("0", 0.61), ("1-9", 0.64)]}, Path("auc.png"), y_label="test AUC")
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

# 5x7 glyphs, one per line: the character, then 7 rows of 5 pixels ('#' = on). Lowercase letters are
# drawn with the uppercase glyphs.
_FONT_TEXT = """
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ###.. #..#. #...# #...# #...# #..#. ###..
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
- ..... ..... ..... ##### ..... ..... .....
/ ..... ....# ...#. ..#.. .#... #.... .....
. ..... ..... ..... ..... ..... .##.. .##..
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
= ..... ..... ##### ..... ##### ..... .....
% ##... ##..# ...#. ..#.. .#... #..## ...##
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
, ..... ..... ..... ..... .##.. ..#.. .#...
_ ..... ..... ..... ..... ..... ..... #####
: ..... .##.. .##.. ..... .##.. .##.. .....
"""
_FONT = {line[0]: line[2:].split() for line in _FONT_TEXT.strip().splitlines()}
_FONT[" "] = ["....."] * 7

_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 0),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
]


class Canvas:
    """An RGB raster with lines, rectangles and text; :meth:`save` writes a PNG."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color: tuple[int, int, int], size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx - size // 2, y + dy - size // 2
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = 3 * (py * self.width + px)
                    self._pixels[i : i + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int], width: int = 1) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for s in range(steps + 1):
            t = s / steps
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), color, width)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                self.dot(x, y, color)

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int] = (0, 0, 0), scale: int = 1) -> None:
        for k, ch in enumerate(text.upper()):
            glyph = _FONT.get(ch, _FONT["."])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        for sy in range(scale):
                            for sx in range(scale):
                                self.dot(x + (6 * k + col) * scale + sx, y + row * scale + sy, color)

    @staticmethod
    def text_width(text: str, scale: int = 1) -> int:
        return 6 * len(text) * scale

    def save(self, path: Path) -> None:
        raw = b"".join(
            b"\x00" + bytes(self._pixels[3 * y * self.width : 3 * (y + 1) * self.width]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        png = (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
        )
        Path(path).write_bytes(png)


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _label(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def plot_samples_per_s(
    series: dict[str, list[tuple[float, float]]], path: Path, title: str = "", width: int = 1000, height: int = 620
) -> Path:
    """Log-log lines of ``series`` (name -> ``[(history length, samples/s), ...]``) to ``path``."""
    canvas = Canvas(width, height)
    points = [p for pts in series.values() for p in pts if p[1] > 0]
    left, right, top, bottom = 80, width - 250, 40, height - 60
    canvas.text(left, 12, title, scale=2 if Canvas.text_width(title, 2) < width - left - 10 else 1)
    if not points:
        canvas.save(path)
        return Path(path)
    xs = sorted({p[0] for p in points})
    y_lo, y_hi = min(p[1] for p in points) / 1.3, max(p[1] for p in points) * 1.3
    x_lo, x_hi = xs[0] / 1.5, xs[-1] * 1.5

    def px(x: float) -> float:
        return left + (math.log(x) - math.log(x_lo)) / (math.log(x_hi) - math.log(x_lo)) * (right - left)

    def py(y: float) -> float:
        return bottom - (math.log(y) - math.log(y_lo)) / (math.log(y_hi) - math.log(y_lo)) * (bottom - top)

    grid = (225, 225, 225)
    for y in _log_ticks(y_lo, y_hi):
        canvas.line(left, py(y), right, py(y), grid)
        label = _label(y)
        canvas.text(left - 8 - Canvas.text_width(label), round(py(y)) - 3, label)
    for x in xs:
        canvas.line(px(x), top, px(x), bottom, grid)
        label = _label(x)
        canvas.text(round(px(x)) - Canvas.text_width(label) // 2, bottom + 8, label)
    canvas.line(left, bottom, right, bottom, (0, 0, 0))
    canvas.line(left, top, left, bottom, (0, 0, 0))
    canvas.text((left + right) // 2 - 60, bottom + 28, "history length L (log)")
    canvas.text(8, top - 14, "samples/s (log)")
    for i, (name, pts) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        pts = [p for p in pts if p[1] > 0]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            canvas.line(px(x0), py(y0), px(x1), py(y1), color, width=2)
        for x, y in pts:
            canvas.dot(round(px(x)), round(py(y)), color, size=6)
        ly = top + 14 * i
        canvas.rect(right + 20, ly, right + 32, ly + 6, color)
        canvas.text(right + 38, ly, name)
    canvas.save(path)
    return Path(path)


def plot_by_category(
    series: dict[str, list[tuple[str, float]]],
    path: Path,
    title: str = "",
    y_label: str = "",
    width: int = 1000,
    height: int = 620,
) -> Path:
    """Lines of ``series`` (name -> ``[(category, value), ...]``, categories in order along x, a
    linear y axis; NaN values are left out) to ``path``."""
    canvas = Canvas(width, height)
    left, right, top, bottom = 80, width - 330, 40, height - 60
    canvas.text(left, 12, title, scale=2 if Canvas.text_width(title, 2) < width - left - 10 else 1)
    categories = list(dict.fromkeys(c for pts in series.values() for c, _ in pts))
    values = [v for pts in series.values() for _, v in pts if v == v]
    if not values or not categories:
        canvas.save(path)
        return Path(path)
    pad = max((max(values) - min(values)) * 0.1, 1e-3)
    y_lo, y_hi = min(values) - pad, max(values) + pad

    def px(i: int) -> float:
        return left + (i + 0.5) / len(categories) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    grid = (225, 225, 225)
    for k in range(6):
        y = y_lo + (y_hi - y_lo) * k / 5
        canvas.line(left, py(y), right, py(y), grid)
        label = f"{y:.3f}"
        canvas.text(left - 8 - Canvas.text_width(label), round(py(y)) - 3, label)
    for i, c in enumerate(categories):
        canvas.line(px(i), top, px(i), bottom, grid)
        canvas.text(round(px(i)) - Canvas.text_width(c) // 2, bottom + 8, c)
    canvas.line(left, bottom, right, bottom, (0, 0, 0))
    canvas.line(left, top, left, bottom, (0, 0, 0))
    canvas.text(8, top - 14, y_label)
    for n, (name, pts) in enumerate(series.items()):
        color = _PALETTE[n % len(_PALETTE)]
        xy = [(px(categories.index(c)), py(v)) for c, v in pts if v == v]
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            canvas.line(x0, y0, x1, y1, color, width=2)
        for x, y in xy:
            canvas.dot(round(x), round(y), color, size=6)
        ly = top + 14 * n
        canvas.rect(right + 20, ly, right + 32, ly + 6, color)
        canvas.text(right + 38, ly, name)
    canvas.save(path)
    return Path(path)
