"""Shared fixtures of the model tests (torch-free): the stored tiny checkpoint and its
reference outputs from transformers (``fixtures/make_fixtures.py``), and a tiny random model
that speaks the embedded tokenizer (``assets/tiny-qwen3vl``)."""

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
ASSETS = Path(__file__).resolve().parents[2] / "assets" / "tiny-qwen3vl"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return FIXTURES / "tiny"


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from model import load_pretrained

    return load_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "tiny_reference.npz") as f:
        return dict(f)


@pytest.fixture(scope="session")
def embedded_processor():
    """The embedded tokenizer and image processor."""
    from model.processor import Processor

    return Processor.from_pretrained(ASSETS)


def tiny_random_model(processor):
    """A tiny random Qwen3-VL whose vocabulary and image tokens are ``processor``'s: small
    enough to compile in seconds."""
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


@pytest.fixture(scope="session")
def random_model(embedded_processor):
    """``tiny_random_model`` of the embedded processor."""
    return tiny_random_model(embedded_processor)
