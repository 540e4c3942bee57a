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


def tiny_model(processor):
    """A random Qwen3-VL small enough to compile in seconds."""
    from model.config import Qwen3VLConfig, TextConfig, VisionConfig
    from model.qwen3_vl import init_random

    vocab = processor.tokenizer.get_vocab()
    config = Qwen3VLConfig(
        text=TextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            mrope_section=(2, 1, 1),
        ),
        vision=VisionConfig(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            num_position_embeddings=16,
            deepstack_visual_indexes=(0,),
        ),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    return init_random(config, seed=0)


def rollout():
    from model.processor import Processor
    from model.rl.live import run_grpo
    from model.rl.train import GRPOSettings
    from model.tasks import Task

    processor = Processor.from_pretrained(ROOT / "assets" / "tiny-qwen3vl")
    m = tiny_model(processor)

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
