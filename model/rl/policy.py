"""The model as a differentiable function of its parameters, on fixed-shape batches.

Training (supervised pretraining and GRPO updates) needs the logits of whole sequences,
prompt (image + question in the chat template) followed by an answer, as a pure function
of the parameters, jitted once and reused. So every batch has one shape:

- ``B`` rows of ``L`` tokens, padded on the right (causal attention: padding never
  changes the logits of the positions before it);
- ``n`` images of one patch grid (the task's images all have one size). The vision tower
  runs image by image under ``vmap``, so its attention stays inside one image
  (``[P, P]``, not ``[n P, n P]``), and a GRPO group of ``G`` answers to one prompt runs it
  once for the whole group: row ``b`` shows image ``image_of_row[b]``.

The forward is the one of ``model.qwen3_vl`` (same modules, same parameters, same mRoPE
positions from ``model.rope.get_rope_index``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.attention import attention
from model.config import Qwen3VLConfig
from model.rope import get_rope_index
from model.vision import grid_inputs


@dataclasses.dataclass(frozen=True)
class Sequences:
    """A fixed-shape batch of prompt + answer rows (a pytree of arrays).

    ``targets[:, t]`` is the token after position ``t``; ``mask[:, t]`` is 1 where that
    token belongs to the answer, so ``logits[:, t]`` is scored against it.
    """

    input_ids: np.ndarray  # [B, L] int32
    positions: np.ndarray  # [3, B, L] int32 mRoPE (t, h, w)
    image_slots: np.ndarray  # [B, K] int32 positions of the K image tokens of each row
    image_of_row: np.ndarray  # [B] int32 index into pixels
    pixels: np.ndarray  # [n, P, C*Tp*Ps*Ps] float32 patches of each image
    vision: dict[str, np.ndarray]  # model.vision.grid_inputs of one image
    targets: np.ndarray  # [B, L] int32
    mask: np.ndarray  # [B, L] float32


jax.tree_util.register_dataclass(
    Sequences,
    data_fields=[f.name for f in dataclasses.fields(Sequences)],
    meta_fields=[],
)


def pack(
    config: Qwen3VLConfig,
    prompts: list[dict],
    answers: list[list[int]],
    prompt_of_row: list[int],
    length: int,
    pad_id: int,
    image_of_prompt: list[int] | None = None,
) -> Sequences:
    """Rows ``prompts[prompt_of_row[b]]['input_ids'] + answers[b]``, padded to ``length``.

    ``prompts`` are ``model.processor.Processor.prepare`` outputs with one image each, all
    of one grid. Prompts that show the same image (several questions about one scene) say so
    with ``image_of_prompt`` (default: every prompt its own image): the vision tower then
    runs once per image. Raises ``ValueError`` when a row does not fit in ``length``.
    """
    grid = np.asarray(prompts[0]["image_grid_thw"]).reshape(-1, 3)
    for p in prompts:
        if not np.array_equal(np.asarray(p["image_grid_thw"]).reshape(-1, 3), grid):
            raise ValueError("all images of a batch must have one patch grid")
    if len(grid) != 1:
        raise ValueError("each prompt must show exactly one image")
    rows = len(answers)
    prompt_ids = np.full((rows, length), pad_id, np.int32)
    input_ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.float32)
    for b, (p, answer) in enumerate(zip(prompt_of_row, answers, strict=True)):
        prompt = np.asarray(prompts[p]["input_ids"]).reshape(-1)
        n = len(prompt) + len(answer)
        if n > length:
            raise ValueError(f"row {b} has {n} tokens, more than the batch length {length}")
        prompt_ids[b, : len(prompt)] = prompt
        input_ids[b, : len(prompt)] = prompt
        input_ids[b, len(prompt) : n] = answer
        mask[b, len(prompt) - 1 : n - 1] = 1.0
    targets = np.concatenate([input_ids[:, 1:], np.full((rows, 1), pad_id, np.int32)], axis=1)
    # Positions and image slots come from the prompts alone: answer tokens are text to the
    # decoder, even a sampled <|image_pad|>, and text positions after the prompt count up.
    positions, _ = get_rope_index(
        prompt_ids,
        np.repeat(grid, rows, axis=0),
        image_token_id=config.image_token_id,
        spatial_merge_size=config.vision.spatial_merge_size,
    )
    image_slots = np.stack([np.flatnonzero(r == config.image_token_id) for r in prompt_ids])
    if image_of_prompt is None:
        image_of_prompt = list(range(len(prompts)))
    first_prompt = {img: p for p, img in reversed(list(enumerate(image_of_prompt)))}
    if sorted(first_prompt) != list(range(len(first_prompt))):
        raise ValueError("image_of_prompt must number the images 0, 1, ... without gaps")
    pixels = np.stack(
        [
            np.asarray(prompts[first_prompt[i]]["pixel_values"], np.float32)
            for i in range(len(first_prompt))
        ]
    )
    return Sequences(
        input_ids=input_ids,
        positions=positions,
        image_slots=image_slots.astype(np.int32),
        image_of_row=np.asarray([image_of_prompt[p] for p in prompt_of_row], np.int32),
        pixels=pixels,
        vision=grid_inputs(grid, config.vision),
        targets=targets,
        mask=mask,
    )


def embed(m: nnx.Module, seqs: Sequences):
    """Input embeddings ``[B, L, D]`` of ``seqs`` with the images in their slots, and the
    DeepStack features ``[k, B, L, D]`` (zero off the image tokens) or None."""
    x = m.language_model.embed_tokens(seqs.input_ids)
    image, deep = jax.vmap(lambda px: m.visual(px, **seqs.vision))(seqs.pixels)
    rows = jnp.arange(x.shape[0])[:, None]
    x = x.at[rows, seqs.image_slots].set(image[seqs.image_of_row].astype(x.dtype))
    deepstack = None
    if deep is not None:  # [n, k, K, D] -> [k, B, L, D], zero off the image tokens
        n_deep = min(deep.shape[1], m.config.text.num_hidden_layers)
        per_row = jnp.moveaxis(deep[seqs.image_of_row, :n_deep], 1, 0).astype(x.dtype)
        deepstack = (
            jnp.zeros((n_deep, *x.shape), x.dtype).at[:, rows, seqs.image_slots].set(per_row)
        )
    return x, deepstack


def forward(m: nnx.Module, seqs: Sequences) -> jax.Array:
    """Float32 logits ``[B, L, vocab]`` of ``seqs`` under the Qwen3VL module ``m``."""
    x, deepstack = embed(m, seqs)
    cos, sin = m.cos_sin(seqs.positions)
    h, *_ = m.language_model(x, cos, sin, deepstack)
    return m.head(h)


@dataclasses.dataclass(frozen=True)
class Windows:
    """Answers to shared prompts, laid out so each prompt's forward runs once (a pytree).

    ``prompts`` holds the ``P`` prompts alone (one row each, no answer); answer row ``b``
    answers prompt ``prompt_of_row[b]`` and is a window of ``W`` positions of its full row
    (prompt + answer, as ``pack`` lays it out), starting at the prompt's last token
    (``start[b]`` = prompt length - 1), the position that predicts the first answer token.
    A window attends to the prompt's first ``start[b]`` positions and causally to itself.
    ``targets``, ``mask`` are those of the full row at the window's positions.
    """

    prompts: Sequences  # P rows
    prompt_of_row: np.ndarray  # [B] int32
    start: np.ndarray  # [B] int32
    input_ids: np.ndarray  # [B, W] int32
    positions: np.ndarray  # [3, B, W] int32
    targets: np.ndarray  # [B, W] int32
    mask: np.ndarray  # [B, W] float32


jax.tree_util.register_dataclass(
    Windows, data_fields=[f.name for f in dataclasses.fields(Windows)], meta_fields=[]
)


def pack_windows(
    config: Qwen3VLConfig,
    prompts: list[dict],
    answers: list[list[int]],
    prompt_of_row: list[int],
    length: int,
    width: int,
    pad_id: int,
) -> Windows:
    """``pack``'s rows as ``Windows`` of ``width`` positions (``width`` >= the longest answer;
    full rows padded to ``length``)."""
    if max(len(a) for a in answers) > width:
        raise ValueError(f"an answer is longer than the window width {width}")
    full = pack(config, prompts, answers, prompt_of_row, length + width, pad_id)
    alone = pack(config, prompts, [[] for _ in prompts], list(range(len(prompts))), length, pad_id)
    start = np.asarray(
        [np.asarray(prompts[p]["input_ids"]).size - 1 for p in prompt_of_row], np.int32
    )
    cols = start[:, None] + np.arange(width)  # [B, W]
    rows = np.arange(len(answers))[:, None]
    return Windows(
        prompts=alone,
        prompt_of_row=np.asarray(prompt_of_row, np.int32),
        start=start,
        input_ids=full.input_ids[rows, cols],
        positions=full.positions[:, rows, cols],
        targets=full.targets[rows, cols],
        mask=full.mask[rows, cols],
    )


def forward_windows(m: nnx.Module, w: Windows) -> jax.Array:
    """Float32 logits ``[B, W, vocab]`` of the windows ``w``: equal to ``forward`` of the full
    rows at the windows' positions, with each prompt's decoder pass (and vision tower) run
    once for all the answers to it instead of once per answer."""
    x, deepstack = embed(m, w.prompts)
    cos, sin = m.cos_sin(w.prompts.positions)
    _, keys, values, _ = m.language_model(x, cos, sin, deepstack)  # L x [P, Hkv, T, hd]
    width, length = w.input_ids.shape[1], keys[0].shape[2]
    prompt_mask = jnp.arange(length)[None, :] < w.start[:, None]  # [B, T]: before the window
    causal = jnp.tril(jnp.ones((width, width), bool))
    mask = jnp.concatenate(
        [
            jnp.broadcast_to(prompt_mask[:, None], (len(w.start), width, length)),
            jnp.broadcast_to(causal, (len(w.start), width, width)),
        ],
        axis=-1,
    )  # [B, W, T + W]
    cos, sin = m.cos_sin(w.positions)

    text = m.language_model
    h = text.embed_tokens(w.input_ids)
    for layer, prompt_k, prompt_v in zip(text.layers, keys, values, strict=True):
        q, k, v = layer.qkv(h, cos, sin)
        k = jnp.concatenate([prompt_k[w.prompt_of_row], k], axis=2)  # [B, Hkv, T + W, hd]
        v = jnp.concatenate([prompt_v[w.prompt_of_row], v], axis=2)
        out, _ = attention(q, k, v, mask)
        h = layer.finish(h, out)
    return m.head(text.norm(h))


@functools.partial(jax.jit, static_argnums=0)
def logits(graphdef: nnx.GraphDef, state: nnx.State, seqs: Sequences) -> jax.Array:
    """Jitted ``forward`` of the model ``nnx.merge(graphdef, state)``."""
    return forward(nnx.merge(graphdef, state), seqs)
