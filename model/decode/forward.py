"""The forward passes of generation, inside the compiled programs: the prefill over the
whole prompt and one decode step over the KV cache, each observing the watched row's
attention for the telemetry (``model.decode.summaries``).

A decode step writes its keys and values to a small cache of the chunk's own (``recent``)
and attends over both caches at once (the main one up to the chunk's start, ``recent`` up
to itself); the main cache is only read inside the chunk and receives the chunk's tokens at
its end (``KVCache.append``): updating in place a buffer that the same loop iteration reads
makes XLA copy it at every step. The layers run as an unrolled loop over the decoder's
per-layer weights, the same arrays as the prefill's (``model.text.TextModel``). On a GPU
each layer's q/k norms, rotary, cache write and attention run as one Triton kernel
(``model.attention_kernel``) where the shapes allow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model import attention_kernel, sharding
from model.attention import cached_attention, pool_max
from model.decode.summaries import Observations
from model.kv_cache import KVCache
from model.qwen3_vl import Qwen3VL

MAP_SIZE = 128  # prefill attention map resolution (at most MAP_SIZE x MAP_SIZE)
CHUNK = 32  # most decode steps per compiled call: the chunk's own cache has this many slots


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillObservations:
    """The prefill's view of the watched row: ``rows [L, D, H, Tp]``, the attention of its
    last real query, and ``map [D, MAP_SIZE, MAP_SIZE]``, the selected head's ``T x T`` map
    block-max pooled (``pool_max``); ``D`` candidates, one per ``data`` shard
    (``model.sharding.watched``)."""

    rows: jax.Array
    map: jax.Array


def _prefill_observer(num_layers: int, num_heads: int, selection, length, tk: int):
    """``(observe, initial)`` for ``TextModel``'s forward of a prompt padded to ``tk``
    tokens whose first ``length`` are real, folding ``PrefillObservations`` of batch row
    ``sample`` (``selection = (sample, layer, head)``) block of queries by block."""
    sample, layer, head = selection
    query = length - 1
    shards = sharding.data_shards()

    def observe(obs: PrefillObservations, index, start, probs):  # [B, H, Tb, Tw]
        offset = query - start  # the block holds queries start + [0, Tb)
        inside = (offset >= 0) & (offset < probs.shape[2])
        watched = sharding.watched(probs, sample)  # [D, H, Tb, Tw]
        row = jax.lax.dynamic_index_in_dim(watched, offset, axis=2, keepdims=False)
        row = jnp.pad(row, ((0, 0), (0, 0), (0, tk - row.shape[2])))  # keys past Tw weigh 0
        rows = obs.rows.at[index].set(jnp.where(inside, row, obs.rows[index]))

        def pool():
            pooled = jax.vmap(lambda p: pool_max(p, start, length, MAP_SIZE))
            return jnp.maximum(obs.map, pooled(sharding.select(watched, head, axis=1)))

        return PrefillObservations(rows, jax.lax.cond(index == layer, pool, lambda: obs.map))

    initial = PrefillObservations(
        rows=jnp.zeros((num_layers, shards, num_heads, tk), jnp.float32),
        map=jnp.zeros((shards, MAP_SIZE, MAP_SIZE), jnp.float32),
    )
    return observe, initial


def prefill_forward(m: Qwen3VL, embeds, deepstack, positions, length, selection=None):
    """Full forward of the padded prompt ``embeds [B, Tp, D]`` whose first ``length``
    tokens are real.

    Args:
        deepstack: ``[k, B, Tp, D]`` DeepStack features, or ``None``.
        positions: ``[3, B, Tp]`` mRoPE positions.
        selection: ``(sample, layer, head)`` to observe, or ``None`` for no telemetry.
    Returns:
        logits ``[B, V]`` of position ``length - 1``, ``k, v L x [B, Hkv, Tp, hd]`` and the
        ``PrefillObservations`` (``None`` without a selection).
    """
    t = m.config.text
    observe, initial = None, None
    if selection is not None:
        observe, initial = _prefill_observer(
            t.num_hidden_layers, t.num_attention_heads, selection, length, embeds.shape[1]
        )
    cos, sin = m.cos_sin(positions)
    h, k, v, obs = m.language_model(embeds, cos, sin, deepstack, observe, initial)
    last = jax.lax.dynamic_index_in_dim(h, length - 1, axis=1, keepdims=False)
    return m.head(last), k, v, obs


def step_forward(m: Qwen3VL, cache: KVCache, recent: KVCache, tokens, deltas, sample=None):
    """One decode step: ``tokens [B]`` (each row's newest token) enter at position
    ``cache.length + recent.length``.

    Args:
        cache: the tokens before the chunk, only read.
        recent: the chunk's own cache; this step's keys and values are written to it.
        deltas: ``[B]`` each row's mRoPE offset (``Prompt.deltas``).
        sample: the batch row to observe, or ``None`` for no telemetry.
    Returns:
        logits ``[B, V]``, the updated ``recent`` and the row's ``Observations`` ``[L, D,
        ...]`` (``D`` candidates, ``model.sharding.watched``) over ``C + S`` key slots:
        ``cache``'s (0 from its length on), then ``recent``'s, which hold positions
        ``cache.length, cache.length + 1, ...`` (``None`` without a sample).
    """
    pos = cache.length + recent.length
    x = m.language_model.embed_tokens(tokens)[:, None]  # [B, 1, D]
    cos, sin = m.cos_sin(jnp.broadcast_to((pos + deltas)[None, :, None], (3, len(deltas), 1)))
    attend = _step_attention(m.config.text, cache, cos, sin, sample is not None)
    observed = []
    for index, layer in enumerate(m.language_model.layers):
        out, probs, parts, recent = attend(layer, x, index, recent)
        if sample is not None:  # [D, H, ...]: each data shard's candidate row
            scores, top, lse = (sharding.watched(part, sample)[:, :, 0] for part in parts)
            observed.append(
                Observations(sharding.watched(probs, sample)[:, :, 0], scores, top, lse)
            )
        x = layer.finish(x, out)
    recent = dataclasses.replace(recent, length=recent.length + 1)
    obs = Observations.stack(observed) if sample is not None else None
    return m.head(m.language_model.norm(x[:, 0])), recent, obs


def runs_attention_kernel(cfg, capacity: int) -> bool:
    """Whether a decode step with a ``capacity``-slot cache runs ``model.attention_kernel``:
    on one GPU, where its shapes allow (the chunk's own cache has ``min(CHUNK, capacity)``).
    On a mesh of several devices XLA's operations run instead: the partitioner cannot split
    the kernel's call by batch rows and heads."""
    recent = min(CHUNK, capacity)
    return (
        jax.default_backend() == "gpu"
        and sharding.data_shards() * sharding.model_shards() == 1
        and attention_kernel.supported(cfg, capacity, recent)
    )


def _step_attention(cfg, cache: KVCache, cos, sin, with_parts: bool):
    """``attend(layer, x, index, recent) -> (out, probs, parts, recent)``: decoder ``layer``
    (number ``index``) of a decode step from its input ``x [B, 1, D]`` to the input of its
    output projection: ``layer.qkv`` (rotated by ``cos, sin [B, 1, hd]``), the step's key
    and value written to ``recent``, and the attention of its queries over ``cache``'s slots
    before the chunk and ``recent``'s up to the step's own (``cached_attention``'s results;
    ``probs`` and ``parts`` may be ``None`` without ``with_parts``)."""
    start = cache.length
    if runs_attention_kernel(cfg, cache.capacity):

        def attend_in_kernel(layer, x, index, recent):
            attn = layer.self_attn
            q, k, v = (p[:, 0] for p in attn.projections(layer.input_layernorm(x)))
            norms = (attn.q_norm.weight[...], attn.k_norm.weight[...])
            out, probs, parts, (k_slots, v_slots) = attention_kernel.decode_attention(
                q,
                k,
                v,
                norms,
                cos[:, 0],
                sin[:, 0],
                (cache.k[index], cache.v[index]),
                (recent.k[index], recent.v[index]),
                start,
                recent.length,
                eps=attn.q_norm.eps,
                parts=with_parts,
            )
            return out, probs, parts, recent.with_layer(index, k_slots, v_slots)

        return attend_in_kernel
    before = jnp.arange(cache.capacity) < start  # [C]

    def attend(layer, x, index, recent):
        q, k, v = layer.qkv(x, cos, sin)
        recent = recent.write_token(index, k, v)
        so_far = jnp.arange(recent.capacity) <= recent.length  # [S]
        main = (cache.k[index], cache.v[index], before)
        own = (recent.k[index], recent.v[index], so_far)
        out, probs, parts = cached_attention(q, (main, own))
        return out, probs, parts, recent

    return attend
