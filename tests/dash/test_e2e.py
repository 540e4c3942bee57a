"""The dashboard in a pseudo-terminal (pexpect), read back through a terminal emulator
(pyte) at 160 x 48: keys, pause / step, help, errors, resizing and every way out."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

from tests.dash import events as ev

ROOT = Path(__file__).resolve().parents[2]
LIVE = str(ROOT / "tests" / "dash" / "live_rollout.py")
KEYS = {"up": "\x1b[A", "down": "\x1b[B", "right": "\x1b[C", "left": "\x1b[D"}


class Terminal:
    """A child process on a pty, its output fed to a pyte screen."""

    def __init__(self, *args: str, cols: int = 160, rows: int = 48) -> None:
        env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT))
        env.pop("NO_COLOR", None)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.child = pexpect.spawn(
            sys.executable, list(args), dimensions=(rows, cols), env=env, cwd=str(ROOT)
        )

    def read(self, seconds: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.child.read_nonblocking(1 << 16, timeout=0.02)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.raw.extend(data)
            self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read()
            if m := re.search(pattern, self.text):
                return m
        raise AssertionError(f"{pattern!r} never appeared; screen:\n{self.text}")

    def wait_until(self, predicate, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read()
            if predicate(self.text):
                return
        raise AssertionError(f"condition never met; screen:\n{self.text}")

    def press(self, key: str) -> None:
        self.child.send(KEYS.get(key, key))

    def token_step(self) -> int:
        return int(self.wait_for(r"│Tok\[(\d+)\]")[1])

    @staticmethod
    def step_in(text: str) -> int:
        m = re.search(r"│Tok\[(\d+)\]", text)
        return int(m[1]) if m else -1

    def resize(self, cols: int, rows: int) -> None:
        self.screen.resize(rows, cols)
        self.child.setwinsize(rows, cols)

    def exit_code(self, timeout: float = 15.0) -> int:
        end = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < end:
            self.read(0.1)
        self.read(0.1)
        self.child.close()
        status = self.child.exitstatus
        return status if status is not None else -self.child.signalstatus

    def assert_terminal_restored(self) -> None:
        """The last alternate-screen switch is the way out, and the cursor is shown."""
        raw = bytes(self.raw)
        assert raw.rfind(b"\x1b[?1049l") > raw.rfind(b"\x1b[?1049h") >= 0
        assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l")


def test_live_keys_pause_step_help_and_quit():
    term = Terminal(LIVE, "--rate", "40")
    try:
        term.wait_for(r"Tok\[\d+\]")
        for title in (
            "DECODE LIVE",
            "COMPUTATION FLOW",
            "ATTENTION FLOW",
            "KV CACHE MEMORY",
            "VISION INJECTION",
            "mRoPE",
            "TOKEN CREDIT",
        ):
            assert title in term.text
        moves = [
            ("j", 1, 0),
            ("l", 1, 1),
            ("down", 2, 1),
            ("right", 2, 2),
            ("k", 1, 2),
            ("h", 1, 1),
            ("left", 1, 0),
            ("up", 0, 0),
            ("down", 1, 0),
        ]
        for key, layer, head in moves:
            term.press(key)
            term.wait_for(rf"HEAD DETAIL L{layer} H{head} ")
        # the selection reached the rollout: the row shown is the selected head's
        term.wait_until(lambda text: "showing L" not in text)

        term.press("p")
        term.wait_for("PAUSED")
        time.sleep(0.3)
        paused_at = term.token_step()
        term.read(0.6)
        assert term.token_step() == paused_at
        term.press("s")
        term.wait_for(rf"│Tok\[{paused_at + 1}\]")
        term.read(0.5)
        assert term.token_step() == paused_at + 1

        term.press("?")
        term.wait_for(r"KEYS \(\? or Esc closes\)")
        assert "pause / resume the rollout" in term.text
        term.press("?")
        term.press("p")  # resume
        term.wait_until(lambda text: Terminal.step_in(text) > paused_at + 2)  # runs again

        term.press("q")
        assert term.exit_code() == 0
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)


def test_rollout_error_panel_traceback_resize_and_ctrl_c():
    term = Terminal(LIVE, "--rate", "40", "--fail-after", "3")
    try:
        term.wait_for("ROLLOUT FAILED")
        assert "RuntimeError: test rollout failed at step 3" in term.text
        term.press("t")
        term.wait_for(r"TRACEBACK[\s\S]*Traceback \(most recent call last\)")
        term.press("t")
        term.press("j")  # still navigable
        term.wait_for("HEAD DETAIL L1 H0")
        term.resize(80, 24)
        term.wait_for(r"enlarge the terminal \(need 100×30, have 80×24\)")
        term.resize(160, 48)
        term.wait_for("ROLLOUT FAILED")
        term.child.sendintr()  # Ctrl-C
        assert term.exit_code() == 0
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)


def test_sigterm_restores_the_terminal():
    term = Terminal(LIVE)
    try:
        term.wait_for(r"Tok\[\d+\]")
        term.child.kill(signal.SIGTERM)
        assert term.exit_code() == 128 + signal.SIGTERM
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)


def test_second_ctrl_c_forces_exit_from_a_stuck_rollout():
    term = Terminal(LIVE, "--stuck")
    try:
        term.wait_for("tiny-qwen3vl")
        term.child.sendintr()
        term.wait_for("STOPPING")
        term.child.sendintr()
        assert term.exit_code() == 130
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = [
        json.dumps({**ev.record(e), "t": 0.01 * i})
        for i, e in enumerate(
            [*ev.episode_events(steps=0), *(ev.decode(i, f"r{i}") for i in range(400))]
        )
    ]
    lines.insert(3, json.dumps({"type": "telepathy", "t": 0.0}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_plays_with_navigation(recording):
    term = Terminal("-m", "dash", "--replay", str(recording), "--speed", "2")
    try:
        term.wait_for(r"Tok\[\d+\]")
        assert "replay run.jsonl ×2 · 1 unknown record(s) skipped" in term.text
        term.press("l")
        term.wait_for("HEAD DETAIL L0 H1")
        assert "the row the recording holds" in term.wait_for(r"showing L0 H0[^│]*")[0]
        term.press("q")
        assert term.exit_code() == 0
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)


def test_live_tui_facade_from_the_callers_thread():
    term = Terminal(LIVE, "--facade", "3")
    try:
        term.wait_for(r"Tok\[\d+\]: \"f\d+\"")
        assert "your model" in term.text and "KL 0.0100" in term.text
        term.press("j")
        term.wait_for("HEAD DETAIL L1 H0")
        term.wait_until(lambda text: "showing L" not in text)  # selection read by the loop
        assert term.exit_code() == 0  # the script's stop() ends the dashboard
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)
