"""Our Qwen3-VL against transformers' on tiny random configurations (needs torch)."""

import numpy as np
import pytest

from tests.model.fixtures import make_fixtures as mk

pytestmark = pytest.mark.parity

CASES = {
    "gqa-untied": {},
    "mha-tied-hd16": dict(
        heads=2, kv_heads=2, head_dim=16, mrope=(4, 2, 2), tied=True, deepstack=(1,), vision_heads=4
    ),
    "mqa-hd12-unsorted-deepstack": dict(
        heads=4, kv_heads=1, head_dim=12, mrope=(2, 2, 2), layers=2, deepstack=(2, 0)
    ),
    "no-deepstack": dict(mrope=(1, 2, 1), deepstack=()),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its save_pretrained directory)."""
    from model import load_pretrained

    hf = mk.perturbed_model(mk.hf_config(**CASES[request.param]), seed=len(request.param))
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, load_pretrained(path)


def _batch_of_two():
    ids_a, pix_a, grid_a = mk.image_prompt([(1, 4, 6)], seed=1)
    ids_b, pix_b, grid_b = mk.image_prompt([(1, 6, 4)], text=(8, 9, 10), seed=2)
    cat = np.concatenate
    return cat([ids_a, ids_b]), cat([pix_a, pix_b]), cat([grid_a, grid_b])


INPUTS = {
    "text": lambda: (np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9]]), None, None),
    "one-image": lambda: mk.image_prompt([(1, 4, 6)]),
    "two-images": lambda: mk.image_prompt([(1, 4, 4), (1, 8, 6)]),
    "batch-of-two": _batch_of_two,
}


def assert_close(ours, ref):
    assert ours.shape == ref.shape
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    assert err <= 1e-4 * scale, f"max|diff| {err:.3g} vs max|ref| {scale:.3g}"


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_logits_equal_transformers(pair, inputs):
    hf, ours = pair
    ids, pixels, grid = INPUTS[inputs]()
    assert_close(ours.logits(ids, pixels, grid), mk.hf_logits(hf, ids, pixels, grid))


def test_our_save_loads_in_transformers(pair, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from model import save_pretrained

    _, ours = pair
    save_pretrained(ours, tmp_path)
    hf = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pixels, grid = INPUTS["two-images"]()
    assert_close(ours.logits(ids, pixels, grid), mk.hf_logits(hf, ids, pixels, grid))


def test_random_init_saves_for_transformers(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from model import init_random, save_pretrained
    from model.config import Qwen3VLConfig

    config = Qwen3VLConfig.from_dict(mk.hf_config(tied=True).to_dict())
    ours = init_random(config, seed=3)
    save_pretrained(ours, tmp_path)
    hf = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pixels, grid = INPUTS["one-image"]()
    assert_close(ours.logits(ids, pixels, grid), mk.hf_logits(hf, ids, pixels, grid))


def test_stored_fixtures_match_transformers(reference, tiny_dir):
    """The torch-free reference test compares against these; they must be transformers'."""
    from transformers import Qwen3VLForConditionalGeneration

    hf = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    r = reference
    np.testing.assert_allclose(mk.hf_logits(hf, r["text_ids"]), r["text_logits"], atol=1e-5)
    image = mk.hf_logits(hf, r["image_ids"], r["pixel_values"], r["image_grid_thw"])
    np.testing.assert_allclose(image, r["image_logits"], atol=1e-5)
    np.testing.assert_array_equal(mk.hf_greedy(hf, r["text_ids"], n=16), r["text_greedy"])


@pytest.mark.parametrize("inputs", ["text", "two-images", "batch-of-two"])
def test_greedy_generation_equals_transformers(pair, inputs):
    from model.decode import generate

    hf, ours = pair
    ids, pixels, grid = INPUTS[inputs]()
    ref = mk.hf_greedy(hf, ids, pixels, grid, n=32)
    gen = generate(ours, ids, pixels, grid, max_new_tokens=32, eos_token_ids=[mk.EOS])
    np.testing.assert_array_equal(gen.tokens[:, : ref.shape[1]], ref)


@pytest.mark.parametrize("inputs", ["text", "two-images", "batch-of-two"])
def test_bfloat16_logits_match_transformers_in_bfloat16(pair, tmp_path, inputs):
    """Ours and transformers' both in bfloat16, from the same checkpoint. Each rounds to
    bfloat16 (8 significant bits) at its own places in its own order, so the two cannot agree
    much better than bfloat16 agrees with float32: the tolerance is twice transformers' own
    bfloat16 error (its bfloat16 logits against its float32 ones, same inputs; measured, the
    difference is 0.9-1.3 times that error), and within 3 % of the largest logit (measured
    0.9-1.8 %)."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from model import load_pretrained

    hf32, _ = pair
    hf32.save_pretrained(tmp_path)
    hf16 = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ours = load_pretrained(tmp_path, "bfloat16")
    ids, pixels, grid = INPUTS[inputs]()
    exact = mk.hf_logits(hf32, ids, pixels, grid)
    theirs = mk.hf_logits(hf16.eval(), ids, pixels, grid)
    got = ours.logits(ids, pixels, grid)
    own = np.abs(theirs - exact).max()
    err, scale = np.abs(got - theirs).max(), np.abs(exact).max()
    assert err <= 2 * own, f"max|ours - theirs| {err:.3g}, their bf16 error {own:.3g}"
    assert err <= 0.03 * scale, f"max|ours - theirs| {err:.3g} vs max|logit| {scale:.3g}"
