"""The rollout failed: its message with the key to see the traceback, and the traceback
overlay. The rest of the dashboard stays as it was and stays navigable."""

from __future__ import annotations

from dash import state
from dash.panels.base import Panel, Row
from dash.safe_text import safe


class ErrorPanel(Panel):
    title = "ROLLOUT FAILED"

    def heading(self, frame: state.Frame) -> Row:
        return [("error", "ROLLOUT FAILED")]

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        error = frame.view.error
        if error is None:
            return []
        first, *rest = error.message.splitlines() or [""]
        return [
            [("error", safe(first) + (" …" if rest else ""))],
            [("label", "t shows the traceback · the last telemetry stays on screen · q quits")],
        ]


class TracebackOverlay(Panel):
    title = "TRACEBACK (t or Esc closes)"

    def heading(self, frame: state.Frame) -> Row:
        return [("error", self.title)]

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        error = frame.view.error
        if error is None:
            return []
        lines = [safe(line) for line in (error.traceback or error.message).splitlines()]
        if len(lines) > rows:
            lines = [f"… {len(lines) - rows + 1} earlier lines"] + lines[-(rows - 1) :]
        return [[("label", line)] for line in lines]
