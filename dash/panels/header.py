"""The header bar: run identity, RL metrics, measured throughput, the app's meters and
notices (an attached viewer's link to its producer, random weights, pause, replay source)."""

from __future__ import annotations

import urwid

from dash import state
from dash.panels.base import Row, fit, number, row_width, rows_canvas
from dash.safe_text import safe

SPARK = "▁▂▃▄▅▆▇█"


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def sparkline(values: tuple[float, ...], cols: int) -> str:
    """The last ``cols`` values as ``▁..█`` scaled between their min and max."""
    values = tuple(v for v in values if state.finite(v))[-cols:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(7, int((v - lo) / span * 8))] for v in values)


def _metrics(frame: state.Frame, cols: int) -> Row:
    """Identity and metrics; on a narrow screen the brand goes and separators shrink."""
    row = _metrics_row(frame, " │ ", brand=True)
    if row_width(row) > cols:
        row = _metrics_row(frame, "│", brand=False)
    return row


def _metrics_row(frame: state.Frame, separator: str, brand: bool) -> Row:
    view, meters = frame.view, frame.meters
    run, train = view.run, view.train
    sep = ("header_dim", separator)
    row: Row = [("header", " QWEN3-VL DASH"), sep] if brand else [("header", " ")]
    if run is not None:
        row += [("header", safe(run.model_name)), ("header_dim", f" · {safe(run.mode)}")]
    reward = "—"
    if train is not None and state.finite(train.reward_mean):
        reward = f"{train.reward_mean:.3f} ± {number(train.reward_std)}"
    row += [
        sep,
        ("header_dim", "step "),
        ("header", number(train.step if train else None, "{}")),
        sep,
        ("header_dim", "reward "),
        ("header", reward),
        sep,
        ("header_dim", "KL "),
        ("header", number(train.kl if train else None, "{:.4f}")),
        sep,
        ("header_dim", "loss "),
        ("header", number(train.loss if train else None, "{:.4f}")),
        sep,
        ("header", number(view.tokens_per_s, "{:.1f}")),
        ("header_dim", " tok/s"),
        sep,
        ("header_dim", "elapsed "),
        ("header", elapsed(meters.elapsed_s)),
    ]
    return row


def _notices(frame: state.Frame, cols: int) -> Row:
    view, ui, meters = frame.view, frame.ui, frame.meters
    left: Row = [("header_dim", " ")]
    if meters.link:
        left.append(("header" if meters.link_ok else "header_warn", f"● {safe(meters.link)} "))
    if view.run is not None and view.run.random_init:
        left.append(("header_warn", "⚠ random weights (not a trained checkpoint) "))
    if meters.status != "running":
        left.append(("header_warn", f"● {meters.status.upper()} "))
    if view.compiling:
        left.append(("header_warn", "⚙ COMPILING "))
    if view.notice:
        left.append(("header_warn", f"⚠ {safe(view.notice)} "))
    if ui.paused:
        left.append(("header_warn", "⏸ PAUSED (p resumes, s steps) "))
    if meters.source:
        left.append(("header_dim", safe(meters.source) + " "))
    trend = sparkline(view.reward_history, 24)
    if trend:
        left += [("header_dim", "reward trend "), ("header", trend + " ")]
    right: Row = []
    if meters.link:
        right += [("header_dim", "socket lost "), ("header", str(meters.socket_lost))]
        if meters.bad_messages:
            right += [("header_dim", " · bad "), ("header", str(meters.bad_messages))]
        right.append(("header_dim", " · "))
    right += [
        ("header_dim", "dropped "),
        ("header", str(meters.dropped)),
        ("header_dim", " · received "),
        ("header", f"{meters.receive_rate:.0f}/s "),
    ]
    gap = cols - row_width(left) - row_width(right)
    if gap < 1:
        return fit(right + left, cols, pad_attr="header")  # the meters matter more
    return left + [("header", " " * gap)] + right


class Header(urwid.Widget):
    """Two rows, full width, no border."""

    _sizing = frozenset([urwid.Sizing.BOX])
    _selectable = False
    ROWS = 2

    def __init__(self) -> None:
        super().__init__()
        self.frame = state.Frame(state.View(), state.UiState(), state.Meters())

    def show(self, frame: state.Frame) -> None:
        self.frame = frame
        self._invalidate()

    def rows_markup(self, cols: int) -> list[Row]:
        return [_metrics(self.frame, cols), _notices(self.frame, cols)]

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:
        cols, rows = size
        return rows_canvas(self.rows_markup(cols), cols, rows, pad_attr="header")
