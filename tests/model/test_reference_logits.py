"""Our model against transformers' outputs stored in fixtures/ (no torch needed)."""

import numpy as np


def _close(ours, ref):
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_text_logits(tiny_model, reference):
    _close(tiny_model.logits(reference["text_ids"]), reference["text_logits"])


def test_two_image_logits(tiny_model, reference):
    r = reference
    ours = tiny_model.logits(r["image_ids"], r["pixel_values"], r["image_grid_thw"])
    _close(ours, r["image_logits"])


def test_images_change_the_logits(tiny_model, reference):
    r = reference
    blank = tiny_model.logits(r["image_ids"], np.zeros_like(r["pixel_values"]), r["image_grid_thw"])
    assert np.abs(blank - r["image_logits"]).max() > 1e-2


def test_greedy_generation_equals_transformers_generate(tiny_model, reference):
    from model.decode import generate

    r = reference
    for ids, pixels, grid, expected in [
        (r["text_ids"], None, None, r["text_greedy"]),
        (r["image_ids"], r["pixel_values"], r["image_grid_thw"], r["image_greedy"]),
    ]:
        gen = generate(tiny_model, ids, pixels, grid, max_new_tokens=16, eos_token_ids=[99])
        np.testing.assert_array_equal(gen.tokens, expected)
