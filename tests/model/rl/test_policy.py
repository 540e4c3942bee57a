"""The training forward (fixed-shape batches, vmapped vision) equals the model's own logits."""

import jax
import numpy as np
import pytest
from flax import nnx

from model.config import Qwen3VLConfig, TextConfig, VisionConfig
from model.qwen3_vl import init_random
from model.rl import policy

IMG, PAD = 5, 0
CONFIG = Qwen3VLConfig(
    text=TextConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
        mrope_section=(4, 2, 2),
    ),
    vision=VisionConfig(
        depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
        patch_size=4, num_position_embeddings=16, deepstack_visual_indexes=(0, 1),
    ),
    tie_word_embeddings=True, image_token_id=IMG, video_token_id=6, vision_start_token_id=3,
    vision_end_token_id=4,
)  # fmt: skip


def _prompt(rng, question_len):
    """A processor-shaped prompt: text, <|vision_start|>, 4 image tokens, end, question."""
    ids = [1, 7, 3, IMG, IMG, IMG, IMG, 4, *rng.integers(8, 40, question_len)]
    return {
        "input_ids": np.asarray([ids], np.int32),
        "pixel_values": rng.normal(size=(16, 3 * 2 * 4 * 4)).astype(np.float32),
        "image_grid_thw": np.array([[1, 4, 4]]),
    }


@pytest.fixture(scope="module")
def model():
    """A random tiny model with every weight perturbed (a fresh init leaves norms at 1)."""
    graphdef, state = nnx.split(init_random(CONFIG, seed=0))
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(x.dtype), state)
    return nnx.merge(graphdef, state)


def test_packed_rows_match_model_logits(model):
    rng = np.random.default_rng(0)
    prompts = [_prompt(rng, 3), _prompt(rng, 5)]
    answers = [[9, 10, 2], [11, 2], [12, 13, 14, 2]]
    prompt_of_row = [0, 1, 0]  # two rows answer the first prompt, as in a GRPO group
    seqs = policy.pack(CONFIG, prompts, answers, prompt_of_row, 20, PAD)
    graphdef, state = nnx.split(model)
    got = np.asarray(policy.logits(graphdef, state, seqs))
    assert got.shape == (3, 20, 40)
    for b, (i, answer) in enumerate(zip(prompt_of_row, answers, strict=True)):
        p = prompts[i]
        ids = np.concatenate([p["input_ids"][0], answer])[None]
        want = model.logits(ids, p["pixel_values"], p["image_grid_thw"])[0]
        n = ids.shape[1]
        np.testing.assert_allclose(got[b, :n], want, atol=1e-5 * np.abs(want).max())
        # targets are the next tokens; the mask covers exactly the answer
        np.testing.assert_array_equal(seqs.targets[b, : n - 1], ids[0, 1:])
        assert seqs.mask[b].sum() == len(answer)
        assert seqs.mask[b, len(p["input_ids"][0]) - 1] == 1.0


def test_prompts_about_one_image_share_its_vision_tower_run(model):
    """Two questions about one image: one image in the batch, logits as if each had its own."""
    rng = np.random.default_rng(0)
    first, second = _prompt(rng, 3), _prompt(rng, 5)
    second["pixel_values"] = first["pixel_values"]
    seqs = policy.pack(CONFIG, [first, second], [[9, 2], [10, 2]], [0, 1], 16, PAD, [0, 0])
    assert seqs.pixels.shape[0] == 1
    np.testing.assert_array_equal(seqs.image_of_row, [0, 0])
    separate = policy.pack(CONFIG, [first, second], [[9, 2], [10, 2]], [0, 1], 16, PAD)
    graphdef, state = nnx.split(model)
    np.testing.assert_allclose(
        policy.logits(graphdef, state, seqs), policy.logits(graphdef, state, separate), atol=1e-6
    )
    with pytest.raises(ValueError, match="without gaps"):
        policy.pack(CONFIG, [first, second], [[9, 2], [10, 2]], [0, 1], 16, PAD, [1, 1])


def test_an_image_token_in_an_answer_is_text(model):
    """A sampled <|image_pad|> in an answer takes a text position, as in decoding."""
    rng = np.random.default_rng(0)
    prompts = [_prompt(rng, 3)]
    seqs = policy.pack(CONFIG, prompts, [[9, IMG, 2]], [0], 16, PAD)
    with_pad = policy.pack(CONFIG, prompts, [[9, PAD, 2]], [0], 16, PAD)
    np.testing.assert_array_equal(seqs.positions, with_pad.positions)
    np.testing.assert_array_equal(seqs.image_slots, with_pad.image_slots)


def test_pack_rejects_rows_longer_than_the_batch():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="more than the batch length"):
        policy.pack(CONFIG, [_prompt(rng, 3)], [[9] * 10], [0], 16, PAD)


def test_windows_share_each_prompts_forward_and_match_the_full_rows(model):
    """A GRPO batch laid out as windows (each prompt's pass run once for all its answers)
    gives the logits of the full rows at the answer positions."""
    rng = np.random.default_rng(0)
    prompts = [_prompt(rng, 3), _prompt(rng, 5)]
    answers = [[9, 10, 2], [11, 2], [12, 13, 14, 2], [15]]
    prompt_of_row = [0, 1, 0, 1]
    seqs = policy.pack(CONFIG, prompts, answers, prompt_of_row, 20, PAD)
    windows = policy.pack_windows(CONFIG, prompts, answers, prompt_of_row, 16, 4, PAD)
    assert windows.prompts.input_ids.shape == (2, 16)
    graphdef, state = nnx.split(model)
    full = np.asarray(policy.logits(graphdef, state, seqs))
    got = np.asarray(jax.jit(policy.forward_windows)(model, windows))
    assert got.shape == (4, 4, 40)
    for b, (i, answer) in enumerate(zip(prompt_of_row, answers, strict=True)):
        start = prompts[i]["input_ids"].shape[1] - 1
        assert windows.start[b] == start
        n = len(answer)  # the window's positions that predict an answer token
        want = full[b, start : start + n]
        np.testing.assert_allclose(got[b, :n], want, atol=1e-5 * np.abs(want).max())
        np.testing.assert_array_equal(windows.targets[b, :n], answer)
        np.testing.assert_array_equal(windows.mask[b], seqs.mask[b, start : start + 4])
        np.testing.assert_array_equal(windows.mask[b].sum(), n)
    with pytest.raises(ValueError, match="window width"):
        policy.pack_windows(CONFIG, prompts, [[9] * 5], [0], 16, 4, PAD)
