from dash import state
from dash.panels.compute_flow import ComputeFlow
from model import telemetry as tm
from tests.dash import events as ev


def test_phase_times_and_active_phase_flash():
    events = [*ev.episode_events(steps=3), tm.PhaseEvent("reward", False, 1.5)]
    text, runs = ev.render(ComputeFlow(), (90, 6), ev.frame(events))
    assert "prefill 42.0 ms" in text[1]
    assert "⚡DECODE 4.00 ms/tok ×3" in text[1]
    assert "reward 1.5 ms" in text[1] and "update —" in text[1]
    assert ev.attr_of(runs, "⚡DECODE") == "flash_active"
    off, runs = ev.render(ComputeFlow(), (90, 6), ev.frame(events, state.Meters(flash_on=False)))
    assert "⚡DECODE" not in off[1] and " DECODE 4.00" in off[1]
    assert ev.attr_of(runs, " DECODE") == "value"


def test_stage_chain_and_profiled_times():
    text, _ = ev.render(ComputeFlow(), (90, 10), ev.frame([*ev.episode_events(1), ev.profile()]))
    screen = "\n".join(text)
    assert "mRoPE → Q/K/V → Attention → KV write → Sample" in screen
    assert "Attention   0.440 ms" in screen and "Q/K/V       0.310 ms" in screen
    assert "profiled alone at cache length 40" in screen
    # the longest stage has the full bar
    attention_row = next(r for r in text if "Attention   0.440" in r)
    assert "░" not in attention_row


def test_without_profile_says_waiting():
    text, _ = ev.render(ComputeFlow(), (90, 6), ev.frame([ev.run_info()]))
    assert "waiting for a profile" in "\n".join(text)
    assert "prefill —" in text[1]
