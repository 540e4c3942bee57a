"""Eval: batched greedy answers equal one-at-a-time generation; the report adds up."""

import numpy as np

from model.decode import generate
from model.rl import evaluate
from model.tasks import QTYPES, Task


def test_batched_greedy_answers_equal_single_generation(random_model, embedded_processor):
    task = Task("eval", 0)
    examples = [task.sample(i) for i in range(3)]
    got = evaluate.greedy_answers(random_model, embedded_processor, examples)
    for ex, answer in zip(examples, got, strict=True):
        p = embedded_processor.prepare(ex.question, [ex.image])
        gen = generate(
            random_model, p["input_ids"], p["pixel_values"], p["image_grid_thw"],
            max_new_tokens=evaluate.MAX_ANSWER_TOKENS,
            eos_token_ids=sorted(embedded_processor.eos_token_ids), telemetry=False,
        )  # fmt: skip
        assert answer == embedded_processor.decode(gen.tokens[0, : gen.lengths[0]])


def test_report_counts_every_type(random_model, embedded_processor):
    report = evaluate.evaluate(random_model, embedded_processor, Task("eval", 0), per_type=2)
    assert list(report) == [*QTYPES, "all"]
    assert all(report[q]["n"] == 2 for q in QTYPES) and report["all"]["n"] == 8
    mean = np.mean([report[q]["reward"] for q in QTYPES])
    assert np.isclose(report["all"]["reward"], mean)
    assert len(report["all"]["rewards"]) == 8
    assert np.isclose(np.mean(report["all"]["rewards"]), report["all"]["reward"])
    assert "accuracy" in evaluate.format_report(report)
