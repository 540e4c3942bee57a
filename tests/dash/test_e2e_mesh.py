"""The dashboard on a mesh: ``python -m dash --mesh data=2,model=4`` over 8 simulated CPU
devices in a pseudo-terminal (the embedded model learning with GRPO, its group of 8 split
over ``data``, its heads over ``model``): paused from the start, moving the selection and
stepping shows the newly selected head's row, computed on the mesh."""

from __future__ import annotations

import re

from tests.dash.test_e2e import Terminal

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
