"""The live dashboard (``dash.app.App``) drawing to a pseudo-terminal that nobody watches.

The app runs unchanged, in this process's main thread, exactly as ``python -m dash`` runs
it: urwid's raw screen writes every frame's escape sequences to the terminal, and a ``cat``
child process reads them from the other end and throws them away, as a terminal emulator
would read them. The screen notes the time of every frame it draws.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import termios
import time

import anyio
import urwid

from dash.app import App, Options, RolloutFn


class CountingScreen(urwid.display.raw.Screen):
    """urwid's terminal screen, noting the ``time.monotonic()`` of each frame drawn."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frame_times: list[float] = []

    def draw_screen(self, size, canvas) -> None:
        super().draw_screen(size, canvas)
        self.frame_times.append(time.monotonic())


class PseudoTerminal:
    """``with PseudoTerminal(cols, rows) as screen:`` a ``CountingScreen`` on a pty."""

    def __init__(self, cols: int = 160, rows: int = 48) -> None:
        self.cols, self.rows = cols, rows

    def __enter__(self) -> CountingScreen:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))
        self.reader = subprocess.Popen(
            ["cat"], stdin=master, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(master)
        self.input = os.fdopen(slave, "r", encoding="utf-8")
        self.output = os.fdopen(os.dup(slave), "w", encoding="utf-8")
        return CountingScreen(input=self.input, output=self.output)

    def __exit__(self, *exc) -> None:
        self.output.close()
        self.input.close()  # the pty closes: cat reads EOF and exits
        try:
            self.reader.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.reader.kill()
            self.reader.wait()


def run_app(rollout_fn: RolloutFn, fps: float = 20.0, cols: int = 160, rows: int = 48):
    """Run the live app around ``rollout_fn(sink, control, app)`` until the rollout calls
    ``app.quit_from_thread()``; returns ``(app, frame_times)``."""
    app = App(lambda sink, control: rollout_fn(sink, control, app), Options(fps=fps))
    with PseudoTerminal(cols, rows) as screen:
        anyio.run(app.run, screen, backend="asyncio")
    return app, screen.frame_times
