"""Eval of a model on the task: its answers to eval-split questions, rewarded per type.

Greedy (``evaluate``): one answer per question. Sampled (``evaluate_sampled``): ``samples``
answers per question at a temperature, the distribution GRPO samples from and optimises.
``accuracy`` is the fraction of answers with reward 1.0 (exactly right); ``reward`` the mean
task reward (partial credit and the malformed penalty included); ``n`` counts answers;
``rewards`` lists them, question by question in a fixed order (a sampled eval's ``samples``
answers to one question together), so two evals of one task can be compared pairwise.
``content`` / ``content_accuracy`` are the same for what the answers say, their form aside
(``model.tasks.rewards.content_reward``: ``it is red`` counts as ``red``).
"""

from __future__ import annotations

import numpy as np

from model.decode import generate
from model.processor import Processor
from model.sampling import SamplingParams
from model.tasks import QTYPES, Task
from model.tasks.rewards import content_reward

MAX_ANSWER_TOKENS = 8
EVAL_BATCH = 8


def greedy_answers(m, processor: Processor, examples) -> list[str]:
    """The model's greedy answer to each example, decoded by ``model.decode.generate``.

    Prompts of one length are decoded together, ``EVAL_BATCH`` rows per call; a short last
    batch is filled up with copies of its last prompt (their answers are dropped), so every
    call has the same shape and compiles once.
    """
    eos = sorted(processor.eos_token_ids)
    prepared = [processor.prepare(ex.question, [ex.image]) for ex in examples]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prepared):
        by_length.setdefault(p["input_ids"].shape[1], []).append(i)
    texts = [""] * len(examples)
    for indices in by_length.values():
        for start in range(0, len(indices), EVAL_BATCH):
            chunk = indices[start : start + EVAL_BATCH]
            rows = chunk + [chunk[-1]] * (EVAL_BATCH - len(chunk))
            gen = generate(
                m,
                np.concatenate([prepared[i]["input_ids"] for i in rows]),
                np.concatenate([prepared[i]["pixel_values"] for i in rows]),
                np.concatenate([prepared[i]["image_grid_thw"] for i in rows]),
                max_new_tokens=MAX_ANSWER_TOKENS,
                eos_token_ids=eos,
                telemetry=False,
            )
            for row, i in enumerate(chunk):
                texts[i] = processor.decode(gen.tokens[row, : gen.lengths[row]])
    return texts


def _report(scored: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """Per question type (and ``all``) from its answers' (reward, content reward)."""
    scored = {q: scored[q] for q in QTYPES}
    scored["all"] = [x for q in QTYPES for x in scored[q]]
    report = {}
    for q, pairs in scored.items():
        r, c = np.asarray(pairs, np.float64).reshape(-1, 2).T
        report[q] = {
            "accuracy": float(np.mean(r == 1.0)),
            "reward": float(np.mean(r)),
            "content_accuracy": float(np.mean(c == 1.0)),
            "content": float(np.mean(c)),
            "n": len(r),
            "rewards": [float(x) for x in r],
        }
    return report


def _score(task: Task, example, answer: str) -> tuple[float, float]:
    return task.reward(example, answer), content_reward(example.qtype, answer, example.answer)


def evaluate(m, processor: Processor, task: Task, per_type: int) -> dict[str, dict[str, float]]:
    """``{qtype: {"accuracy", "reward", "n"}}`` of greedy answers to the first ``per_type``
    examples of each question type, plus ``"all"``."""
    examples = [task.sample(i) for i in range(per_type * len(QTYPES))]
    answers = greedy_answers(m, processor, examples)
    scored = {q: [] for q in QTYPES}
    for ex, answer in zip(examples, answers, strict=True):
        scored[ex.qtype].append(_score(task, ex, answer))
    return _report(scored)


def evaluate_sampled(
    m, processor: Processor, task: Task, per_type: int, *, temperature: float, samples: int
) -> dict[str, dict[str, float]]:
    """As ``evaluate``, over ``samples`` answers per question drawn at ``temperature``
    (question ``i`` uses seed ``i``)."""
    eos = sorted(processor.eos_token_ids)
    scored = {q: [] for q in QTYPES}
    for i in range(per_type * len(QTYPES)):
        ex = task.sample(i)
        p = processor.prepare(ex.question, [ex.image])
        gen = generate(
            m, p["input_ids"], p["pixel_values"], p["image_grid_thw"],
            max_new_tokens=MAX_ANSWER_TOKENS, sampling=SamplingParams(temperature=temperature),
            eos_token_ids=eos, seed=i, num_samples=samples, telemetry=False,
        )  # fmt: skip
        for b in range(samples):
            answer = processor.decode(gen.tokens[b, : gen.lengths[b]])
            scored[ex.qtype].append(_score(task, ex, answer))
    return _report(scored)


def format_report(report: dict[str, dict[str, float]]) -> str:
    lines = [f"{'type':<8} {'n':>4} {'accuracy':>9} {'reward':>7} {'content accuracy':>17}"]
    for q, r in report.items():
        lines.append(
            f"{q:<8} {r['n']:>4} {r['accuracy']:>9.1%} {r['reward']:>7.3f}"
            f" {r['content_accuracy']:>17.1%}"
        )
    return "\n".join(lines)
