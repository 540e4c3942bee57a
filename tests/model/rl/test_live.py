"""run_grpo on a tiny random model: the events of each step, their values, and control."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from model import telemetry as tm
from model.rl.live import run_grpo
from model.rl.train import METRIC_KEYS, GRPOSettings, GRPOTrainer
from model.tasks import Task
from tests.model.recording import Recorder

EOS_TEXTS = ("<|im_end|>", "<|endoftext|>")
SETTINGS = GRPOSettings(prompts_per_step=1, max_new_tokens=4, learning_rate=1e-2)
STEP_KINDS_HEAD = ["phase", "phase", "prefill", "phase"]
# decode end, decode start (1 of 1), profile, decode end, reward start / end, update start /
# 1 of 2 / 2 of 2 / end, ...
STEP_KINDS_TAIL = ["phase", "phase", "profile", *["phase"] * 7, "train", "group", *["credit"] * 4]


@pytest.fixture(scope="module")
def two_steps(random_model, embedded_processor):
    sink, control = Recorder(), tm.RolloutControl(sample=2, layer=1, head=3)
    trainer = run_grpo(
        random_model, embedded_processor, Task("train", 0), sink=sink, control=control,
        group_size=4, steps=2, settings=SETTINGS,
    )  # fmt: skip
    return sink, trainer


def _not_compile(events):
    """The events but the ``compile`` phases (they come wherever a program compiles)."""
    return [e for e in events if not (e.kind == "phase" and e.phase == "compile")]


def test_event_sequence(two_steps):
    sink, _ = two_steps
    kinds = [e.kind for e in _not_compile(sink.events)]
    assert kinds[0] == "run"
    rest, i = kinds[1:], 0
    for _ in range(2):
        assert rest[i : i + 4] == STEP_KINDS_HEAD
        n = 0
        while rest[i + 4 + n] == "decode":
            n += 1
        assert n >= 1
        tail = len(STEP_KINDS_TAIL)
        assert rest[i + 4 + n : i + 4 + n + tail] == STEP_KINDS_TAIL
        i += 4 + n + tail
    assert i == len(rest)
    phases = _not_compile(sink.of(tm.PhaseEvent))
    phases = [(e.phase, e.active, e.done, e.total) for e in phases[:14]]
    assert phases == [
        ("prefill", True, None, None), ("prefill", False, None, None),
        ("decode", True, None, None), ("decode", False, None, None),
        ("decode", True, 1, 1), ("decode", False, None, None),
        ("reward", True, None, None), ("reward", False, None, None),
        ("update", True, 0, 2), ("update", True, 1, 2), ("update", True, 2, 2),
        ("update", False, None, None),
        ("prefill", True, None, None), ("prefill", False, None, None),
    ]  # fmt: skip
    (info,) = sink.of(tm.RunInfo)
    assert info.mode == "grpo" and info.batch_size == 4
    assert info.sampling["temperature"] == SETTINGS.temperature


def _watched_credit(sink, step: int, sample: int = 2) -> tm.CreditEvent:
    """Step ``step``'s credit of ``sample``; every answer of the group has one."""
    credits = {c.sample: c for c in sink.of(tm.CreditEvent) if c.step == step}
    assert sorted(credits) == [0, 1, 2, 3]
    return credits[sample]


def test_values_are_the_watched_samples(two_steps, embedded_processor):
    sink, _ = two_steps
    task = Task("train", 0)
    for step, train in enumerate(sink.of(tm.TrainEvent)):
        credit = _watched_credit(sink, step)
        assert train.step == credit.step == step
        decodes = [e for e in sink.tokens() if e.episode == step]
        assert {e.sample for e in decodes} == {2} and credit.sample == 2
        assert decodes[-1].done
        # the credited tokens are the watched sample's decoded tokens, rewarded by the task
        assert credit.tokens == tuple(e.token_text for e in decodes)
        assert len(credit.credits) == len(decodes)
        ids = [e.token_id for e in decodes]
        assert credit.reward == task.reward(task.sample(step), embedded_processor.decode(ids))
        assert train.rewards.shape == (4,) and train.rewards[2] == credit.reward
        assert train.reward_mean == pytest.approx(float(train.rewards.mean()))
        assert np.isfinite([train.kl, train.loss, train.entropy, train.grad_norm]).all()
        assert train.tokens_per_s > 0
        if step == 0 and credit.advantage == 0:
            # first step: policy == reference, so no KL pull either: no credit at all
            np.testing.assert_allclose(credit.credits, 0, atol=1e-6)
    watched = [(p.episode, p.sample, p.layer, p.head) for p in sink.of(tm.PrefillEvent)]
    assert watched == [(0, 2, 1, 3), (1, 2, 1, 3)]


def test_group_event_is_the_watched_group_with_the_sampling_policys_token_values(two_steps):
    """The group's tokens, rewards and advantages are those the step scored; its per-token
    log-probs (the update's forward pass) are those the decoder sampled with."""
    sink, _ = two_steps
    task = Task("train", 0)
    for step, (train, group) in enumerate(
        zip(sink.of(tm.TrainEvent), sink.of(tm.GroupEvent), strict=True)
    ):
        assert group.step == step and group.question == task.sample(step).question
        np.testing.assert_array_equal(group.rewards, train.rewards)
        credit = _watched_credit(sink, step)
        assert group.tokens[2] == credit.tokens and group.advantages[2] == credit.advantage
        decodes = [e for e in sink.tokens() if e.episode == step]
        n = len(decodes)
        np.testing.assert_allclose(
            np.exp(group.logprobs[2, :n]), [e.prob for e in decodes], rtol=2e-3, atol=1e-5
        )
        assert group.logprobs.shape == group.entropies.shape == (4, max(map(len, group.tokens)))
        assert (group.entropies >= 0).all()
        assert list(group.truncated) == [t[-1] not in EOS_TEXTS for t in group.tokens]
    # the prompt's image carries the cells of the shapes the question asks about
    for prefill in sink.of(tm.PrefillEvent):
        (image,) = prefill.images
        want = task.sample(prefill.episode).target_cells(8)
        np.testing.assert_array_equal(image.target_cells, want)


def test_the_policy_moves_when_rewards_differ_and_the_update_compiles_once(two_steps, random_model):
    """A random policy's answers are mostly malformed, and a group whose rewards are all
    equal has zero advantages: the policy must move when some group's rewards differ (when
    none do, AdamW may still turn the float noise of the KL term into a step)."""
    sink, trainer = two_steps
    before = jax.tree.leaves(nnx.state(random_model))
    after = jax.tree.leaves(trainer.state)
    moved = any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    spread = any(np.ptp(t.rewards) > 0 for t in sink.of(tm.TrainEvent))
    assert moved or not spread
    assert trainer._update._cache_size() == 1


def test_the_headless_step_learns_exactly_as_the_live_one(
    two_steps, random_model, embedded_processor
):
    """The same seed, without a viewer (a NullSink: no telemetry, no profile): the same
    answers, rewards, metrics, credit and learned policy as the live loop."""
    sink, live = two_steps
    settings = dataclasses.replace(SETTINGS, group_size=4)
    headless = GRPOTrainer(random_model, embedded_processor, settings)
    # the same settings: the live trainer's compiled log-probs and update serve both
    headless._logprobs, headless._update = live._logprobs, live._update
    task = Task("train", 0)
    for step, train in enumerate(sink.of(tm.TrainEvent)):
        credit = _watched_credit(sink, step)
        r = headless.step(task, step, seed=0, sink=tm.NullSink(), control=tm.RolloutControl())
        np.testing.assert_array_equal(r.rewards[0], train.rewards)
        for key in METRIC_KEYS:
            if key not in ("tokens_per_s", "timing_s"):  # wall times
                assert r.metrics[key] == getattr(train, key), key
        gen, s = r.generations[0], credit.sample
        assert embedded_processor.token_texts(gen.tokens[s, : gen.lengths[s]]) == credit.tokens
        np.testing.assert_array_equal(r.credit[0][s], credit.credits)
        assert r.advantages[0, s] == credit.advantage
    for a, b in zip(jax.tree.leaves(headless.state), jax.tree.leaves(live.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_stop_during_decoding_ends_without_another_update(random_model, embedded_processor):
    control = tm.RolloutControl()

    def on_event(event):
        if isinstance(event, tm.PrefillEvent) and event.episode == 1:
            control.stop()

    sink = Recorder(on_event)
    run_grpo(
        random_model, embedded_processor, Task("train", 0), sink=sink, control=control,
        group_size=2, settings=SETTINGS,
    )  # fmt: skip
    assert len(sink.of(tm.TrainEvent)) == 1
    assert sink.events[-1].kind != "train" and sink.events[-1].kind != "credit"


def test_paused_single_steps_decode_the_watched_answer_then_run_the_rest_of_the_step(
    random_model, embedded_processor
):
    """Paused, each single step is one decode step of the watched answer; once it is done the
    step waits, and the next single step runs the rest of it (the other prompts, the reward,
    the update: phase events at once); the next step's prefill arrives and waits."""
    import threading
    import time

    settings = dataclasses.replace(SETTINGS, prompts_per_step=2)
    control = tm.RolloutControl()
    control.set_paused(True)
    sink = Recorder()
    worker = threading.Thread(
        target=run_grpo,
        args=(random_model, embedded_processor, Task("train", 0)),
        kwargs=dict(sink=sink, control=control, group_size=4, steps=2, settings=settings),
    )
    worker.start()

    def settled(predicate, timeout=300.0):
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, [e.kind for e in sink.events][-12:]
            time.sleep(0.01)
        time.sleep(0.3)  # and nothing else follows on its own

    def kinds():
        return [e.kind for e in _not_compile(sink.events)]

    try:
        settled(lambda: sink.tokens())  # the prefill's token, then it waits
        while not sink.tokens()[-1].done:
            count = len(sink.tokens())
            assert "train" not in kinds()
            control.step_once()
            settled(lambda count=count: len(sink.tokens()) > count or sink.tokens()[-1].done)
        settled(lambda: kinds()[-1] == "phase")  # the watched group's decode ended
        assert "profile" not in kinds() and "reward" not in [
            getattr(e, "phase", None) for e in sink.events
        ]  # the watched answer is done: the rest of the step waits
        before = len(sink.events)
        control.step_once()
        settled(lambda: len(sink.of(tm.PrefillEvent)) == 2)
        rest = _not_compile(sink.events[before:])
        progress = [(e.phase, e.done, e.total) for e in rest if e.kind == "phase" and e.active]
        assert progress[:3] == [("decode", 1, 2), ("decode", 2, 2), ("reward", None, None)]
        assert [e.kind for e in rest][:3] == ["phase", "profile", "phase"]
        assert ("update", 2, 2) in progress and len(sink.of(tm.TrainEvent)) == 1
        # step 1: its prefill and the prefill's token, then paused before the decode steps
        assert [e.kind for e in rest][-3:] == ["prefill", "phase", "decode"]
        assert (sink.tokens()[-1].episode, sink.tokens()[-1].step) == (1, 0)
    finally:
        control.stop()
        worker.join(60)
