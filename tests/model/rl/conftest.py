"""A tiny random Qwen3-VL that speaks the embedded tokenizer, for the RL tests."""

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[3] / "assets" / "tiny-qwen3vl"


@pytest.fixture(scope="session")
def processor():
    from model.processor import Processor

    return Processor.from_pretrained(ASSETS)


@pytest.fixture(scope="session")
def tiny_policy(processor):
    """Random weights; the task's 256x256 images give a 16x16 patch grid (8x8 merged)."""
    from model.config import Qwen3VLConfig, TextConfig, VisionConfig
    from model.qwen3_vl import init_random

    vocab = processor.tokenizer.get_vocab()
    config = Qwen3VLConfig(
        text=TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, mrope_section=(2, 1, 1)),
        vision=VisionConfig(depth=2, hidden_size=16, intermediate_size=32, num_heads=2,
                            out_hidden_size=32, num_position_embeddings=16,
                            deepstack_visual_indexes=(0,)),
        tie_word_embeddings=True, image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"], vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )  # fmt: skip
    return init_random(config, seed=0)
