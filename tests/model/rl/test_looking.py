"""model.rl.looking: the share of the last prompt position's image attention on the asked
shapes, against the decoder's own prefill attention map (another code path)."""

import numpy as np

from model import telemetry as tm
from model.decode import generate
from model.rl import looking
from model.rollout import image_spans
from model.tasks import Task


def test_shares_are_those_of_the_prefill_attention_map(random_model, embedded_processor):
    task = Task("train", 0)
    examples = [task.sample(i) for i in range(4)]  # one of each type; sample 2 counts 0
    shares, uniform = looking.target_shares(random_model, embedded_processor, examples)
    layers = random_model.config.text.num_hidden_layers
    heads = random_model.config.text.num_attention_heads
    assert shares.shape == (4, layers, heads)
    assert np.isnan(shares[2]).all() and np.isnan(uniform[2])  # "0": nothing to look at
    for ex, share, even in zip(examples, shares, uniform, strict=True):
        cells = ex.target_cells(8)
        if len(cells) == 0:
            continue
        assert even == len(cells) / 64
        p = embedded_processor.prepare(ex.question, [ex.image])
        ids = p["input_ids"]
        ((start, end),) = image_spans(ids[0], random_model.config.image_token_id)
        for layer, head in [(0, 0), (layers - 1, heads - 1)]:
            row = _prefill_map(random_model, p, layer, head)[ids.shape[1] - 1, start:end]
            want = row[cells[:, 0] * 8 + cells[:, 1]].sum() / row.sum()
            assert abs(share[layer, head] - want) < 1e-4, (ex.qtype, layer, head)


def _prefill_map(m, prompt, layer: int, head: int) -> np.ndarray:
    """The selected head's ``[T, T]`` attention over the prompt, as the decoder's prefill
    reports it (not pooled below 128 tokens)."""
    seen = []
    generate(
        m,
        prompt["input_ids"],
        prompt["pixel_values"],
        prompt["image_grid_thw"],
        max_new_tokens=1,
        control=tm.RolloutControl(layer=layer, head=head),
        on_prefill=lambda t: seen.append(t.attn_map),
    )
    return seen[0]
