"""Attention flow: a window of layers x every query head, one cell per head drawn with
the ramp and the heat colour of the chosen metric; heads grouped by the KV head they
share (GQA); the selected (layer, head) cell highlighted."""

from __future__ import annotations

import math

import numpy as np

from dash import state, theme
from dash.panels.base import Panel, Row, flash, waiting
from dash.safe_text import clip, safe
from model import telemetry as tm

METRIC_LABELS = {
    "max_weight": "max weight",
    "entropy": "entropy",
    "vision_mass": "vision mass",
    "sink_mass": "sink mass",
}
LABEL_COLS = 5  # "L12 "
VALUE_COLS = 8


def valid_stats(view: state.View) -> tm.HeadStats | None:
    """The latest per-head stats when they have the run's [L, H] shape."""
    stats, run = view.stats, view.run
    if stats is None or run is None:
        return None
    if np.shape(stats.max_weight) != (run.num_layers, run.num_heads):
        return None
    return stats


def context_len(view: state.View) -> int:
    source = view.decode or view.prefill
    return source.cache_len if source is not None else 0


def normalised(stats: tm.HeadStats, metric: str, context: int) -> np.ndarray:
    """The metric as intensity in [0, 1]: weights and masses as they are, entropy divided
    by its largest possible value ln(context)."""
    values = np.asarray(getattr(stats, metric), dtype=np.float64)
    if metric == "entropy":
        return values / math.log(context) if context > 1 else np.zeros_like(values)
    return values


def group_size(run: tm.RunInfo) -> int:
    """Query heads per KV head."""
    return max(1, run.num_heads // max(1, run.num_kv_heads))


def cell_cols(heads: int, groups: int, room: int) -> int:
    """Widest cell (3, 2 or 1 columns) that fits every head plus one gap per group."""
    for cw in (3, 2, 1):
        if heads * cw + groups - 1 <= room:
            return cw
    return 1


class AttentionFlow(Panel):
    def heading(self, frame: state.Frame) -> Row:
        run, ui = frame.view.run, frame.ui
        if run is None:
            return [("title", "ATTENTION FLOW")]
        return [
            ("title", "ATTENTION FLOW"),
            ("label", f"  {run.num_layers} layers × {run.num_heads} heads"),
            ("label", " · metric "),
            ("value", METRIC_LABELS[ui.metric_name]),
        ]

    def status(self, frame: state.Frame) -> Row:
        return flash(frame, "flash_active", "ACTIVE") if frame.view.active_phase else []

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view, ui = frame.view, frame.ui
        stats = valid_stats(view)
        if stats is None:
            return waiting("waiting for per-head attention telemetry…")
        run = view.run
        heads, per_group = run.num_heads, group_size(run)
        groups = math.ceil(heads / per_group)
        cw = cell_cols(heads, groups, cols - LABEL_COLS - VALUE_COLS)
        values = normalised(stats, ui.metric_name, context_len(view))
        raw = np.asarray(getattr(stats, ui.metric_name), dtype=np.float64)

        labels: Row = [(None, " " * LABEL_COLS)]
        for g in range(groups):
            span = min(per_group, heads - g * per_group) * cw
            labels += [("label", clip(f"kv{g}", span, "").ljust(span)), (None, " ")]
        index: Row = [(None, " " * LABEL_COLS)]
        for h in range(heads):
            index += [("dim", str(h).rjust(cw)[-cw:] if cw > 1 else str(h % 10))]
            if (h + 1) % per_group == 0:
                index.append((None, " "))
        lines = [labels, index]
        for layer in state.visible_layers(ui, run.num_layers, rows - 3):
            row: Row = [("label" if layer != ui.layer else "value", f"L{layer:<3d} ")]
            for h in range(heads):
                x = float(values[layer, h])
                attr = "selected" if (layer, h) == (ui.layer, ui.head) else theme.heat_attr(x)
                row.append((attr, theme.ramp_char(x) * cw))
                if (h + 1) % per_group == 0 and h + 1 < heads:
                    row.append((None, " "))
            row.append(("dim", f" {raw[layer, ui.head]:7.3f}"))
            lines.append(row)
        lines.append(self._legend(frame, stats, raw))
        return lines

    def _legend(self, frame: state.Frame, stats: tm.HeadStats, raw: np.ndarray) -> Row:
        view, ui = frame.view, frame.ui
        pos = int(stats.argmax[ui.layer, ui.head])
        text = token_text(view, pos)
        kv = ui.head // group_size(view.run)
        return [
            ("label", " ░<.25 ▒<.5 ▓<.75 █  "),
            ("value", f"L{ui.layer} H{ui.head}"),
            ("label", f" = {raw[ui.layer, ui.head]:.3f} · kv head {kv} · argmax pos {pos} "),
            ("token", '"' + clip(text, 12) + '"'),
        ]


def token_text(view: state.View, position: int) -> str:
    """Safe text of the token at a context position: prompt, then generated tokens."""
    prompt = view.prefill.tokens if view.prefill is not None else None
    if prompt is not None and position < len(prompt):
        return safe(prompt[position])
    if prompt is None:
        return "?"
    step = position - len(prompt)
    for s, text in view.generated:
        if s == step:
            return safe(text)
    return "·"
