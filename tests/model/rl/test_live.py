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

SETTINGS = GRPOSettings(prompts_per_step=1, max_new_tokens=4, learning_rate=1e-2)
STEP_KINDS_HEAD = ["phase", "phase", "prefill", "phase"]
STEP_KINDS_TAIL = ["phase", "profile", "phase", "phase", "phase", "phase", "train", "credit"]


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
        assert rest[i + 4 + n : i + 4 + n + 8] == STEP_KINDS_TAIL
        i += 4 + n + 8
    assert i == len(rest)
    phases = [(e.phase, e.active) for e in _not_compile(sink.of(tm.PhaseEvent))][:10]
    assert phases == [
        ("prefill", True), ("prefill", False), ("decode", True), ("decode", False),
        ("reward", True), ("reward", False), ("update", True), ("update", False),
        ("prefill", True), ("prefill", False),
    ]  # fmt: skip
    (info,) = sink.of(tm.RunInfo)
    assert info.mode == "grpo" and info.batch_size == 4
    assert info.sampling["temperature"] == SETTINGS.temperature


def test_values_are_the_watched_samples(two_steps, embedded_processor):
    sink, _ = two_steps
    task = Task("train", 0)
    for step, (train, credit) in enumerate(
        zip(sink.of(tm.TrainEvent), sink.of(tm.CreditEvent), strict=True)
    ):
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
    events = zip(sink.of(tm.TrainEvent), sink.of(tm.CreditEvent), strict=True)
    for step, (train, credit) in enumerate(events):
        r = headless.step(task, step, seed=0, sink=tm.NullSink(), control=tm.RolloutControl())
        np.testing.assert_array_equal(r.rewards[0], train.rewards)
        for key in METRIC_KEYS:
            if key != "tokens_per_s":  # a wall time
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
