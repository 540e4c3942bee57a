"""A rollout run headless, its telemetry published for viewers that attach
(``python -m dash --attach``): ``dash.serve(rollout_fn, address)`` and
``python -m dash --serve ADDRESS``.

The rollout runs in the calling thread. Its sink is a ``model.publish.Publisher`` (behind a
``Recorder`` with ``record``, and an ``EventSink`` for ``sink.decode`` / ``train`` /
``credit``, as in the dashboard), its control the publisher's, which attached viewers steer.
No terminal is involved: it runs under nohup or a job scheduler. In the main thread, SIGINT
and SIGTERM stop the rollout at its next ``control.gate()``; a second one interrupts it.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback

from dash.record import Recorder
from dash.sink import EventSink
from model import telemetry as tm
from model.publish import Publisher


def serve(
    rollout_fn,
    address: str | None = None,
    *,
    record: str | None = None,
    allow_remote: bool = False,
    keys: str | None = None,
    source: str = "",
    recorded: bool = False,
) -> int:
    """Run ``rollout_fn(sink, control)`` until it returns, publishing on ``address``
    (``model.endpoint``; default: an ipc socket of this user's). Prints one line: where it
    listens and the command that attaches. Returns 0; 1 if the rollout raised (its error is
    published, and printed in one line); 128 + the signal's number if a signal stopped it.
    ``allow_remote``, ``keys``, ``source`` and ``recorded``: see ``Publisher``; raises
    ``model.endpoint.AddressError`` for an address it cannot bind."""
    publisher = Publisher(
        address, allow_remote=allow_remote, keys=keys, source=source, recorded=recorded
    )
    recorder = Recorder(record, publisher) if record else None
    sink = EventSink(recorder or publisher)
    print(publisher.banner(), flush=True)
    stopped_by: list[int] = []
    try:
        with _stop_on_signals(publisher.control, stopped_by):
            rollout_fn(sink, publisher.control)
    except Exception as e:
        sink.emit(tm.ErrorEvent(f"{type(e).__name__}: {e}", traceback.format_exc()))
        print(f"the rollout failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if recorder is not None:
            recorder.close()
        publisher.close()
    return 128 + stopped_by[0] if stopped_by else 0


class _stop_on_signals:
    """In the main thread: the first SIGINT or SIGTERM stops ``control`` (noted in
    ``stopped_by``), the next one raises ``KeyboardInterrupt``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, control: tm.RolloutControl, stopped_by: list[int]) -> None:
        self.control, self.stopped_by = control, stopped_by
        self.saved: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.stopped_by:
            raise KeyboardInterrupt
        self.stopped_by.append(signum)
        print("stopping the rollout (again to interrupt it)", file=sys.stderr)
        self.control.stop()

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def __exit__(self, *exc) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
