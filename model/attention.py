"""Scaled dot-product attention that also returns its weights, and the telemetry reductions
of those weights (computed on the device, so only small summaries leave it).

Grouped-query attention: query head ``h`` reads KV head ``h // (Hq / Hkv)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = jnp.finfo(jnp.float32).min


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Softmax attention.

    ``q [B, Tq, Hq, D]``, ``k, v [B, Hkv, Tk, D]`` (heads-major, the KV cache's layout),
    ``mask [B, Tq, Tk]`` (True = may attend).
    Returns ``out [B, Tq, Hq, D]`` (dtype of ``q``) and ``probs [B, Hq, Tq, Tk]`` float32.
    Scores are taken in the inputs' dtype and the softmax in float32, as transformers does.
    """
    b, tq, hq, d = q.shape
    hkv = k.shape[1]
    q = q.reshape(b, tq, hkv, hq // hkv, d)
    scores = jnp.einsum("bqkgd,bksd->bkgqs", q, k) * jnp.asarray(d**-0.5, q.dtype)
    scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgqs,bksd->bqkgd", probs.astype(v.dtype), v)
    return out.reshape(b, tq, hq, d), probs.reshape(b, hq, tq, -1)


def cached_attention(
    q: jax.Array, caches: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]
) -> tuple[jax.Array, jax.Array]:
    """Softmax attention of one new query per row over several KV caches at once.

    ``q [B, 1, Hq, D]``; each cache is ``(k [B, Hkv, S, D], v [B, Hkv, D, S], mask [S])``:
    keys, values transposed (``model.kv_cache``) and which of its ``S`` slots may be attended.
    Returns ``out [B, 1, Hq, D]`` and ``probs [B, Hq, 1, sum(S)]`` float32: one softmax over
    the slots of all caches, in order. The arithmetic of ``attention``.
    """
    b, tq, hq, d = q.shape
    hkv = caches[0][0].shape[1]
    q = q.reshape(b, tq, hkv, hq // hkv, d)
    scale = jnp.asarray(d**-0.5, q.dtype)

    def scores(k, mask):
        s = jnp.einsum("bqkgd,bksd->bkgqs", q, k) * scale
        return jnp.where(mask, s.astype(jnp.float32), NEG_INF)

    probs = jax.nn.softmax(jnp.concatenate([scores(k, m) for k, _, m in caches], -1), axis=-1)
    out, start = 0, 0
    for k, v, _ in caches:
        size = k.shape[2]
        p = probs[..., start : start + size].astype(v.dtype)
        out = out + jnp.einsum("bkgqs,bkds->bqkgd", p, v)
        start += size
    return out.reshape(b, tq, hq, d), probs.reshape(b, hq, tq, -1)


def head_stats(rows: jax.Array, vision: jax.Array) -> dict[str, jax.Array]:
    """Summaries of attention rows ``rows [..., Tk]`` (each sums to 1), e.g. ``[L, H, Tk]``.

    ``vision [Tk]`` bool marks image-token positions. Returns ``[...]`` arrays:
    ``max_weight``, ``entropy`` (nats, ``0 log 0 = 0``), ``vision_mass``, ``sink_mass``
    (weight on position 0) and ``argmax`` (int32).
    """
    logs = jnp.log(jnp.where(rows > 0, rows, 1.0))
    top = rows.max(-1, keepdims=True)
    # first index of the maximum: two plain reductions (a fused argmax is slow on CPU)
    first = jnp.where(rows == top, jnp.arange(rows.shape[-1]), rows.shape[-1]).min(-1)
    return {
        "max_weight": top[..., 0],
        "entropy": -(rows * logs).sum(-1),
        "vision_mass": jnp.where(vision, rows, 0.0).sum(-1),
        "sink_mass": rows[..., 0],
        "argmax": first.astype(jnp.int32),
    }


def pool_max(grid: jax.Array, length: jax.Array, size: int) -> jax.Array:
    """Block-max pool the top-left ``[length, length]`` of ``grid [T, T]`` to ``[size, size]``.

    Index ``i < length`` falls in bin ``i * r // length`` with ``r = min(length, size)``, so
    bins cover the map evenly; the maximum keeps a single strong weight visible. Only the
    top-left ``[r, r]`` of the result is meaningful (the rest is 0).
    """
    n = grid.shape[0]
    r = jnp.minimum(length, size)
    idx = jnp.arange(n)
    bins = jnp.where(idx < length, idx * r // jnp.maximum(length, 1), size)  # size = dropped
    rows = jax.ops.segment_max(grid, bins, num_segments=size)  # [size, T]
    pooled = jax.ops.segment_max(rows.T, bins, num_segments=size).T  # [size, size]
    return jnp.maximum(pooled, 0.0)
