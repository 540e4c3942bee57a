"""Benchmark: GRPO updates from the shipped checkpoint raise the eval reward.

    python -m bench.grpo_eval [--updates 50] [--per-type 150] [--seed 0] [--model DIR]
                              [--set prompts_per_step=16 --set train_vision=true ...]

Eval on the eval split, then ``--updates`` GRPO steps on the train split (the settings of
``python -m model rl``, ``GRPOSettings`` fields overridden by ``--set``: each step samples a
group for each of P questions and makes ``updates_per_batch`` optimizer updates), then the
same eval again. Two evals of the first ``--per-type`` questions of each type: greedy
answers, and 8 answers sampled at the GRPO temperature (the policy GRPO samples from and
optimises). Prints reward and accuracy per question type before and after, the paired change
per type with its standard error, the content accuracy (what the answers say, their form
aside), where the model looks (``model.rl.looking``: per type, the share of the last prompt
position's image attention on the asked shapes, for the layer and head with the largest
share), the train reward of the first and last 8 updates and the wall times.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from model import telemetry as tm
from model.checkpoint import load_pretrained
from model.processor import Processor
from model.rl import evaluate, looking
from model.rl.train import DEFAULT_MODEL, DEFAULT_SETTINGS, GRPOSettings, GRPOTrainer
from model.tasks import QTYPES, Task

SAMPLES = 8  # sampled answers per question in the sampled eval


def paired_gain(before: list[float], after: list[float], per_question: int) -> tuple[float, float]:
    """Mean and standard error of the per-question change of the mean reward (the same
    questions before and after, ``per_question`` answers each)."""
    b = np.asarray(before).reshape(-1, per_question).mean(1)
    a = np.asarray(after).reshape(-1, per_question).mean(1)
    diff = a - b
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def settings_with(overrides: list[str]) -> GRPOSettings:
    """``DEFAULT_SETTINGS`` with ``field=value`` overrides (the field's own type)."""
    kinds = {
        f.name: type(getattr(DEFAULT_SETTINGS, f.name))
        for f in dataclasses.fields(DEFAULT_SETTINGS)
    }
    changes = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in kinds:
            raise SystemExit(f"--set: no GRPOSettings field {name!r} (fields: {', '.join(kinds)})")
        if kinds[name] is bool and value.lower() not in ("true", "false"):
            raise SystemExit(f"--set {name}: true or false, not {value!r}")
        changes[name] = value.lower() == "true" if kinds[name] is bool else kinds[name](value)
    return dataclasses.replace(DEFAULT_SETTINGS, **changes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), metavar="DIR")
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--per-type", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    settings = settings_with(args.set)

    m = load_pretrained(Path(args.model))
    processor = Processor.from_pretrained(Path(args.model))
    eval_task, train_task = Task("eval", args.seed), Task("train", args.seed)

    def sampled(model):
        return evaluate.evaluate_sampled(
            model,
            processor,
            eval_task,
            args.per_type,
            temperature=settings.temperature,
            samples=SAMPLES,
        )

    examples = [eval_task.sample(i) for i in range(args.per_type * len(QTYPES))]
    start = time.perf_counter()
    before = evaluate.evaluate(m, processor, eval_task, args.per_type)
    eval_s = time.perf_counter() - start
    before_sampled = sampled(m)
    looked_before, uniform = looking.target_shares(m, processor, examples)

    trainer = GRPOTrainer(m, processor, settings)
    print(f"settings: {trainer.settings}")
    start, rewards, seconds = time.perf_counter(), [], []
    for step in range(args.updates):
        r = trainer.step(
            train_task, step, seed=args.seed, sink=tm.NullSink(), control=tm.RolloutControl()
        )
        rewards.append(r.metrics["reward_mean"])
        seconds.append(r.metrics["timing_s"]["step"])
        if (step + 1) % 10 == 0:
            print(
                f"update {step + 1:>3}  reward {r.metrics['reward_mean']:+.3f}  "
                f"kl {r.metrics['kl']:.4f}  {time.perf_counter() - start:.0f}s",
                flush=True,
            )
    train_s = time.perf_counter() - start
    after = evaluate.evaluate(trainer.model, processor, eval_task, args.per_type)
    after_sampled = sampled(trainer.model)
    looked_after, _ = looking.target_shares(trainer.model, processor, examples)

    temperature = f"temperature {settings.temperature:g}, {SAMPLES} per question"
    for title, b_, a_ in (
        ("greedy answers", before, after),
        (f"sampled answers ({temperature})", before_sampled, after_sampled),
    ):
        print(f"\n{title}")
        per = 1 if b_ is before else SAMPLES
        header = ("type", "n", "reward before", "after", "change ± s.e.", "acc before", "after")
        header += ("content acc before", "after")
        print("{:<8} {:>5} {:>14} {:>7} {:>15} {:>11} {:>7} {:>19} {:>7}".format(*header))
        for q in (*QTYPES, "all"):
            b, a = b_[q], a_[q]
            gain, se = paired_gain(b["rewards"], a["rewards"], per)
            print(
                f"{q:<8} {b['n']:>5} {b['reward']:>14.3f} {a['reward']:>7.3f} "
                f"{gain:>+8.3f} ± {se:.3f} {b['accuracy']:>11.1%} {a['accuracy']:>7.1%}"
                f" {b['content_accuracy']:>19.1%} {a['content_accuracy']:>7.1%}"
            )
    print("\nlooking at the asked shapes: share of the last prompt position's image attention")
    print("on their cells, for the layer and head with the largest mean share (uniform: even)")
    header = ("type", "n", "uniform", "head", "before", "after", "head after", "after")
    print("{:<8} {:>5} {:>8} {:>6} {:>7} {:>6} {:>11} {:>6}".format(*header))
    for q in QTYPES:
        rows = np.asarray([ex.qtype == q for ex in examples]) & ~np.isnan(uniform)
        b, a = np.nanmean(looked_before[rows], 0), np.nanmean(looked_after[rows], 0)
        lb, hb = np.unravel_index(np.argmax(b), b.shape)
        la, ha = np.unravel_index(np.argmax(a), a.shape)
        print(
            f"{q:<8} {rows.sum():>5} {np.mean(uniform[rows]):>8.3f} {f'L{lb} H{hb}':>6} "
            f"{b[lb, hb]:>7.3f} {a[lb, hb]:>6.3f} {f'L{la} H{ha}':>11} {a[la, ha]:>6.3f}"
        )
    n = min(8, len(rewards) // 2)
    print(
        f"\ntrain reward: first {n} updates {np.mean(rewards[:n]):.3f}, last {n} "
        f"{np.mean(rewards[-n:]):.3f} ({np.mean(rewards[-n:]) - np.mean(rewards[:n]):+.3f}); "
        f"{np.mean(seconds):.1f} s per update on average (the first compiles)"
    )
    print()
    for title, b_, a_, per in (
        ("greedy", before, after, 1),
        ("sampled", before_sampled, after_sampled, SAMPLES),
    ):
        gain, se = paired_gain(b_["all"]["rewards"], a_["all"]["rewards"], per)
        print(
            f"{title} eval reward change: {gain:+.3f} ± {se:.3f} (paired over "
            f"{b_['all']['n'] // per} questions; {gain / se:+.1f} standard errors)"
        )
    print(f"\n{args.updates} GRPO updates: {train_s:.0f}s; one eval: {eval_s:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
