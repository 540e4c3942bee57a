"""Token credit: the tokens of the last finished episode sorted by credit, each with a
bar proportional to it (negative credit in red); the top token flashes."""

from __future__ import annotations

import numpy as np

from dash import state
from dash.panels.base import Panel, Row, bar, number, waiting
from dash.safe_text import clip, safe

TOKEN_COLS = 14


def watched_credit(frame: state.Frame):
    """The credit of the selected sample, else of the lowest sample that has one."""
    credits = frame.view.credits
    if not credits:
        return None
    return credits.get(frame.ui.sample) or credits[min(credits)]


class TokenCredit(Panel):
    def heading(self, frame: state.Frame) -> Row:
        c = watched_credit(frame)
        if c is None:
            return [("title", "TOKEN CREDIT")]
        return [
            ("title", "TOKEN CREDIT"),
            ("label", f"  step {c.step} · sample {c.sample} · reward "),
            ("value", number(c.reward)),
            ("label", " · advantage "),
            ("value", number(c.advantage, "{:+.3f}")),
        ]

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        c = watched_credit(frame)
        run = frame.view.run
        if c is None and run is not None and run.mode == "inference":
            return [[("dim", "inference run: no rewards, so no credit to assign")]]
        if c is None:
            return waiting("waiting for the first finished episode…")
        credits = np.asarray(c.credits, dtype=np.float64)
        n = min(len(c.tokens), credits.size)
        if n == 0:
            return [[("dim", "the episode produced no tokens")]]
        order = np.argsort(-credits[:n], kind="stable")
        peak = float(np.abs(credits[:n]).max()) or 1.0
        bar_cols = max(4, cols - TOKEN_COLS - 16)
        lines: list[Row] = []
        shown = order[: rows - 1] if n > rows else order
        for rank, i in enumerate(shown):
            value = float(credits[i])
            attr = "bar" if value >= 0 else "bar_negative"
            text = ('"' + clip(safe(c.tokens[i]), TOKEN_COLS - 2) + '"').ljust(TOKEN_COLS)
            top = rank == 0 and frame.meters.flash_on
            lines.append(
                [
                    ("flash_active" if top else "token", text),
                    ("dim", f" @{int(i):<3d}"),
                    ("value", f"{value:+.4f} "),
                    *bar(abs(value) / peak, bar_cols, attr),
                ]
            )
        if n > len(shown):
            lines.append([("dim", f"… {n - len(shown)} more tokens")])
        return lines
