"""Integration API for a training or inference loop of any framework.

``dash.run(rollout_fn, ...)`` takes over the terminal and calls ``rollout_fn(sink,
control)`` in a worker thread. The function publishes with ``sink.emit(event)`` (events
of ``model.telemetry``) or the conveniences ``sink.decode(...)``, ``sink.train(...)``,
``sink.credit(...)``; it calls ``control.gate()`` before each decode step (it blocks
while the user paused and returns False once they quit) and may read
``control.selection`` = (sample, layer, head) to send that head's attention row.

``LiveTUI`` is the same dashboard behind the original design's names, for a loop that
keeps the main thread: ``start()``, ``update_decode(...)``, ``update_training(...)``,
``update_credit(tokens, credits)``, ``stop()``.
"""

from __future__ import annotations

import atexit
import threading
import time

import anyio

from dash import app as app_module
from model import telemetry as tm


def run(
    rollout_fn,
    *,
    fps: float = 20.0,
    flash_hz: float = 5.0,
    window: int = 6,
    record: str | None = None,
    source: str = "",
) -> int:
    """Show the dashboard until the user quits (q / Ctrl-C); returns the exit code
    (0 after q or Ctrl-C). A rollout that ignores ``control`` and is still running when
    the user forces the exit (second Ctrl-C) ends the process."""
    options = app_module.Options(
        fps=fps, flash_hz=flash_hz, window=window, record=record, source=source
    )
    return app_module.run(rollout_fn, options)


class LiveTUI:
    """The dashboard in a background thread, fed from the caller's own loop.

    Signals stay with the caller's main thread (Ctrl-C interrupts the caller's loop; call
    ``stop()`` in a ``finally``; it is also registered with ``atexit``). Nothing else may
    write to the terminal while it runs.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        display_layers: int = 6,
        flash_hz: float = 5.0,
        max_cache: int = 2048,
        batch_size: int = 1,
        model_name: str = "",
        fps: float = 20.0,
    ) -> None:
        self.max_cache = max_cache
        self._run_info = tm.RunInfo(
            model_name=model_name or "your model",
            random_init=False,
            mode="training",
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads or num_heads,
            head_dim=head_dim,
            kv_dtype_bytes=None,
            cache_capacity=max_cache,
            batch_size=batch_size,
            deepstack_layers=(),
            sampling={},
        )
        self._app = app_module.App(
            self._wait_for_stop,
            app_module.Options(fps=fps, flash_hz=flash_hz, window=display_layers),
        )
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def control(self) -> tm.RolloutControl:
        """Pause / step / stop requests and the selected (sample, layer, head)."""
        return self._app.control

    def _wait_for_stop(self, sink, control: tm.RolloutControl) -> None:
        """The dashboard's rollout thread: the caller's loop does the work, so this one
        only announces the model and waits for the quit."""
        self.sink = sink
        sink.emit(self._run_info)
        self._ready.set()
        while not control.stopped:
            time.sleep(0.1)

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: anyio.run(self._app.run), daemon=True)
        self._thread.start()
        self._ready.wait()
        atexit.register(self.stop)

    def update_decode(self, **fields) -> None:
        """``sink.decode`` keywords; ``cache_capacity`` defaults to ``max_cache``."""
        fields.setdefault("cache_capacity", self.max_cache)
        self.sink.decode(**fields)

    def update_training(self, **fields) -> None:
        """``sink.train`` keywords: step, reward_mean, reward_std, kl, loss, ..."""
        self.sink.train(**fields)

    def update_credit(self, tokens, credits, **fields) -> None:
        self.sink.credit(tokens, credits, **fields)

    def stop(self) -> None:
        """Leave the dashboard and restore the terminal."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._app.quit_from_thread()
        thread.join()
