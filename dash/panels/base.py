"""What every panel shares: a titled box drawn from rows of urwid text markup.

A panel is a box widget. ``show(frame)`` hands it the current ``Frame``; ``render``
asks the subclass for ``body(frame, cols, rows)`` (a list of rows, each a list of
``(attr, text)`` segments) and draws it inside a border whose top line carries the
panel's ``heading`` on the left and ``status`` (flash indicators) on the right.
Rows are cut to the width by display columns and padded, so a panel always renders
exactly the size it was given. Untrusted text must already have gone through
``dash.safe_text.safe``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable

import urwid
from urwid.str_util import calc_text_pos
from urwid.util import apply_target_encoding, get_encoding

from dash import state
from dash.safe_text import safe, width

Segment = tuple[Hashable, str]
Row = list[Segment]


def empty_frame() -> state.Frame:
    return state.Frame(state.View(), state.UiState(), state.Meters())


def row_width(row: Row) -> int:
    return sum(width(text) for _, text in row)


def fit(row: Row, cols: int, pad: bool = True, pad_attr: Hashable = None) -> Row:
    """``row`` cut to ``cols`` display columns (a wide character that would straddle the
    edge is left out) and, with ``pad``, padded with spaces (in ``pad_attr``) to exactly
    ``cols``."""
    out: Row = []
    used = 0
    for attr, text in row:
        if used >= cols:
            break
        w = width(text)
        if used + w > cols:
            end, w = calc_text_pos(text, 0, len(text), cols - used)
            text = text[:end]
        if text:
            out.append((attr, text))
            used += w
    if pad and used < cols:
        out.append((pad_attr, " " * (cols - used)))
    return out


@functools.lru_cache(maxsize=8192)
def _encode(segment: str, encoding: str) -> tuple[bytes, tuple]:
    """``segment`` in the screen's ``encoding`` (urwid's target) and its character-set runs;
    cached because borders, cells and labels repeat every frame."""
    data, cs = apply_target_encoding(segment)
    return data, tuple(cs)


def rows_canvas(rows: list[Row], cols: int, nrows: int, pad_attr: Hashable = None) -> urwid.Canvas:
    """A canvas of exactly ``cols`` x ``nrows`` from the first ``nrows`` rows.

    Each row is fitted to ``cols`` columns and encoded segment by segment straight into a
    ``TextCanvas``: the rows are laid out already, so urwid's text layout (``urwid.Text``)
    would only repeat the work; skipping it halves the cost of a frame.
    """
    if cols <= 0 or nrows <= 0:
        return urwid.SolidCanvas(" ", max(cols, 0), max(nrows, 0))
    rows = rows[:nrows] + [[] for _ in range(nrows - len(rows))]
    text: list[bytes] = []
    attrs: list[list[tuple[Hashable, int]]] = []
    charsets: list[list] = []
    encoding = get_encoding()
    for row in rows:
        encoded: list[bytes] = []
        attr: list[tuple[Hashable, int]] = []
        charset: list = []
        for a, segment in fit(row, cols, pad_attr=pad_attr):
            data, cs = _encode(segment, encoding)
            if data:
                encoded.append(data)
                attr.append((a, len(data)))
                charset.extend(cs)
        text.append(b"".join(encoded))
        attrs.append(attr)
        charsets.append(charset)
    return urwid.TextCanvas(text, attrs, charsets, maxcol=cols)


def flash(frame: state.Frame, attr: str, text: str) -> Row:
    """A flash indicator such as ``⚡ WRITE``: drawn on the on half of each flash period,
    blank (same width) on the off half so the layout does not move."""
    if frame.meters.flash_on:
        return [(attr, f"⚡ {text}")]
    return [(None, " " * width(f"⚡ {text}"))]


def bar(fraction: float, cols: int, attr: str = "bar", empty: str = "bar_empty") -> Row:
    """A horizontal bar of ``cols`` cells, ``fraction`` of them full (eighths drawn)."""
    fraction = 0.0 if math.isnan(fraction) else min(1.0, max(0.0, fraction))  # NaN -> 0
    eighths = round(fraction * cols * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part and full < cols else "")
    return [(attr, filled), (empty, "░" * (cols - width(filled)))]


def number(x: float | None, fmt: str = "{:.3f}") -> str:
    """A measured value, or an em dash when it has not arrived."""
    return fmt.format(x) if state.finite(x) else "—"


def waiting(text: str = "waiting for telemetry…") -> list[Row]:
    return [[("dim", text)]]


class Panel(urwid.Widget):
    """A titled box drawn from a ``Frame``; subclasses define ``body``."""

    _sizing = frozenset([urwid.Sizing.BOX])
    _selectable = False
    title = ""

    def __init__(self) -> None:
        super().__init__()
        self.frame = empty_frame()

    def show(self, frame: state.Frame) -> None:
        self.frame = frame
        self._invalidate()

    def heading(self, frame: state.Frame) -> Row:
        return [("title", self.title)]

    def status(self, frame: state.Frame) -> Row:
        return []

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        raise NotImplementedError

    def _top(self, cols: int) -> Row:
        """``┌─ heading ──── status ─┐``; the status goes first when room runs out."""
        title, status = self.heading(self.frame), self.status(self.frame)
        if row_width(title) + row_width(status) + 7 > cols:
            status = []
        title = fit(title, cols - 6, pad=False)
        fill = cols - 6 - row_width(title) - row_width(status)
        return [("border", "┌─ "), *title, ("border", " " + "─" * fill), *status, ("border", "─┐")]

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:
        cols, rows = size
        if cols < 4 or rows < 2:
            return rows_canvas([], cols, rows)
        inner = cols - 2
        lines = [self._top(cols)]
        try:
            body = self.body(self.frame, inner, rows - 2)
        except Exception as e:  # malformed telemetry (e.g. a hand-written recording)
            body = [[("error", safe(f"cannot draw this panel: {type(e).__name__}: {e}"))]]
        for row in body[: rows - 2]:
            lines.append([("border", "│"), *fit(row, inner), ("border", "│")])
        for _ in range(rows - 2 - min(len(body), rows - 2)):
            lines.append([("border", "│"), (None, " " * inner), ("border", "│")])
        lines.append([("border", "└" + "─" * inner + "┘")])
        return rows_canvas(lines, cols, rows)
