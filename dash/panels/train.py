"""Train: what the GRPO step is doing now (phase and progress: prompts sampled ``n/P``,
optimizer updates made), then the metrics RL users read, each with its value at the last
update and a sparkline over the run (oldest left). Names are those of ``TrainEvent``: TRL's
GRPO metrics (``rewards/<type>``, ``frac_reward_zero_std``, ``completions/...``, ``kl``,
``entropy``, ``clip_ratio``, ``grad_norm``) and verl's (``advantages/...``, ``timing_s/...``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dash import state
from dash.panels.base import Panel, Row, flash, row_width, waiting
from dash.panels.header import SPARK
from model import telemetry as tm

Metric = tuple[str, Callable[[tm.TrainEvent], float | None]]
PROGRESS = {"decode": "sampling prompts", "reward": "rewarding", "update": "optimizer updates"}


def _field(name: str) -> Callable[[tm.TrainEvent], float | None]:
    return lambda t: getattr(t, name)


def _entry(mapping: str, key: str) -> Callable[[tm.TrainEvent], float | None]:
    return lambda t: (getattr(t, mapping) or {}).get(key)


def metric_groups(train: tm.TrainEvent) -> list[tuple[str, list[Metric]]]:
    """(prefix, metrics) rows of the panel; the reward types and timings are the latest
    update's."""
    return [
        (
            "",
            [
                ("reward", _field("reward_mean")),
                ("reward_std", _field("reward_std")),
                ("frac_reward_zero_std", _field("frac_reward_zero_std")),
            ],
        ),
        ("rewards/", [(q, _entry("reward_by_type", q)) for q in train.reward_by_type or {}]),
        (
            "completions/",
            [
                ("mean_length", _field("completions_mean_length")),
                ("max_length", _field("completions_max_length")),
                ("clipped_ratio", _field("completions_clipped_ratio")),
            ],
        ),
        (
            "",
            [
                ("kl", _field("kl")),
                ("entropy", _field("entropy")),
                ("clip_ratio", _field("clip_ratio")),
                ("grad_norm", _field("grad_norm")),
            ],
        ),
        (
            "advantages/",
            [(k, _field(f"advantages_{k}")) for k in ("min", "mean", "max")],
        ),
        ("timing_s/", [(k, _entry("timing_s", k)) for k in train.timing_s or {}]),
    ]


def run_sparkline(values: list[float], cols: int) -> str:
    """The whole run in ``cols`` cells: the values averaged in ``cols`` consecutive bins
    (fewer values than cells: one cell each), scaled between the bins' min and max (the
    lowest glyph for a run that did not move)."""
    finite = np.asarray([v for v in values if state.finite(v)], np.float64)
    if finite.size > cols:
        finite = np.asarray([b.mean() for b in np.array_split(finite, cols)])
    if finite.size == 0:
        return ""
    lo, span = finite.min(), np.ptp(finite)
    if span <= 1e-6 * max(1.0, float(np.abs(finite).max())):  # float noise, e.g. a mean of 0
        return SPARK[0] * finite.size
    return "".join(SPARK[min(7, int((v - lo) / span * 8))] for v in finite)


def short(x: float | None) -> str:
    """A value with three decimals (one from 10, none from 100), or an em dash."""
    if not state.finite(x):
        return "—"
    text = f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def progress(frame: state.Frame) -> Row:
    """What the loop does now: the active phase and its progress, or what ``s`` does."""
    view, ui = frame.view, frame.ui
    phase = view.active_phase
    if phase is not None:
        p = view.phases.get(phase, state.PhaseTime())
        row = [*flash(frame, "flash_active", phase.upper()), ("label", " ")]
        if p.total:
            row += [("label", f"{PROGRESS.get(phase, phase)} "), ("value", f"{p.done}/{p.total}")]
        return row
    answered = view.decode is not None and view.decode.done
    if ui.paused and answered and view.run is not None and view.run.mode == "grpo":
        return [
            ("warn", "⏸ after the watched answer: "),
            ("label", "s samples the other prompts, rewards them and updates"),
        ]
    return [("dim", "between phases")]


def _cells(metrics: list[Metric], history: tuple[tm.TrainEvent, ...], spark: int) -> list[Row]:
    latest = history[-1]
    cells = []
    for name, get in metrics:
        values = [v for v in (get(t) for t in history) if v is not None]
        cells.append(
            [
                ("label", f"{name} "),
                ("value", short(get(latest))),
                ("dim", " "),
                ("bar", run_sparkline(values, spark).ljust(spark)),
            ]
        )
    return cells


def metric_lines(frame: state.Frame, cols: int) -> list[Row]:
    """The metrics of the last update, each with its sparkline, laid out in ``cols``: one
    line per group of metrics, wrapped when they do not fit."""
    view = frame.view
    spark = 8 if cols >= 100 else 6 if cols >= 70 else 5
    lines: list[Row] = []
    for prefix, metrics in metric_groups(view.train):
        if not metrics:
            continue
        line: Row = [("title", prefix)] if prefix else []
        for cell in _cells(metrics, view.train_history, spark):
            if row_width(line) > len(prefix) and row_width(line) + row_width(cell) + 2 > cols:
                lines.append(line)
                line = [(None, " " * len(prefix))]
            line += [(None, "  ")] if row_width(line) > len(prefix) else []
            line += cell
        lines.append(line)
    return lines


class Train(Panel):
    # the last layout of the metrics: (train history, cols, lines); the history changes once
    # an update, the frames in between (and ``rows_wanted`` in each) reuse it
    _laid_out: tuple = ((), -1, [])

    def _metric_lines(self, frame: state.Frame, cols: int) -> list[Row]:
        history = frame.view.train_history
        if self._laid_out[0] is not history or self._laid_out[1] != cols:
            self._laid_out = (history, cols, metric_lines(frame, cols))
        return self._laid_out[2]

    def heading(self, frame: state.Frame) -> Row:
        train = frame.view.train
        head: Row = [("title", "TRAIN")]
        if train is not None:
            head.append(("label", f"  step {train.step} · {len(frame.view.train_history)} kept"))
        return head

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view = frame.view
        lines: list[Row] = [progress(frame)]
        if view.train is None:
            if view.run is not None and view.run.mode == "inference":
                return lines + [[("dim", "inference run: no updates")]]
            return lines + waiting("waiting for the first update…")
        return lines + self._metric_lines(frame, cols)

    def rows_wanted(self, frame: state.Frame, cols: int) -> int:
        """Rows (borders included) that show every metric at ``cols`` columns."""
        if frame.view.train is None:
            return 4
        return 3 + len(self._metric_lines(frame, cols - 2))
