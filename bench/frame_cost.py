"""What a frame costs, and how soon a key press shows.

1. Frame cost. The live default run (the embedded model learning with GRPO,
   ``dash.sources.default_source``) is recorded to JSON Lines for ``--steps`` decode steps
   (``dash.snapshot`` with ``record``), the recording is read back (``dash.record.load``) and
   folded into the view model with the reducer. Then one full 160x48 frame
   (``Dashboard.show`` + ``Dashboard.render``) is timed for each view after a decode event, in
   turn, as the pump would draw them; also the write of each frame's escape sequences to a
   pseudo-terminal (urwid's raw screen). Target: median render <= 10 ms (of the 50 ms frame
   budget at 20 FPS).
2. Key to screen. ``python -m dash`` (the same live run, real model) in a pseudo-terminal
   (pexpect), its output read back through a terminal emulator (pyte) at 160x48, as
   tests/dash/test_e2e.py does. ``l`` / ``h`` move the selected head between H0 and H1; the
   time from sending the key to the head detail's title ``L0 H<h>`` on screen is measured,
   with a random pause between presses so they land anywhere in the frame cycle.
   Target: <= 100 ms. (pexpect's default 50 ms pause before each send is switched off.)
3. Step to screen. In the same live run, paused, ``s`` steps the watched answer to its end;
   one more ``s`` runs the rest of the GRPO step (the other prompts, the reward, the
   update). The time from that key to the train panel's progress of it on screen ("sampling
   prompts n/P") is measured, once per GRPO step for ``--updates`` steps. Target: <= 100 ms.

    python -m bench.frame_cost [--steps N] [--frames N] [--presses N] [--updates N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import pexpect
import pyte

from bench import report
from bench.headless import PseudoTerminal
from dash import record, sources, state, theme
from dash.layout import Dashboard
from dash.snapshot import snapshot
from model import telemetry as tm

ROOT = Path(__file__).resolve().parent.parent
SIZE = (160, 48)
BUDGET_MS = 50.0  # one frame at 20 FPS
TARGET_RENDER_MS = 10.0
TARGET_KEY_MS = 100.0
AFTER_ANSWER = "after the watched answer"  # the train panel, paused at a finished answer
# the train panel's progress of the rest of the step (the watched answer's decode has none)
RUNNING = r"sampling prompts \d+/\d+|rewarding|optimizer updates \d+/\d+"


def recorded_views(steps: int) -> tuple[list[state.View], int]:
    """Views after each decode event of a recording of the live default run, and the number
    of events recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.jsonl")
        snapshot(sources.default_source(seed=0), steps=steps, size=SIZE, record=path)
        events = [event for _, event in record.load(path).events]
    view, views = state.View(), []
    for event in events:
        view = state.reduce(view, event)
        if isinstance(event, tm.DecodeChunk):
            views.append(view)
    return views, len(events)


def frame_times(views: list[state.View], frames: int) -> tuple[list[float], list[float]]:
    """Milliseconds to render each frame, and to write it to a pseudo-terminal."""
    dashboard = Dashboard()
    render_ms, write_ms = [], []
    with PseudoTerminal(*SIZE) as screen:
        screen.register_palette(theme.palette())
        screen.set_terminal_properties(colors=theme.COLORS_256)
        screen.start()
        try:
            for i in range(frames):
                meters = state.Meters(elapsed_s=i / 20, sent=i, received=i, colors=256)
                start = time.perf_counter()
                dashboard.show(state.Frame(views[i % len(views)], state.UiState(), meters))
                canvas = dashboard.render(SIZE)
                middle = time.perf_counter()
                screen.draw_screen(SIZE, canvas)
                end = time.perf_counter()
                render_ms.append((middle - start) * 1e3)
                write_ms.append((end - middle) * 1e3)
        finally:
            screen.stop()
    return render_ms, write_ms


class LiveDashboard:
    """``python -m dash`` on a pty, read through a pyte screen."""

    def __init__(self, cols: int, rows: int) -> None:
        env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT))
        env.pop("NO_COLOR", None)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.child = pexpect.spawn(
            sys.executable, ["-m", "dash"], dimensions=(rows, cols), env=env, cwd=str(ROOT)
        )
        self.child.delaybeforesend = None  # pexpect sleeps 50 ms before each send otherwise

    def read(self) -> None:
        with contextlib.suppress(pexpect.TIMEOUT):
            self.stream.feed(self.child.read_nonblocking(1 << 16, timeout=0.002))

    def changed_text(self) -> str:
        """The screen lines changed since the last call (pyte marks them dirty): checking
        only those keeps this process's share of the two CPUs small."""
        buffer, cols = self.screen.buffer, self.screen.columns
        lines = ["".join(buffer[y][x].data for x in range(cols)) for y in sorted(self.screen.dirty)]
        self.screen.dirty.clear()
        return "\n".join(lines)

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Read until a changed line matches ``pattern``; returns the monotonic time then."""
        end = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < end:
            self.read()
            if self.screen.dirty and regex.search(self.changed_text()):
                return time.monotonic()
        raise TimeoutError(f"{pattern!r} not on screen after {timeout} s")

    def close(self) -> None:
        self.child.send("q")
        with contextlib.suppress(pexpect.TIMEOUT):
            self.child.expect(pexpect.EOF, timeout=20)
        self.child.terminate(force=True)


def key_latencies(presses: int) -> list[float]:
    """Milliseconds from each ``l`` / ``h`` press to its head on screen."""
    live = LiveDashboard(*SIZE)
    rng = random.Random(0)
    latencies = []
    try:
        # decoding, and the first policy update done: its one-time compilation (tens of
        # seconds of tracing, which holds the GIL) is not the steady state being measured
        live.wait_for(r"step \d+", timeout=300)
        for i in range(presses):
            pause_end = time.monotonic() + rng.uniform(0.2, 0.5)
            while time.monotonic() < pause_end:
                live.read()
            live.changed_text()  # only what changes after the press counts
            key, head = ("l", 1) if i % 2 == 0 else ("h", 0)
            sent = time.monotonic()
            live.child.send(key)
            seen = live.wait_for(rf"HEAD DETAIL L0 H{head} ", timeout=10)
            latencies.append((seen - sent) * 1e3)
        if re.search("● (FINISHED|FAILED)", "\n".join(live.screen.display)):
            raise RuntimeError("the live run ended during the presses")
    finally:
        live.close()
    return latencies


def _read_for(live: LiveDashboard, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        live.read()


def _episode(text: str) -> int:
    match = re.search(r"episode (\d+) · sample", text)
    return int(match[1]) if match else -1


def step_latencies(updates: int) -> list[float]:
    """Milliseconds from the ``s`` that runs the rest of a GRPO step to its phase on
    screen, for ``updates`` steps."""
    live = LiveDashboard(*SIZE)
    latencies = []
    try:
        live.wait_for(r"step \d+", timeout=300)  # the first update compiled, as above
        live.child.send("p")
        live.wait_for("PAUSED", timeout=10)
        for _ in range(updates):
            while True:  # step the watched answer to its end, one decode step a press
                _read_for(live, 0.2)  # a whole frame: the hint or not
                if AFTER_ANSWER in "\n".join(live.screen.display):
                    break
                live.child.send("s")
            episode = _episode("\n".join(live.screen.display))
            live.changed_text()
            sent = time.monotonic()
            live.child.send("s")
            latencies.append((live.wait_for(RUNNING, timeout=10) - sent) * 1e3)
            end = time.monotonic() + 120  # the step ends; the next watched prefill arrives
            while _episode("\n".join(live.screen.display)) <= episode:
                if time.monotonic() > end:
                    screen = "\n".join(live.screen.display)
                    raise TimeoutError(f"no next watched prompt 120 s after the step:\n{screen}")
                live.read()
    finally:
        live.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=32, help="decode steps recorded (32)")
    p.add_argument("--frames", type=int, default=300, help="frames rendered (300)")
    p.add_argument("--presses", type=int, default=20, help="key presses (20)")
    p.add_argument("--updates", type=int, default=5, help="GRPO steps run by a key (5)")
    args = p.parse_args(argv)
    report.start("frame cost and key-to-screen latency at 160x48")

    # the live app first: pexpect forks, which is best done before this process loads JAX
    keys = key_latencies(args.presses)
    key_median, key_max = report.median(keys), max(keys)
    print(f"key to screen: median {key_median:.0f} ms, max {key_max:.0f} ms", flush=True)
    steps = step_latencies(args.updates)
    step_median, step_max = report.median(steps), max(steps)
    print(f"step to screen: median {step_median:.0f} ms, max {step_max:.0f} ms", flush=True)
    views, events = recorded_views(args.steps)
    print(f"# recorded {events} events of the live default run, {len(views)} decode views")
    render_ms, write_ms = frame_times(views, args.frames)
    render, render95 = report.median(render_ms), report.percentile(render_ms, 95)
    report.figures(
        "frame cost and key-to-screen latency",
        [
            ("view model", f"{events} recorded events of python -m dash (GRPO, embedded model)"),
            (
                "render 160x48",
                f"median {render:.2f} ms = {render / BUDGET_MS:.1%} of the 50 ms budget, "
                f"p95 {render95:.2f} ms = {render95 / BUDGET_MS:.1%} ({args.frames} frames)",
            ),
            (
                "write to terminal",
                f"median {report.median(write_ms):.2f} ms, "
                f"p95 {report.percentile(write_ms, 95):.2f} ms (urwid raw screen to a pty)",
            ),
            (
                "key to screen",
                f"median {key_median:.0f} ms, max {key_max:.0f} ms over {len(keys)} presses "
                "(python -m dash live, pexpect + pyte)",
            ),
            ("each press ms", " ".join(f"{k:.0f}" for k in keys)),
            (
                "step to screen",
                f"median {step_median:.0f} ms, max {step_max:.0f} ms over {len(steps)} GRPO "
                "steps (paused after the watched answer: s until its progress shows)",
            ),
            ("each step ms", " ".join(f"{k:.0f}" for k in steps)),
            (
                "targets",
                f"render median <= {TARGET_RENDER_MS:.0f} ms: "
                f"{report.verdict(render <= TARGET_RENDER_MS)}; key <= {TARGET_KEY_MS:.0f} ms: "
                f"{report.verdict(key_max <= TARGET_KEY_MS)} (max), "
                f"{report.verdict(key_median <= TARGET_KEY_MS)} (median); step <= "
                f"{TARGET_KEY_MS:.0f} ms: {report.verdict(step_max <= TARGET_KEY_MS)} (max)",
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
