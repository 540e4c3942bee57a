"""``--snapshot``: run the rollout for N decode steps without a terminal and return one
full frame as plain text (no escape codes) — the same panels the live screen draws."""

from __future__ import annotations

import time
import traceback

from dash import state
from dash.channel import size
from dash.layout import Dashboard
from dash.record import Recorder
from dash.sink import EventSink
from model import telemetry as tm


class _Collector:
    """Folds events straight into a view and stops the rollout after ``steps`` decodes."""

    def __init__(self, steps: int, control: tm.RolloutControl) -> None:
        self.view = state.View()
        self.count = 0
        self.steps = steps
        self.control = control

    def emit(self, event: tm.Event) -> None:
        if isinstance(event, tm.DecodeChunk):
            if self.control.stopped:
                return  # decoded with the step that stopped it (a rollout decodes in chunks)
            left = self.steps - self.view.decode_count
            if len(event) > left:
                event = event.first_tokens(left)
        self.view = state.reduce(self.view, event)
        self.count += size(event)
        if isinstance(event, tm.DecodeChunk) and self.view.decode_count >= self.steps:
            self.control.stop()


def snapshot(
    rollout_fn,
    *,
    steps: int,
    size: tuple[int, int],
    window: int = 6,
    source: str = "",
    record: str | None = None,
) -> str:
    """Run ``rollout_fn`` in this thread until ``steps`` decode events arrived (or it
    returns) and render the dashboard at ``size`` (cols, rows) as text; with ``record``,
    the events are also written to that JSON Lines file."""
    control = tm.RolloutControl()
    collector = _Collector(steps, control)
    start = time.monotonic()
    status = "finished"
    recorder = Recorder(record, collector) if record else None
    try:
        rollout_fn(EventSink(recorder or collector), control)
    except Exception as e:
        collector.emit(tm.ErrorEvent(f"{type(e).__name__}: {e}", traceback.format_exc()))
        status = "failed"
    finally:
        if recorder is not None:
            recorder.close()
    elapsed = time.monotonic() - start
    meters = state.Meters(
        elapsed_s=elapsed,
        receive_rate=collector.count / elapsed if elapsed > 0 else 0.0,
        sent=collector.count,
        received=collector.count,
        status=status if not control.stopped else "running",
        source=source,
        colors=1,
    )
    dashboard = Dashboard()
    dashboard.show(state.Frame(collector.view, state.UiState(window=window), meters))
    canvas = dashboard.render(size)
    return "\n".join(line.decode("utf-8").rstrip() for line in canvas.text)
