"""A GRPO run for the end-to-end tests: a tiny random Qwen3-VL (the embedded tokenizer's
vocabulary) learning the synthetic task with ``model.rl.live.run_grpo``, two questions a step,
four answers each, shown in the dashboard:

    python tests/dash/live_grpo.py [--record FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SETTINGS = dict(prompts_per_step=2, max_new_tokens=4, learning_rate=1e-2)


def rollout():
    from model.processor import Processor
    from model.rl.live import run_grpo
    from model.rl.train import GRPOSettings
    from model.tasks import Task
    from tests.model.conftest import tiny_random_model

    processor = Processor.from_pretrained(ROOT / "assets" / "tiny-qwen3vl")
    m = tiny_random_model(processor)

    def run(sink, control) -> None:
        settings = GRPOSettings(**SETTINGS)
        task = Task("train", 0)
        run_grpo(m, processor, task, sink=sink, control=control, group_size=4, settings=settings)

    return run


def main() -> int:
    import dash

    p = argparse.ArgumentParser()
    p.add_argument("--record", metavar="FILE")
    args = p.parse_args()
    return dash.run(rollout(), record=args.record)


if __name__ == "__main__":
    raise SystemExit(main())
