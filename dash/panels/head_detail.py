"""Head detail for the selected ``L<layer> H<head>``: the current token's attention over
the whole context. Text tokens form a strip coloured by weight; each image's tokens form
a heatmap on its merged h x w grid, drawn next to the image itself in half blocks where
the terminal has 256 or more colours. Where the task knows what the question asks about
(``ImageInfo.target_cells``), those cells are outlined ``[ ]`` and their share of the
image's weight is given: ground truth next to the model's attention."""

from __future__ import annotations

import functools
import math

import numpy as np

from dash import state, theme
from dash.panels.attention_flow import group_size, token_text
from dash.panels.base import Panel, Row, row_width, waiting
from dash.safe_text import clip, width
from model import telemetry as tm

TOKEN_COLS = 10  # widest token text in the strip


def image_grid(row: np.ndarray, image: tm.ImageInfo) -> np.ndarray | None:
    """Attention on an image's tokens as its merged grid ``[h/m, w/m]`` (summed over t),
    or None when the span does not match the grid or lies outside the row."""
    t, h, w = image.grid_thw
    m = max(1, image.merge_size)
    start, end = image.span
    gh, gw = h // m, w // m
    if gh * gw * t == 0 or end > row.size or end - start != t * gh * gw:
        return None
    return row[start:end].reshape(t, gh, gw).sum(axis=0)


def pool(grid: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor`` x ``factor`` blocks (zero padded at the edges)."""
    if factor <= 1:
        return grid
    gh, gw = grid.shape
    ph, pw = -gh % factor, -gw % factor
    padded = np.pad(grid, ((0, ph), (0, pw)))
    return padded.reshape(padded.shape[0] // factor, factor, -1, factor).sum(axis=(1, 3))


def thumbnail(pixels, rows: int, cols: int, depth: int) -> list[Row] | None:
    """The image resampled to ``cols`` x ``2 * rows`` pixels, drawn as ``▀`` cells whose
    foreground is the upper pixel and background the lower one."""
    pixels = np.asarray(pixels)
    if depth < theme.COLORS_256 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        return None
    pixels = pixels.astype(np.uint8)
    return _thumbnail(pixels.tobytes(), pixels.shape, rows, cols, depth)


@functools.lru_cache(maxsize=16)
def _thumbnail(data: bytes, shape: tuple, rows: int, cols: int, depth: int) -> list[Row]:
    """``thumbnail`` of the ``[h, w, 3]`` uint8 image ``data``. Cached: the same image is
    drawn every frame of an episode, and a display attribute per cell is costly to build."""
    pixels = np.frombuffer(data, np.uint8).reshape(shape)
    ys = ((np.arange(2 * rows) + 0.5) * pixels.shape[0] / (2 * rows)).astype(int)
    xs = ((np.arange(cols) + 0.5) * pixels.shape[1] / cols).astype(int)
    small = pixels[ys][:, xs]
    out = []
    for r in range(rows):
        top, bottom = small[2 * r], small[2 * r + 1]
        out.append(
            [(theme.pixel_attr(tuple(top[c]), tuple(bottom[c]), depth), "▀") for c in range(cols)]
        )
    return out


def target_mask(image: tm.ImageInfo, shape: tuple[int, int]) -> np.ndarray | None:
    """``[h/m, w/m]`` bool: the image's target cells on its merged grid, or None when it
    has none (or they lie outside the grid)."""
    cells = image.target_cells
    if cells is None or len(cells) == 0:
        return None
    cells = np.asarray(cells).reshape(-1, 2)
    if (cells < 0).any() or (cells >= np.asarray(shape)).any():
        return None
    mask = np.zeros(shape, bool)
    mask[cells[:, 0], cells[:, 1]] = True
    return mask


def _cell(x: float, width: int, target: bool) -> tuple[str, str]:
    """A heatmap cell ``width`` columns wide; a target cell's edges are ``[`` and ``]``."""
    glyphs = theme.ramp_char(x) * width
    if target:
        glyphs = "[" + glyphs[1:-1] + "]"
    return theme.heat_attr(x), glyphs


def _image_block(frame, row, index, image, cols, rows) -> list[Row]:
    grid = image_grid(row, image)
    if grid is None:
        return [[("dim", f"image {index}: attention row does not cover its tokens")]]
    mass = float(grid.sum())
    targets = target_mask(image, grid.shape)
    gh, gw = grid.shape
    room_rows, room_cols = max(1, rows - 1), max(2, (cols - 4) // 2)
    factor = max(1, math.ceil(gh / room_rows), math.ceil(2 * gw / room_cols))
    on_target = None if targets is None else float(grid[targets].sum())
    grid = pool(grid, factor)
    if targets is not None:
        targets = pool(targets.astype(np.float64), factor) > 0
    # a small grid is drawn with bigger cells: `scale` rows x 2 * `scale` columns each
    scale = max(1, min(room_rows // grid.shape[0], room_cols // (2 * grid.shape[1]), 4))
    peak = float(grid.max()) or 1.0
    caption = f"image {index} · merged {gh}×{gw}"
    caption += f" (pooled {factor}×{factor})" if factor > 1 else ""
    head: Row = [("label", caption), ("label", " · Σ weight "), ("value", f"{mass:.3f}")]
    if on_target is None:
        head.append(("dim", " · colour = weight / max"))
    else:  # the outlined cells: the shapes the question asks about (ground truth)
        share = on_target / mass if mass > 0 else float("nan")
        head += [("label", " · [ ] asked shapes "), ("value", f"{share:.2f}")]
    lines: list[Row] = [head]
    out_rows, out_cols = grid.shape[0] * scale, grid.shape[1] * 2 * scale
    thumb = None
    if image.pixels is not None:
        thumb = thumbnail(image.pixels, out_rows, out_cols, frame.meters.colors)
    for r in range(out_rows):
        cells: Row = [(None, " ")]
        for c in range(grid.shape[1]):
            x = float(grid[r // scale, c]) / peak
            target = targets is not None and bool(targets[r // scale, c])
            cells.append(_cell(x, 2 * scale, target))
        if thumb is not None:
            cells += [(None, "  "), *thumb[r]]
        lines.append(cells)
    if image.pixels is not None and thumb is None and 1 < frame.meters.colors < theme.COLORS_256:
        lines.append([("dim", " (the image thumbnail needs a 256-colour terminal)")])
    return lines


def _strip(view: state.View, row: np.ndarray, images, cols: int, rows: int) -> list[Row]:
    """Context tokens in order, each coloured by its weight relative to the largest text
    weight; an image's tokens appear as one ``[img i Σw]`` chunk. The tail is kept when
    the context does not fit."""
    if rows <= 0:
        return []
    spans = {img.span[0]: (i, img.span[1]) for i, img in enumerate(images)}
    text_weights = row.copy()
    for img in images:
        text_weights[img.span[0] : img.span[1]] = 0.0
    peak = float(text_weights.max()) or 1.0
    chunks: list[tuple[str, str]] = []
    pos = 0
    while pos < row.size:
        if pos in spans:
            i, end = spans[pos]
            chunks.append(("label", f"[img{i} Σ{row[pos:end].sum():.2f}]"))
            pos = max(end, pos + 1)
            continue
        x = float(row[pos]) / peak
        chunks.append((theme.heat_attr(x), clip(token_text(view, pos), TOKEN_COLS)))
        pos += 1
    lines: list[Row] = []
    line: Row = []
    for attr, text in reversed(chunks):  # fill from the end: the latest tokens stay
        if line and row_width(line) + width(text) + 1 > cols:
            lines.append(line)
            line = []
            if len(lines) == rows:
                break
        line = [(attr, text), (None, " "), *line]
    else:
        if line:
            lines.append(line)
    shown = sum(1 for line in lines for a, _ in line if a is not None)
    if shown < len(chunks) and lines:
        lines[-1] = [("dim", f"…{len(chunks) - shown} earlier "), *lines[-1]]
    return list(reversed(lines))


class HeadDetail(Panel):
    def heading(self, frame: state.Frame) -> Row:
        ui, run = frame.ui, frame.view.run
        head = [("title", "HEAD DETAIL "), ("value", f"L{ui.layer} H{ui.head}")]
        if run is not None:
            head.append(("label", f" · kv head {ui.head // group_size(run)}"))
        return head

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view, ui = frame.view, frame.ui
        e = view.decode
        row = None if e is None else e.attn_row()
        if row is None or row.size == 0:
            return waiting("waiting for the first decode step's attention row…")
        row = row.astype(np.float64)
        lines: list[Row] = []
        if (e.layer, e.head) != (ui.layer, ui.head):
            why = (
                "the row the recording holds"
                if frame.meters.replay
                else ("the selected head's row comes with the next decode step")
            )
            lines.append([("warn", f"showing L{e.layer} H{e.head}: "), ("dim", why)])
        lines.append(self._summary(view, row))
        images = view.prefill.images if view.prefill is not None else ()
        images = tuple(img for img in images if img.span[1] <= row.size)
        strip_rows = max(2, (rows - len(lines)) // 4)
        for i, image in enumerate(images):
            room = rows - len(lines) - strip_rows - 1
            if room < 2:
                break
            lines += _image_block(frame, row, i, image, cols, room)
        lines.append([("label", "context (colour = weight / largest text weight):")])
        lines += _strip(view, row, images, cols, rows - len(lines))
        return lines

    def _summary(self, view: state.View, row: np.ndarray) -> Row:
        top = np.argsort(row)[::-1][:3]
        sink = float(row[0]) if row.size else float("nan")
        out: Row = [
            ("label", f"{row.size} positions · sink "),
            ("value", f"{sink:.3f}"),
            ("label", " · top: "),
        ]
        for rank, pos in enumerate(top):
            out += [
                ("dim", " · ") if rank else ("dim", ""),
                ("token", '"' + clip(token_text(view, int(pos)), 10) + '"'),
                ("label", f"@{int(pos)} "),
                ("value", f"{row[pos]:.3f}"),
            ]
        return out
