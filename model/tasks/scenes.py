"""Scenes of 1-4 coloured shapes on a 3x3 grid, sampled from a seeded RNG and drawn with PIL.

A scene is pure data (which shape, which colour, which grid cell); ``draw_scene`` turns it into
a 256x256 RGB image, so with patch 16 and merge 2 the model sees 8x8 merged vision tokens and
each grid cell spans about 2.7x2.7 of them.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import PIL.Image
import PIL.ImageDraw

KINDS = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 20),
}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
IMAGE_SIZE = 256
BACKGROUND = (245, 245, 245)
MAX_SHAPES = 4
MIN_COVER = 0.1  # shape_cells: the share of a block's pixels a shape must cover


@dataclasses.dataclass(frozen=True, order=True)
class Shape:
    row: int  # 0..2, top to bottom
    col: int  # 0..2, left to right
    color: str
    kind: str

    @property
    def name(self) -> str:
        """'red circle'"""
        return f"{self.color} {self.kind}"

    @property
    def place(self) -> str:
        """'top left'"""
        return f"{ROWS[self.row]} {COLUMNS[self.col]}"


@dataclasses.dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]  # sorted by (row, col); at most one shape per cell

    def key(self) -> str:
        """Canonical text of the scene, e.g. 'top left red circle; bottom right blue square'."""
        return "; ".join(f"{s.place} {s.name}" for s in self.shapes)


def sample_scene(rng: random.Random, n_shapes: int) -> Scene:
    """``n_shapes`` shapes in distinct cells, each with a random kind and colour."""
    cells = rng.sample(range(len(ROWS) * len(COLUMNS)), n_shapes)
    shapes = []
    for cell in cells:
        row, col = divmod(cell, len(COLUMNS))
        shapes.append(Shape(row, col, rng.choice(list(COLORS)), rng.choice(KINDS)))
    return Scene(tuple(sorted(shapes)))


def cell_center(row: int, col: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Pixel (x, y) of the centre of a grid cell."""
    cell = size / len(COLUMNS)
    return round((col + 0.5) * cell), round((row + 0.5) * cell)


def draw_scene(scene: Scene, size: int = IMAGE_SIZE) -> PIL.Image.Image:
    """RGB image ``size`` x ``size``: each shape centred in its cell, radius 30% of a cell."""
    image = PIL.Image.new("RGB", (size, size), BACKGROUND)
    draw = PIL.ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, COLORS[shape.color], size)
    return image


def _draw_shape(draw: PIL.ImageDraw.ImageDraw, shape: Shape, fill, size: int) -> None:
    x, y = cell_center(shape.row, shape.col, size)
    r = round(0.3 * size / len(COLUMNS))
    if shape.kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape.kind == "square":
        s = round(0.85 * r)
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    else:  # triangle, pointing up
        base = y + round(0.8 * r)
        draw.polygon([(x, y - r), (x - r, base), (x + r, base)], fill=fill)


def shape_cells(shapes: tuple[Shape, ...], grid: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """``[grid, grid]`` bool: the blocks of a ``grid`` x ``grid`` tiling of the image (the
    model's merged vision tokens: 8 x 8 for 256 pixels, patch 16, merge 2) that ``shapes``
    cover by at least ``MIN_COVER`` of their pixels."""
    mask = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(mask)
    for shape in shapes:
        _draw_shape(draw, shape, 255, size)
    block = size // grid
    covered = np.asarray(mask, np.float32).reshape(grid, block, grid, block).mean(axis=(1, 3))
    return covered >= 255 * MIN_COVER
