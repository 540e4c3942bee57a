"""A GRPO run in the dashboard on a pseudo-terminal (tests/dash/live_grpo.py: a tiny random
model): paused, single steps decode the watched answer, then one more runs the rest of the
step, shown at once; its recording replays with the group and train panels."""

from __future__ import annotations

import re
import time

from tests.dash.test_e2e import ROOT, Terminal

LIVE_GRPO = str(ROOT / "tests" / "dash" / "live_grpo.py")
HINT = "after the watched answer"
# the rest of the step running: its phases' progress, or their names lit
RUNNING = r"sampling prompts \d/2|optimizer updates \d/2|(DECODE|REWARD|UPDATE) \d/2"


def _episode(text: str) -> int:
    m = re.search(r"episode (\d+) · sample", text)
    return int(m[1]) if m else -1


def test_paused_step_past_the_watched_answer_runs_the_update_and_replays(tmp_path):
    recording = tmp_path / "grpo.jsonl"
    term = Terminal(LIVE_GRPO, "--record", str(recording))
    try:
        term.wait_for(r"Tok\[\d+\]", timeout=120)
        term.press("p")
        term.wait_for("PAUSED")
        for _ in range(12):  # the watched answer, one decode step a press
            term.read(0.5)
            if HINT in term.text:
                break
            step = Terminal.step_in(term.text)
            term.press("s")
            term.wait_until(lambda t, step=step: Terminal.step_in(t) != step or HINT in t, 30)
        term.wait_for(HINT, timeout=30)
        episode = _episode(term.text)
        term.read(1.0)
        assert HINT in term.text and not re.search(RUNNING, term.text)  # it waits
        term.press("s")
        start = time.monotonic()
        term.wait_until(lambda t: re.search(RUNNING, t) or _episode(t) > episode, 1.0)
        assert time.monotonic() - start < 1.0
        # the update ends and the next watched prefill arrives paused
        term.wait_for(r"TRAIN  step \d+", timeout=120)
        term.wait_until(lambda t: _episode(t) == episode + 1, 60)
        term.read(1.0)
        assert "PAUSED" in term.text and _episode(term.text) == episode + 1
        paused_at = Terminal.step_in(term.text)
        term.read(0.5)
        assert Terminal.step_in(term.text) == paused_at
        term.press("q")
        assert term.exit_code() == 0
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)

    replay = Terminal("-m", "dash", "--replay", str(recording), "--speed", "20")
    try:
        replay.wait_for(r"TRAIN  step \d+", timeout=60)
        replay.wait_for(r"GROUP  step \d+ · 4 answers")
        assert re.search(r"▶0 r [+-]\d\.\d\d A [+-]\d\.\d\d n", replay.text)
        assert "reward" in replay.text and "frac_reward_zero_std" in replay.text
        replay.press("q")
        assert replay.exit_code() == 0
    finally:
        replay.child.terminate(force=True)
