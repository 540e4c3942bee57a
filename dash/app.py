"""The live dashboard: an urwid ``MainLoop`` on the asyncio event loop inside
``anyio.run``, and an anyio task group holding

- the rollout, ``rollout_fn(sink, control)``, in a worker thread;
- the frame pump: at ``fps`` it drains the dropping channel, folds the events into the
  view model with the pure reducer, hands the frame to the panels and redraws;
- (main thread only) a signal watcher: Ctrl-C / SIGTERM / SIGHUP quit cleanly, a second
  one forces the exit.

Keys go through ``dash.keymap``; a selection change is sent to the rollout with
``control.select`` so the device computes the selected head's row. Quitting stops the
rollout (``control.stop()``), waits for its thread, then leaves the screen, which
restores the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import urwid

from dash import keymap, state, theme
from dash.channel import DroppingChannel
from dash.layout import Dashboard
from dash.record import Recorder
from dash.sink import EventSink
from model import telemetry as tm

RolloutFn = Callable[[EventSink, tm.RolloutControl], None]
EXIT_FORCED = 130
# While the dashboard runs, a thread waiting for the GIL asks for it after this long instead
# of Python's default 5 ms. The UI thread holds the GIL for whole frames (milliseconds); the
# rollout thread needs it only briefly between device computations, and at 5 ms a wait per
# decode step would slow the run being watched (bench/telemetry_overhead.py measures it).
SWITCH_INTERVAL_S = 0.0005
# After a single step the rollout's first events are drawn this long after the key (seconds)
# instead of at the next frame, so a step shows what it started within a frame's time.
STEP_ECHO_S = (0.01, 0.03)


@dataclasses.dataclass(frozen=True)
class Options:
    fps: float = 20.0  # frames per second of the pump
    flash_hz: float = 5.0  # flash indicator rate
    window: int = 6  # layers in the attention / KV window
    source: str = ""  # what runs, shown in the header (e.g. the replayed file)
    replay: bool = False  # the telemetry is recorded: the selection cannot reach the device
    record: str | None = None  # write every event to this JSON Lines file
    join_timeout_s: float = 10.0  # how long quitting waits for the rollout thread


class App:
    """One run of the dashboard around one rollout function."""

    def __init__(
        self,
        rollout_fn: RolloutFn,
        options: Options = Options(),
        *,
        control: tm.RolloutControl | None = None,
        meters: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``control`` replaces the rollout's own (an attached viewer's steers a producer);
        ``meters()`` gives ``state.Meters`` fields of each frame (the viewer's link)."""
        self.rollout_fn = rollout_fn
        self.options = options
        self.view = state.View()
        self.ui = state.UiState(window=options.window)
        self.control = control or tm.RolloutControl()
        self.extra_meters = meters
        self.dashboard = Dashboard()
        self.colors = theme.color_depth()
        self.status = "running"
        self.exit_code = 0
        self.worker_finished = threading.Event()  # the rollout thread returned
        self._quitting = False
        self._start = time.monotonic()
        self._last_write = -1e9
        self._decodes_seen = 0

    # --- the run ---

    async def run(self, screen: urwid.BaseScreen | None = None) -> int:
        """Run until quit; returns the exit code. Must run on the asyncio backend."""
        self.channel = DroppingChannel()
        self.recorder = Recorder(self.options.record, self.channel) if self.options.record else None
        self.sink = EventSink(self.recorder or self.channel)
        self.quit_event = anyio.Event()
        self.rollout_done = anyio.Event()
        self.join_scope = anyio.CancelScope()
        self.loop = loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        screen = screen or urwid.display.raw.Screen()
        in_main = threading.current_thread() is threading.main_thread()
        screen.set_terminal_properties(colors=self.colors)
        self.main_loop = urwid.MainLoop(
            self.dashboard,
            theme.palette(),
            screen=screen,
            event_loop=urwid.AsyncioEventLoop(loop=loop),
            unhandled_input=self.on_key,
            handle_mouse=False,
        )
        if not in_main:
            # only the main thread may set signal handlers; resizes are polled instead
            screen.signal_handler_setter = lambda signum, handler: None
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # What is alive now (the model, the libraries) lives as long as the run: frozen out of
        # the garbage collector's reach, a full collection no longer walks it, which would
        # pause the frame pump (and, holding the GIL, the rollout) for hundreds of ms.
        gc.collect()
        gc.freeze()
        try:
            with self.main_loop.start():
                self._show()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._rollout)
                    tg.start_soon(self._pump)
                    if in_main:
                        tg.start_soon(self._signals)
                    await self.quit_event.wait()
                    self.status = "stopping"
                    self._redraw()
                    self.control.stop()
                    with self.join_scope:
                        with anyio.move_on_after(self.options.join_timeout_s):
                            await self.rollout_done.wait()
                    tg.cancel_scope.cancel()
        finally:
            gc.unfreeze()
            sys.setswitchinterval(switch_interval)
            if self.recorder is not None:
                self.recorder.close()
            self.channel.close()
        return self.exit_code

    async def _rollout(self) -> None:
        def work() -> tm.ErrorEvent | None:
            try:
                self.rollout_fn(self.sink, self.control)
                return None
            except Exception as e:
                return tm.ErrorEvent(f"{type(e).__name__}: {e}", traceback.format_exc())
            finally:
                self.worker_finished.set()

        error = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        if error is not None:
            # straight into the view, not through the channel, so it cannot be dropped
            if self.recorder is not None:
                self.recorder.write(error)
            self.view = state.reduce(self.view, error)
            self.status = "failed"
        elif not self._quitting:
            self.status = "finished"
        self.rollout_done.set()
        self._redraw()

    async def _pump(self) -> None:
        period = 1.0 / self.options.fps
        next_tick = anyio.current_time()
        while True:
            self._pull()
            next_tick = max(next_tick + period, anyio.current_time())  # late: no catching up
            await anyio.sleep(max(0.0, next_tick - anyio.current_time()))

    def _pull(self) -> None:
        """Fold what the channel holds into the view and draw it."""
        self.view = state.reduce_all(self.view, self.channel.drain())
        self._redraw()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if self._quitting:
                    self.force_quit()
                else:
                    self.request_quit(0 if signum == signal.SIGINT else 128 + signum)

    # --- quitting ---

    def request_quit(self, exit_code: int = 0) -> None:
        """Stop the rollout, wait for its thread, leave the screen."""
        if self._quitting:
            self.force_quit()
            return
        self._quitting = True
        self.exit_code = exit_code
        self.quit_event.set()

    def quit_from_thread(self) -> None:
        """``request_quit`` from another thread (a no-op once the loop has ended)."""
        with contextlib.suppress(RuntimeError):  # the loop already closed
            self.loop.call_soon_threadsafe(self.request_quit)

    def force_quit(self) -> None:
        """Stop waiting for the rollout thread (a second Ctrl-C)."""
        self.exit_code = EXIT_FORCED
        self.quit_event.set()
        self.join_scope.cancel()

    # --- keys and drawing ---

    def on_key(self, key: str | tuple) -> bool:
        if self.ui.prompt is not None and isinstance(key, str) and key != "ctrl c":
            self._edit_prompt(key)
            return True
        command = keymap.command_for(key) if isinstance(key, str) else None
        if command is None:
            return False
        self.ui = dataclasses.replace(self.ui, hint=None)
        if command == "quit":
            self.request_quit()
        elif command == "step":
            self.control.step_once()
            for delay in STEP_ECHO_S:
                self.loop.call_later(delay, self._pull)
        elif command == "take_control":
            take = getattr(self.control, "take_control", None)  # only a viewer's control
            if take is not None:
                take()
        else:
            before = self.ui
            self.ui = state.apply(self.ui, command, self.view)
            if self.ui.selection != before.selection:
                self.control.select(*self.ui.selection)
            if self.ui.paused != before.paused:
                self.control.set_paused(self.ui.paused)
        self._show()
        return True

    def _edit_prompt(self, key: str) -> None:
        """A key on the open input line; Enter sends a non-blank prompt to the rollout,
        which ends the current answer and resumes."""
        self.ui, text = state.edit_prompt(self.ui, key)
        if text is not None and text.strip():
            submit = getattr(self.control, "submit_prompt", None)
            if submit is None:
                self.ui = dataclasses.replace(self.ui, hint="this run takes no prompts")
            else:
                submit(text)
                self.control.set_paused(False)
        self._show()

    def _meters(self) -> state.Meters:
        now = time.monotonic()
        if self.view.decode_count != self._decodes_seen:
            self._decodes_seen = self.view.decode_count
            self._last_write = now
        counts = self.channel.counts()
        flash_period = 1.0 / self.options.flash_hz
        meters = state.Meters(
            elapsed_s=now - self._start,
            sent=counts.sent,
            received=counts.received,
            dropped=counts.dropped,
            receive_rate=counts.receive_rate,
            flash_on=int((now - self._start) / (flash_period / 2)) % 2 == 0,
            writing=now - self._last_write < flash_period,
            status=self.status,
            source=self.options.source,
            replay=self.options.replay,
            colors=self.colors,
        )
        if self.extra_meters is None:
            return meters
        return dataclasses.replace(meters, **self.extra_meters())

    def _show(self) -> None:
        control = self.control
        self.ui = state.follow(self.ui, control.selection, control.paused, self.view)
        self.dashboard.show(state.Frame(self.view, self.ui, self._meters()))

    def _redraw(self) -> None:
        self._show()
        screen = self.main_loop.screen
        if self.main_loop.screen_size is not None and screen.get_cols_rows() != (
            self.main_loop.screen_size
        ):
            self.main_loop.screen_size = None  # resized without a SIGWINCH (worker thread)
        self.main_loop.draw_screen()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """An error inside a loop callback: shown in the error panel, never printed over
        the screen."""
        exc = context.get("exception")
        message = f"dashboard: {context.get('message', '')}"
        tb = ""
        if exc is not None:
            message = f"dashboard: {type(exc).__name__}: {exc}"
            tb = "".join(traceback.format_exception(exc))
        self.view = state.reduce(self.view, tm.ErrorEvent(message, tb))


def run(
    rollout_fn: RolloutFn,
    options: Options = Options(),
    *,
    control: tm.RolloutControl | None = None,
    meters: Callable[[], dict[str, Any]] | None = None,
) -> int:
    """Run the dashboard in this thread until the user quits; returns the exit code.

    While it runs, anything written to the terminal's stderr (warnings of the rollout's
    libraries) goes to a log file so it cannot tear the screen; a note names the file
    afterwards. If the rollout thread is stuck in a computation when the user forces the
    exit (second Ctrl-C), the process exits without waiting for it. ``control`` and
    ``meters``: see ``App``.
    """
    app = App(rollout_fn, options, control=control, meters=meters)
    with _stderr_to_log() as log:
        code = anyio.run(app.run, backend="asyncio")
    if log is not None and os.path.getsize(log):
        print(f"python -m dash: the run wrote to stderr; see {log}", file=sys.stderr)
    elif log is not None:
        os.unlink(log)
    if not app.worker_finished.is_set():
        print("python -m dash: the rollout did not stop; exiting without it", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


class _stderr_to_log:
    """Point file descriptor 2 at a temporary log file while the screen is up (only when
    it is the terminal)."""

    def __enter__(self) -> str | None:
        self.saved = None
        if not os.isatty(2):
            return None
        fd, self.path = tempfile.mkstemp(prefix="qwen3vl-dash-", suffix=".log")
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        return self.path

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
