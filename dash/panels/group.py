"""Group: the watched prompt's ``G`` answers as the last update scored them (reward,
advantage, length, a ``✂`` where the token limit cut the answer), flagged when their rewards
are all equal (no gradient from this group); the selected answer's tokens coloured by their
log-probability or entropy under the sampling policy (``e`` toggles)."""

from __future__ import annotations

import math

import numpy as np

from dash import state, theme
from dash.panels.base import Panel, Row, waiting
from dash.safe_text import clip, safe, width
from model import telemetry as tm

TOKEN_COLS = 12  # widest token text in the selected answer's line


def zero_spread(group: tm.GroupEvent) -> bool:
    """All ``G`` rewards equal: every advantage is 0 and the group teaches nothing."""
    rewards = np.asarray(group.rewards, np.float64)
    return rewards.size > 0 and float(np.ptp(rewards)) == 0.0


def token_values(group: tm.GroupEvent, sample: int, metric: str) -> np.ndarray | None:
    """``[n]`` log-probs or entropies of answer ``sample``'s tokens, or None if not sent."""
    values = group.logprobs if metric == "logprob" else group.entropies
    if values is None or not 0 <= sample < len(group.tokens) or sample >= len(values):
        return None
    return np.asarray(values[sample][: len(group.tokens[sample])], np.float64)


def intensity(value: float, metric: str, peak: float) -> float:
    """Colour intensity in [0, 1]: the token's probability (log-prob), or its entropy over
    the largest entropy of the group's tokens."""
    if metric == "logprob":
        return math.exp(min(value, 0.0))
    return value / peak if peak > 0 else 0.0


def _peak_entropy(group: tm.GroupEvent) -> float:
    if group.entropies is None:
        return 0.0
    lengths = [len(t) for t in group.tokens]
    values = [float(v) for row, n in zip(group.entropies, lengths, strict=False) for v in row[:n]]
    return max(values, default=0.0)


class Group(Panel):
    def heading(self, frame: state.Frame) -> Row:
        g = frame.view.group
        head: Row = [("title", "GROUP")]
        if g is not None:
            head.append(("label", f"  step {g.step} · {len(g.tokens)} answers"))
        return head

    def status(self, frame: state.Frame) -> Row:
        g = frame.view.group
        if g is not None and zero_spread(g):
            return [("warn", " ⚠ equal rewards: no gradient ")]
        return []

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        g, run = frame.view.group, frame.view.run
        if g is None and run is not None and run.mode != "grpo":
            return [[("dim", f"{safe(run.mode)} run: no groups of answers to score")]]
        if g is None:
            return waiting("waiting for the first scored group…")
        selected = min(max(frame.ui.sample, 0), max(len(g.tokens) - 1, 0))
        lines: list[Row] = []
        if g.question and rows >= len(g.tokens) + 2:  # room for every answer too
            lines.append([("label", "q: "), ("value", clip(safe(g.question), cols - 3))])
        room = max(1, rows - len(lines) - 1)
        first = min(max(0, selected - room // 2), max(0, len(g.tokens) - room))
        for i in range(first, min(len(g.tokens), first + room)):
            lines.append(self._answer(g, i, i == selected, cols))
        lines.append(self._tokens(g, selected, frame.ui.token_metric_name, cols))
        return lines

    @staticmethod
    def _answer(g: tm.GroupEvent, i: int, selected: bool, cols: int) -> Row:
        reward, advantage = float(g.rewards[i]), float(g.advantages[i])
        cut = g.truncated is not None and bool(g.truncated[i])
        mark = ("selected", f"▶{i}") if selected else ("label", f" {i}")
        prefix: Row = [
            mark,
            ("value" if reward > 0 else "label", f" r {reward:+.2f}"),
            (
                "bar" if advantage > 0 else "bar_negative" if advantage < 0 else "dim",
                f" A {advantage:+.2f}",
            ),
            ("label", f" n {len(g.tokens[i]):>2}"),
            ("warn" if cut else "dim", "✂ " if cut else "  "),
        ]
        used = sum(width(t) for _, t in prefix)
        return prefix + [("token", clip(safe("".join(g.tokens[i])), max(4, cols - used)))]

    @staticmethod
    def _tokens(g: tm.GroupEvent, sample: int, metric: str, cols: int) -> Row:
        values = token_values(g, sample, metric)
        name = "log-prob" if metric == "logprob" else "entropy"
        if values is None:
            return [("dim", f"{sample}: no per-token {name} in this group")]
        row: Row = [("label", f"{sample} by {name} (e): ")]
        peak = _peak_entropy(g)
        for text, value in zip(g.tokens[sample], values, strict=False):
            shown = clip(safe(text), TOKEN_COLS)
            row += [
                (theme.heat_attr(intensity(float(value), metric, peak)), shown),
                ("dim", f" {value:+.2f}  " if metric == "logprob" else f" {value:.2f}  "),
            ]
        return row
