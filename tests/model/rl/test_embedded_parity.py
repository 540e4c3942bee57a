"""The shipped checkpoint gives the same logits in transformers as in our model (needs torch)."""

import numpy as np
import pytest

from model.checkpoint import load_pretrained
from model.tasks import Task
from tests.model.conftest import ASSETS

pytestmark = pytest.mark.parity


def test_shipped_checkpoint_logits_equal_transformers(embedded_processor):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    hf = Qwen3VLForConditionalGeneration.from_pretrained(ASSETS, dtype=torch.float32).eval()
    ours = load_pretrained(ASSETS)
    task = Task("eval", 0)
    for i in range(4):  # one example of each question type
        ex = task.sample(i)
        p = embedded_processor.prepare(ex.question, [ex.image])
        ids = p["input_ids"]
        with torch.no_grad():
            ref = hf(
                input_ids=torch.tensor(ids, dtype=torch.long),
                pixel_values=torch.tensor(p["pixel_values"]),
                image_grid_thw=torch.tensor(p["image_grid_thw"]),
                mm_token_type_ids=torch.tensor(
                    (ids == embedded_processor.image_token_id).astype(np.int64)
                ),
            ).logits.numpy()
        got = ours.logits(ids, p["pixel_values"], p["image_grid_thw"])
        err, scale = np.abs(got - ref).max(), np.abs(ref).max()
        assert err <= 1e-4 * scale, f"{ex.qtype}: max|diff| {err:.3g} vs max|ref| {scale:.3g}"
