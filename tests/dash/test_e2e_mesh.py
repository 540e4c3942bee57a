"""The dashboard on a mesh, in a pseudo-terminal.

- ``python -m dash --mesh data=2,model=4`` over 8 simulated CPU devices (the embedded model
  learning with GRPO, its group of 8 split over ``data``, its heads over ``model``): paused
  from the start, moving the selection and stepping shows the newly selected head's row,
  computed on the mesh.
- Two processes (gloo over loopback), process 0 on the screen and process 1 headless:
  quitting on process 0 ends both.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import numpy as np
import PIL.Image

from tests.dash.test_e2e import ROOT, Terminal

EMBEDDED = str(ROOT / "assets" / "tiny-qwen3vl")

SUMMARY = r"\d+ positions · sink [^│]*"  # the head detail's first line: the row's summary


def _summary(text: str, layer: int, head: int) -> str | None:
    match = re.search(rf"HEAD DETAIL L{layer} H{head}[\s\S]*?({SUMMARY})", text)
    return match[1].strip() if match else None


def test_dash_on_a_mesh_shows_the_selected_heads_row(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    term = Terminal("-m", "dash", "--mesh", "data=2,model=4")
    try:
        term.wait_for("tiny-qwen3vl", timeout=120)
        term.press("p")  # before the first decode chunk: every later token is one step
        term.wait_for("PAUSED")
        assert "mesh 2x4" in term.text
        term.wait_until(lambda text: _summary(text, 0, 0) is not None, timeout=600)
        assert term.token_step() == 0  # the prefill's token, its row on L0 H0
        before = _summary(term.text, 0, 0)
        term.press("l")
        term.press("j")
        term.wait_for(r"HEAD DETAIL L1 H1")
        assert "showing L0 H0: " in term.text  # until a step computes the new head's row
        term.press("s")  # one decode step, on the mesh, with the new selection
        term.wait_until(lambda text: Terminal.step_in(text) == 1, timeout=600)
        term.wait_until(lambda text: "showing L" not in text)
        after = _summary(term.text, 1, 1)
        assert after is not None and after != before, (before, after)
        term.press("q")
        assert term.exit_code(timeout=120) == 0
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)


def test_quitting_process_0_ends_every_process(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device per process
    image = tmp_path / "red.png"
    PIL.Image.fromarray(np.full((64, 64, 3), (220, 30, 30), np.uint8)).save(image)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        "-m", "dash", "--model", EMBEDDED, "--image", str(image), "--cache", "128",
        "--prompt", "What colour is the square?", "--max-new-tokens", "4",
        "--mesh", "data=1,model=2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
    ]  # fmt: skip
    follower = subprocess.Popen(
        [sys.executable, *args, "--process-id", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    term = Terminal(*args, "--process-id", "0")
    try:
        term.wait_for(r"stages profiled alone", timeout=180)  # the first answer is done
        assert "mesh 1x2" in term.text
        term.press("q")  # process 1 waits in a broadcast for process 0's next prompt
        assert term.exit_code(timeout=60) == 0
        term.assert_terminal_restored()
        assert follower.wait(timeout=60) == 0, follower.communicate()[0][-3000:]
    finally:
        term.child.terminate(force=True)
        follower.kill()
