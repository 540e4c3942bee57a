"""Where the model looks: the share of a prompt's image attention that falls on the cells of
the shapes its question asks about (ground truth the task knows, ``Example.target_cells``).

The query is the prompt's last position, the one whose logits choose the first answer
token. Per example, layer and query head: the attention weight on the target cells (merged
vision tokens) over the weight on all of the image's tokens, so 1 means the head reads only
the asked shapes and the uniform share is the targets' fraction of the image's cells. A
measurement for reports: nothing of it reaches the model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.processor import Processor
from model.rl import policy

BATCH = 16  # prompts per forward pass


@functools.partial(jax.jit, static_argnums=0)
def _image_rows(graphdef: nnx.GraphDef, state: nnx.State, seqs: policy.Sequences, last):
    """``[L, B, H, K]``: row ``last[b]``'s attention over the ``K`` image tokens of row b."""
    m = nnx.merge(graphdef, state)
    x, deepstack = policy.embed(m, seqs)
    cos, sin = m.cos_sin(seqs.positions)
    rows, k = seqs.image_slots.shape
    text = m.config.text
    found = jnp.zeros((text.num_hidden_layers, rows, text.num_attention_heads, k), jnp.float32)

    def observe(found, layer, start, probs):  # probs [B, H, Tb, Tw]: queries start + i
        i = last - start
        inside = (i >= 0) & (i < probs.shape[2])
        row = probs[jnp.arange(rows), :, jnp.clip(i, 0, probs.shape[2] - 1)]  # [B, H, Tw]
        slots = jnp.clip(seqs.image_slots, 0, probs.shape[3] - 1)[:, None, :]
        image = jnp.take_along_axis(row, jnp.broadcast_to(slots, (*row.shape[:2], k)), axis=2)
        return found.at[layer].set(jnp.where(inside[:, None, None], image, found[layer]))

    *_, found = m.language_model(x, cos, sin, deepstack, observe, found)
    return found


def target_shares(m, processor: Processor, examples) -> tuple[np.ndarray, np.ndarray]:
    """``[N, L, H]`` share of each example's image attention on its target cells, at the
    prompt's last position, and ``[N]`` the share an even spread over the image would give;
    NaN for an example without targets (a count of 0)."""
    graphdef, state = nnx.split(m)
    merge = m.config.vision.spatial_merge_size
    pad = processor.tokenizer.pad_token_id
    prompts = [processor.prepare(ex.question, [ex.image]) for ex in examples]
    length = max(p["input_ids"].shape[1] for p in prompts)
    shares, uniform = [], []
    for start in range(0, len(examples), BATCH):
        index = list(range(start, min(start + BATCH, len(examples))))
        rows = index + [index[-1]] * (BATCH - len(index))  # one shape: compiled once
        seqs = policy.pack(
            m.config,
            [prompts[i] for i in rows],
            [[] for _ in rows],
            list(range(BATCH)),
            length,
            pad,
        )
        last = np.asarray([prompts[i]["input_ids"].shape[1] - 1 for i in rows], np.int32)
        image = np.asarray(_image_rows(graphdef, state, seqs, last))  # [L, B, H, K]
        for b, i in enumerate(index):
            _, h, w = np.asarray(prompts[i]["image_grid_thw"]).reshape(3) // [1, merge, merge]
            cells = examples[i].target_cells(h)
            if len(cells) == 0:
                shares.append(np.full((image.shape[0], image.shape[2]), np.nan))
                uniform.append(np.nan)
                continue
            on = image[:, b][..., cells[:, 0] * w + cells[:, 1]].sum(-1)
            shares.append(on / image[:, b].sum(-1))  # [L, H]
            uniform.append(len(cells) / (h * w))
    return np.stack(shares), np.asarray(uniform)
