import dataclasses

import numpy as np
import pytest

from dash import state
from dash.layout import Dashboard
from dash.panels.header import SPARK
from dash.panels.train import Train, progress, run_sparkline
from model import telemetry as tm
from tests.dash import events as ev


def _run(updates: int = 20):
    return [
        *ev.episode_events(steps=2),
        *(ev.train(step=i, reward_mean=0.4 + 0.01 * i) for i in range(updates)),
    ]


def _numpy_sparkline(values, cols):
    """The reference: ``cols`` equal bins (numpy.array_split), their means scaled to 8 levels."""
    bins = np.array([b.mean() for b in np.array_split(np.asarray(values, float), cols)])
    levels = np.minimum(7, ((bins - bins.min()) / np.ptp(bins) * 8).astype(int))
    return "".join(SPARK[i] for i in levels)


def test_run_sparkline_bins_the_whole_run():
    rng = np.random.default_rng(0)
    values = list(rng.normal(size=37))
    assert run_sparkline(values, 8) == _numpy_sparkline(values, 8)
    assert run_sparkline([1.0, 2.0, 3.0], 8) == _numpy_sparkline([1.0, 2.0, 3.0], 3)
    assert run_sparkline([0.25] * 20, 6) == SPARK[0] * 6  # did not move: flat
    assert run_sparkline(list(rng.normal(scale=1e-8, size=12)), 6) == SPARK[0] * 6  # float noise
    assert run_sparkline([float("nan")], 4) == ""


def test_every_metric_with_its_latest_value_and_a_sparkline():
    text, runs = ev.render(Train(), (78, 14), ev.frame(_run()))
    screen = "\n".join(text)
    assert "TRAIN  step 19 · 20 kept" in text[0]
    for label in (
        "reward 0.590",
        "reward_std 0.250",
        "frac_reward_zero_std 0.250",
        "rewards/color 0.690",
        "count 0.750",
        "completions/mean_length 2.500",
        "max_length 4.000",
        "clipped_ratio 0.125",
        "kl 0.013",
        "entropy 1.500",
        "clip_ratio 0.100",
        "grad_norm 0.800",
        "advantages/min -1.500",
        "mean 0.000",
        "max 1.250",
        "timing_s/gen 2.000",
        "update_actor 4.000",
        "step 25.0",
    ):
        assert label in screen, label
    # the reward rose every update: its sparkline climbs from the lowest to the highest level
    rewards = [0.4 + 0.01 * i for i in range(20)]
    assert "reward 0.590 " + _numpy_sparkline(rewards, 6) in screen
    assert ev.attr_of(runs, _numpy_sparkline(rewards, 6)) == "bar"


def test_progress_of_the_running_phase_and_what_s_does_when_paused():
    events = [*_run(2), tm.PhaseEvent("decode", True, 10.0, 12, 64)]
    text, _ = ev.render(Train(), (78, 14), ev.frame(events))
    assert "DECODE sampling prompts 12/64" in text[1]
    events = [*_run(2), tm.PhaseEvent("update", True, 10.0, 1, 2)]
    assert "UPDATE optimizer updates 1/2" in ev.render(Train(), (78, 14), ev.frame(events))[0][1]
    done = dataclasses.replace(ev.decode(2, "<|im_end|>"), done=True)
    finished = [*_run(2), tm.PhaseEvent("decode", False, 5.0), done]
    frame = ev.frame(finished, paused=True)
    row = progress(frame)
    assert "after the watched answer: s samples the other prompts" in "".join(t for _, t in row)
    assert "between phases" in "".join(t for _, t in progress(ev.frame(finished)))


def test_waiting_and_inference():
    text, _ = ev.render(Train(), (78, 5), ev.frame([]))
    assert "waiting for the first update" in text[2]
    text, _ = ev.render(Train(), (78, 5), ev.frame([ev.run_info(mode="inference")]))
    assert "inference run: no updates" in text[2]


@pytest.mark.parametrize("size", [(160, 48), (100, 30)])
def test_train_on_the_screen(size):
    d = Dashboard()
    d.show(ev.frame([*_run(), ev.group(), tm.PhaseEvent("decode", True, 1.0, 3, 64)]))
    screen = "\n".join(line.decode() for line in d.render(size).text)
    assert "TRAIN  step 19" in screen and "sampling prompts 3/64" in screen
    assert "reward 0.590" in screen
    if size == (160, 48):  # every metric fits
        assert "timing_s/gen 2.000" in screen and "advantages/min -1.500" in screen


def test_state_keeps_the_run_and_the_group():
    view = ev.frame(_run(state.TRAIN_KEPT + 5)).view
    assert len(view.train_history) == state.TRAIN_KEPT
    assert view.train_history[-1].step == state.TRAIN_KEPT + 4
    view = state.reduce(view, ev.group())
    assert view.group.step == 3
