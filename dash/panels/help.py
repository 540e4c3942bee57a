"""The ``?`` help overlay, generated from the key registry."""

from __future__ import annotations

from dash import keymap, state
from dash.panels.base import Panel, Row


class HelpOverlay(Panel):
    title = "KEYS (? or Esc closes)"

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        lines: list[Row] = []
        category = None
        for cat, keys, text in keymap.help_lines():
            if cat != category:
                lines.append([("title", cat)])
                category = cat
            lines.append([("help_key", f"  {keys:<10}"), ("label", text)])
        return lines

    @staticmethod
    def size() -> tuple[int, int]:
        """Columns and rows the overlay wants."""
        rows = keymap.help_lines()
        cols = max(max(len(keys), 10) + len(text) for _, keys, text in rows) + 5
        return cols, len(rows) + len({c for c, _, _ in rows}) + 2
