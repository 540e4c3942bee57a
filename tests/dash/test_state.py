import dataclasses
import functools
import itertools

import numpy as np
import pytest

from dash import state
from model import telemetry as tm
from tests.dash import events as ev


def fold(events, view=None):
    return functools.reduce(state.reduce, events, view or state.View())


def test_episode_fills_prompt_tokens_and_throughput():
    view = fold(ev.episode_events(steps=3))
    assert view.run.num_layers == ev.LAYERS
    assert view.prefill.tokens == ev.PROMPT
    assert view.decode.last_step == 2
    assert view.generated == ((0, "t0"), (1, "t1"), (2, "t2"))
    assert view.decode_count == 3
    assert view.active_phase == "decode"
    assert view.phases["prefill"] == state.PhaseTime(False, 42.0)
    # batch 4 x 1000 / 4 ms per step
    assert view.tokens_per_s == pytest.approx(1000.0)


def test_reduce_does_not_change_its_input():
    before = fold(ev.episode_events(steps=1))
    snapshot = dataclasses.replace(before)
    after = state.reduce(before, ev.decode(1, "x"))
    assert before == snapshot
    assert after.decode.last_step == 1 and before.decode.last_step == 0


def test_new_prefill_phase_clears_the_episode():
    view = fold([*ev.episode_events(steps=2), tm.PhaseEvent("prefill", True, 0.0)])
    assert view.prefill is None and view.decode is None and view.generated == ()
    assert view.active_phase == "prefill"
    assert view.phases["prefill"] == state.PhaseTime(True, 42.0)  # last duration kept


def test_phase_end_clears_only_its_own_activity():
    view = fold([tm.PhaseEvent("decode", True, 0.0), tm.PhaseEvent("reward", False, 3.0)])
    assert view.active_phase == "decode"
    view = state.reduce(view, tm.PhaseEvent("decode", False, 120.0))
    assert view.active_phase is None and view.phases["decode"].last_ms == 120.0


def test_dropped_steps_leave_gaps_and_other_episode_drops_prompt():
    view = fold([*ev.episode_events(steps=1), ev.decode(5, "late")])
    assert view.generated == ((0, "t0"), (5, "late"))
    view = state.reduce(view, ev.decode(0, "new", episode=1))
    assert view.prefill is None  # the prompt shown was episode 0's
    assert view.generated == ((0, "new"),)


def test_train_credit_error_and_run_reset():
    view = fold([ev.run_info(), ev.train(1, 0.25), ev.train(2, 0.5)])
    assert view.train.step == 2 and view.reward_history == (0.25, 0.5)
    view = fold([ev.credit(3, 0), ev.credit(3, 1)], view)
    assert set(view.credits) == {0, 1}
    view = state.reduce(view, ev.credit(4, 1))
    assert set(view.credits) == {1} and view.credits[1].step == 4
    view = state.reduce(view, tm.ErrorEvent("boom", "Traceback ..."))
    assert view.error.message == "boom"
    other = ev.run_info(model_name="another")
    assert state.reduce(view, other) == state.View(run=other)


def test_stats_come_from_decode_else_prefill():
    view = fold(ev.episode_events(steps=0))
    assert view.stats is view.prefill.stats
    view = state.reduce(view, ev.chunk([ev.decode(0), ev.decode(1)]))
    np.testing.assert_array_equal(view.stats.argmax, view.decode.stats.argmax[-1])  # newest
    np.testing.assert_array_equal(view.stats.max_weight, ev.decode(1).stats.max_weight[0])


def test_navigation_clamps_and_keeps_selected_layer_in_window():
    view = state.View(run=ev.run_info())
    ui = state.UiState(window=3)
    for _ in range(5):
        ui = state.apply(ui, "layer_down", view)
    assert (ui.layer, ui.layer_top) == (5, 3)
    for _ in range(20):
        ui = state.apply(ui, "layer_down", view)
    assert ui.layer == ev.LAYERS - 1
    ui = state.apply(ui, "window_up", view)
    assert (ui.layer, ui.layer_top) == (4, 2)
    ui = state.apply(ui, "window_up", view)
    assert (ui.layer, ui.layer_top) == (2, 0)  # moved as far as the window could
    for _ in range(20):
        ui = state.apply(ui, "head_right", view)
    assert ui.head == ev.HEADS - 1
    ui = state.apply(ui, "head_left", view)
    assert ui.head == ev.HEADS - 2
    for _ in range(9):
        ui = state.apply(ui, "sample_next", view)
    assert ui.sample == 3  # batch of 4


def test_commands_before_run_info_stay_at_zero():
    ui = state.apply(state.UiState(), "layer_down", state.View())
    assert (ui.layer, ui.head) == (0, 0)


def test_metric_cycles_and_overlays_toggle():
    view = state.View(run=ev.run_info())
    ui = state.UiState()
    names = []
    for _ in range(5):
        names.append(ui.metric_name)
        ui = state.apply(ui, "metric", view)
    assert names == [*tm.HeadStats.METRICS, "max_weight"]
    assert state.apply(ui, "help", view).help
    assert not state.apply(ui, "traceback", view).traceback  # no error yet
    with_error = dataclasses.replace(view, error=tm.ErrorEvent("x", "tb"))
    shown = state.apply(ui, "traceback", with_error)
    assert shown.traceback and not state.apply(shown, "close", with_error).traceback
    assert state.apply(ui, "pause", view).paused


def test_visible_layers_follow_selection_and_room():
    ui = state.UiState(layer=7, layer_top=0, window=6)
    assert state.visible_layers(ui, 8, 10) == range(2, 8)
    assert state.visible_layers(ui, 8, 3) == range(5, 8)
    assert state.visible_layers(state.UiState(), 8, 0) == range(0)


def test_same_run_announced_again_keeps_the_history():
    view = fold([ev.run_info(), ev.train(1, 0.25)])
    assert state.reduce(view, ev.run_info()) is view
    assert state.reduce(view, ev.run_info(num_layers=2)).train is None


def test_reduce_all_equals_folding_one_event_at_a_time():
    long_run = [ev.decode(step, f"t{step}") for step in range(3, 300)]  # past GENERATED_KEPT
    episode = ev.episode_events(steps=3)
    events = [
        *episode,
        *long_run,
        ev.decode(290, "again"),  # a step seen before: drops the steps from it onwards
        ev.decode(291, "x"),
        ev.decode(400, "other", sample=1),  # another stream
        ev.decode(401, "y", sample=1),
        ev.decode(500, "z", episode=2, sample=1),  # another episode, steps still ascending
        tm.PhaseEvent("decode", False, 9.0),
        ev.decode(0, "next", episode=1),  # another episode: the prompt shown goes
        ev.decode(2, "gap", episode=1),
        ev.train(1, 0.5),
    ]
    ends = (len(episode) + len(long_run) + k for k in (0, 2, 4, 5, 7))
    for cut, end in itertools.product((0, 1, 5, 20, 303), (*ends, len(events))):
        view = fold(events[:cut])  # batches start and end anywhere
        batched = state.reduce_all(view, events[cut:end])
        one_by_one = fold(events[cut:end], view)
        for field in dataclasses.fields(state.View):
            got, want = getattr(batched, field.name), getattr(one_by_one, field.name)
            if isinstance(want, tm.DecodeChunk | tm.PrefillEvent | tm.RunInfo | tm.TrainEvent):
                assert got is want, field.name
            else:
                assert got == want, field.name
    assert one_by_one.generated == ((0, "next"), (2, "gap"))
    first_stream = fold(events[: len(episode) + len(long_run) + 2])
    assert first_stream.generated[-3:] == ((289, "t289"), (290, "again"), (291, "x"))
    assert len(first_stream.generated) == state.GENERATED_KEPT - 8  # 290..299 dropped


def test_a_decode_chunk_folds_as_its_tokens_one_by_one():
    """Folding a chunk, alone or between decode events in one batch, gives the view that
    folding its tokens one by one gives: after the same stream, a gap, a step seen before,
    another episode."""
    tokens = [ev.decode(step, f"t{step}") for step in range(2, 7)]
    episode = ev.episode_events(steps=2)
    befores = [
        episode,
        [*episode, ev.decode(1, "late")],
        [*episode, ev.decode(9, "ahead")],  # the chunk goes back: steps 2 onwards dropped
        [*episode, ev.decode(0, "x", episode=1)],
    ]
    batches = [
        [ev.chunk(tokens)],
        [tokens[0], ev.chunk(tokens[1:4]), tokens[4]],
        [ev.chunk(tokens[:2]), ev.chunk(tokens[2:])],
    ]
    for before, batch in itertools.product(befores, batches):
        view = fold(before)
        want = fold(tokens, view)
        for got in (state.reduce_all(view, batch), fold(batch, view)):
            assert tm.records(got.decode)[-1] == tm.records(want.decode)[-1]
            assert dataclasses.replace(got, decode=None) == dataclasses.replace(want, decode=None)
    assert want.generated[-5:] == tuple((s, f"t{s}") for s in range(2, 7))


def test_the_input_line_opens_for_inference_after_an_answer_or_while_paused():
    inference = state.View(run=ev.run_info(mode="inference"))
    ui = state.apply(state.UiState(), "prompt", inference)
    assert ui.prompt == "" and ui.hint is None
    decoding = dataclasses.replace(inference, active_phase="decode")
    refused = state.apply(state.UiState(), "prompt", decoding)
    assert refused.prompt is None and "pause" in refused.hint
    assert state.apply(state.UiState(paused=True), "prompt", decoding).prompt == ""
    grpo = state.apply(state.UiState(), "prompt", state.View(run=ev.run_info()))
    assert grpo.prompt is None and "--model" in grpo.hint


def test_editing_the_input_line():
    ui = state.UiState(prompt="", paused=True)
    for key in "hi\x1b[":  # control characters are not typed
        ui, sent = state.edit_prompt(ui, key)
        assert sent is None
    assert ui.prompt == "hi["
    ui, _ = state.edit_prompt(ui, "backspace")
    ui, _ = state.edit_prompt(ui, "ctrl a")  # a key name, not a character
    assert ui.prompt == "hi"
    closed, sent = state.edit_prompt(ui, "enter")
    assert sent == "hi" and closed.prompt is None and not closed.paused
    cancelled, sent = state.edit_prompt(ui, "esc")
    assert sent is None and cancelled.prompt is None and cancelled.paused


def test_a_notice_shows_until_the_next_prompt_and_compiling_is_no_phase():
    view = fold([*ev.episode_events(steps=1), tm.NoticeEvent("prompt refused: x")])
    assert view.notice == "prompt refused: x" and view.active_phase == "decode"
    view = fold([tm.PhaseEvent("compile", True)], view)
    assert view.compiling and view.active_phase == "decode"
    view = fold([tm.PhaseEvent("compile", False, 1200.0), ev.prefill()], view)
    assert not view.compiling and view.phases["compile"].last_ms == 1200.0
    assert view.notice is None


def test_step_times_that_are_unknown_do_not_count():
    chunks = [dataclasses.replace(ev.decode(0), elapsed_ms=None), ev.decode(1), ev.decode(2)]
    view = fold([ev.run_info(batch_size=1), *chunks])
    assert view.step_time_ms == 4.0 and view.tokens_per_s == 250.0
