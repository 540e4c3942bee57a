"""The GRPO loop on a tiny random model: one compiled update, real metrics, the CLI."""

import json
import shutil

import jax
import numpy as np
import optax
import pytest

from model import cli
from model import telemetry as tm
from model.checkpoint import save_pretrained
from model.rl import grpo, train
from model.tasks import Task


def step(trainer, task, index):
    """Headless GRPO step ``index`` (seed 0)."""
    return trainer.step(task, index, seed=0, sink=tm.NullSink(), control=tm.RolloutControl())


@pytest.fixture(scope="module")
def trainer(random_model, embedded_processor):
    settings = train.GRPOSettings(
        group_size=4, prompts_per_step=1, max_new_tokens=4, learning_rate=1e-2
    )
    return train.GRPOTrainer(random_model, embedded_processor, settings)


def test_steps_update_the_policy_with_one_compiled_update(trainer, monkeypatch):
    task = Task("train", 0)
    before = jax.tree.leaves(trainer.state)
    sampled_rewards = trainer.rewards
    # the random policy's answers are malformed alike (equal rewards teach nothing): give the
    # group rewards that differ, so that the update has something to learn
    monkeypatch.setattr(
        trainer,
        "rewards",
        lambda *a: (sampled_rewards(*a)[0], np.array([1.0, 0.0, 0.0, 0.5], np.float32)),
    )
    results = [step(trainer, task, i) for i in range(2)]
    assert trainer._update._cache_size() == 1  # jitted once, reused
    for r in results:
        assert set(train.METRIC_KEYS) <= r.metrics.keys()
        scalars = [v for v in r.metrics.values() if not isinstance(v, dict)]
        dicts = [x for v in r.metrics.values() if isinstance(v, dict) for x in v.values()]
        assert np.isfinite(scalars + dicts).all()
        assert r.rewards.shape == (1, 4)
        assert r.metrics["reward_mean"] == pytest.approx(float(r.rewards.mean()))
        assert r.metrics["tokens_per_s"] > 0
        assert 0.0 <= r.metrics["clip_ratio"] <= 1.0
        assert [len(c) for c in r.credit[0]] == r.generations[0].lengths.tolist()
    # the frozen reference is untouched, the policy moved
    for a, b in zip(jax.tree.leaves(trainer.ref_state), before, strict=True):
        assert a is b
    after = jax.tree.leaves(trainer.state)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_each_sampled_batch_gets_updates_per_batch_updates(random_model, embedded_processor):
    task = Task("train", 2)
    for mu in (1, 2):
        settings = train.GRPOSettings(
            group_size=4, prompts_per_step=1, max_new_tokens=4, updates_per_batch=mu
        )
        trainer = train.GRPOTrainer(random_model, embedded_processor, settings)
        result = step(trainer, task, 0)
        assert int(optax.tree.get(trainer.opt_state, "count")) == mu
        if mu == 1:  # a single update is on-policy: its ratio is 1, nothing is clipped
            assert result.metrics["clip_ratio"] == 0.0


def test_update_credit_follows_the_advantage(trainer):
    task = Task("train", 1)
    ex = task.sample(0)
    inputs = trainer.processor.prepare(ex.question, [ex.image])
    gen, _ = trainer.sample(inputs, seed=3, telemetry=False)
    rewards = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    metrics, advantages, tokens = trainer.update([(inputs, gen, rewards)])
    np.testing.assert_allclose(advantages, [[1, -1, -1, 1]], atol=1e-5)
    assert metrics["kl"] >= 0 and metrics["grad_norm"] > 0
    for adv, c in zip(advantages[0], tokens["credit"][0], strict=True):
        # the KL pull is tiny next to the advantage after one or two updates
        assert (np.sign(c[np.abs(c) > 1e-6]) == np.sign(adv)).all()


def test_several_groups_per_update_are_normalised_group_by_group(random_model, embedded_processor):
    settings = train.GRPOSettings(group_size=3, prompts_per_step=2, max_new_tokens=4)
    trainer = train.GRPOTrainer(random_model, embedded_processor, settings)
    task = Task("train", 2)
    examples = trainer.step_examples(task, 1)
    assert [ex.question for ex in examples] == [task.sample(2).question, task.sample(3).question]
    groups = []
    for i, ex in enumerate(examples):
        inputs = embedded_processor.prepare(ex.question, [ex.image])
        gen, _ = trainer.sample(inputs, seed=i, telemetry=False)
        groups.append((inputs, gen, np.array([1.0, 0.0, 0.5][i:] + [1.0, 0.0, 0.5][:i], "f4")))
    metrics, advantages, tokens = trainer.update(groups)
    assert advantages.shape == (2, 3)
    np.testing.assert_allclose(advantages.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(advantages[0], [1.2247, -1.2247, 0], atol=1e-3)
    for name in ("credit", "logprob", "entropy"):
        assert [len(c) for c in tokens[name][1]] == groups[1][1].lengths.tolist()
    assert np.isfinite(list(metrics.values())).all()


def test_cli_prints_one_json_object_per_update(random_model, embedded_processor, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    save_pretrained(random_model, model_dir)
    for f in train.DEFAULT_MODEL.iterdir():
        if f.name.startswith(("tokenizer", "preprocessor")):
            shutil.copy(f, model_dir)
    assert cli.main(["rl", "--model", str(model_dir), "--steps", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        assert set(train.METRIC_KEYS) <= r.keys()
        # the fields of a TrainEvent: the record reads back as one
        event = tm.from_record({"type": "train", **r})
        assert set(event.timing_s) == {"gen", "reward", "update_actor", "step"}


def test_cli_bad_model_dir_is_one_line(tmp_path, capsys):
    assert cli.main(["rl", "--model", str(tmp_path / "nope"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


def test_without_train_vision_the_vision_tower_stays_as_it_was(random_model, embedded_processor):
    settings = train.GRPOSettings(
        group_size=4, prompts_per_step=1, max_new_tokens=4, learning_rate=1e-2, train_vision=False
    )
    trainer = train.GRPOTrainer(random_model, embedded_processor, settings)
    ex = Task("train", 1).sample(0)
    inputs = embedded_processor.prepare(ex.question, [ex.image])
    gen, _ = trainer.sample(inputs, seed=3, telemetry=False)
    trainer.update([(inputs, gen, np.array([1.0, 0.0, 0.0, 0.5], np.float32))])
    before, after = trainer.ref_state, trainer.state
    for a, b in zip(
        jax.tree.leaves(before["visual"]), jax.tree.leaves(after["visual"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    text = zip(
        jax.tree.leaves(before["language_model"]),
        jax.tree.leaves(after["language_model"]),
        strict=True,
    )
    assert any(not np.array_equal(a, b) for a, b in text)


def test_rollout_metrics_against_numpy():
    """Two groups of three answers: per-type means, zero-spread groups, lengths (EOS
    included), answers cut by the token limit, advantages and throughput."""
    from model.decode import Generation
    from model.tasks import Example

    eos, pad = 2, 0
    gens = [
        Generation(  # lengths 2, 4 (cut: no EOS), 1
            tokens=np.array([[5, eos, pad, pad], [5, 6, 7, 8], [eos, pad, pad, pad]], np.int32),
            lengths=np.array([2, 4, 1], np.int32),
            prompt_length=10,
            steps=3,
            decode_seconds=0.1,
        ),
        Generation(  # lengths 3, 4 (ends with EOS: not cut), 2
            tokens=np.array([[5, 6, eos, pad], [5, 6, 7, eos], [9, eos, pad, pad]], np.int32),
            lengths=np.array([3, 4, 2], np.int32),
            prompt_length=10,
            steps=3,
            decode_seconds=0.1,
        ),
    ]
    examples = [Example(None, "q", "a", qtype, None) for qtype in ("color", "count")]
    rewards = np.array([[1.0, 0.0, 0.5], [0.5, 0.5, 0.5]], np.float32)
    advantages = np.asarray(grpo.group_advantages(rewards))
    m = train.rollout_metrics(examples, rewards, advantages, gens, [eos], seconds=2.0)
    lengths = np.array([2, 4, 1, 3, 4, 2], np.float64)
    assert m["reward_mean"] == pytest.approx(rewards.mean())
    assert m["reward_std"] == pytest.approx(rewards.std())
    assert m["reward_by_type"] == pytest.approx({"color": 0.5, "count": 0.5})
    assert m["frac_reward_zero_std"] == 0.5
    assert m["completions_mean_length"] == pytest.approx(lengths.mean())
    assert (m["completions_min_length"], m["completions_max_length"]) == (1.0, 4.0)
    assert m["completions_clipped_ratio"] == pytest.approx(1 / 6)
    assert m["advantages_min"] == pytest.approx(advantages.min())
    assert m["advantages_max"] == pytest.approx(advantages.max())
    assert m["advantages_mean"] == pytest.approx(0.0, abs=1e-7)
    assert m["tokens_per_s"] == pytest.approx(lengths.sum() / 2.0)
