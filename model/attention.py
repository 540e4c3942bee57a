"""Scaled dot-product attention that also returns its weights, causal attention over a
long sequence in blocks of queries, and the telemetry reductions of those weights (computed
on the device, so only small summaries leave it).

Grouped-query attention: query head ``h`` reads KV head ``h // (Hq / Hkv)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = jnp.finfo(jnp.float32).min
QUERY_BLOCK = 64  # most queries per block of causal_attention (its scores stay in cache)
CAUSAL_SEGMENTS = 4  # causal_attention's segments, each reading only the keys it needs
ARGMAX_BLOCK = 128  # keys per block of head_stats' two-level argmax
LONG_ROW = 2048  # keys from which head_stats takes a dot and a two-level argmax (faster)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Softmax attention: scores in the inputs' dtype, the softmax in float32, as
    transformers does.

    Args:
        q: ``[B, Tq, Hq, D]``.
        k, v: ``[B, Hkv, Tk, D]`` (heads-major, the KV cache's layout).
        mask: ``[B, Tq, Tk]`` bool, True where a query may attend.
    Returns:
        ``out [B, Tq, Hq, D]`` in ``q``'s dtype and ``probs [B, Hq, Tq, Tk]`` float32.
    """
    b, tq, hq, d = q.shape
    hkv = k.shape[1]
    q = jnp.moveaxis(q.reshape(b, tq, hkv, hq // hkv, d), 1, 3)  # [B, Hkv, G, Tq, D]
    scores = jnp.einsum("bkgqd,bksd->bkgqs", q, k) * jnp.asarray(d**-0.5, q.dtype)
    scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)  # [B, Hkv, G, Tq, Tk]
    out = jnp.einsum("bkgqs,bksd->bkgqd", probs.astype(v.dtype), v)
    return jnp.moveaxis(out, 3, 1).reshape(b, tq, hq, d), probs.reshape(b, hq, tq, -1)


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, observe=None, observed=None
) -> tuple[jax.Array, object]:
    """Causal ``attention``, computed for equal blocks of at most ``QUERY_BLOCK`` queries in
    turn, so that memory grows as ``T x block``, not ``T x T``.

    The blocks form ``CAUSAL_SEGMENTS`` segments of consecutive blocks; a segment reads the
    keys up to its last query only (later keys are masked for all of its queries), which
    skips most of the masked half of the work. Each block sees all the keys its queries may
    attend, so every row's softmax is exact.

    Args:
        q: ``[B, T, Hq, D]``.
        k, v: ``[B, Hkv, T, D]``.
        observe: ``observe(observed, start, probs [B, Hq, Tb, Tw]) -> observed`` folds in
            the weights of queries ``start .. start + Tb - 1`` (rows past ``T`` are padding)
            over keys ``0 .. Tw - 1`` (``Tw <= T``; the weights of later keys are 0) while
            they exist, block by block; or ``None``.
        observed: the fold's initial value.
    Returns:
        ``out [B, T, Hq, D]`` and the final ``observed``.
    """
    b, t, hq, d = q.shape
    n = -(-t // QUERY_BLOCK)
    tb = -(-t // n)
    blocks = jnp.pad(q, ((0, 0), (0, n * tb - t), (0, 0), (0, 0))).reshape(b, n, tb, hq, d)
    blocks = jnp.moveaxis(blocks, 1, 0)  # [n, B, Tb, Hq, D]

    def segment(observed, first: int, stop: int):  # blocks first .. stop - 1
        tw = min(stop * tb, t)
        keys = jnp.arange(tw)

        def block(obs, xs):
            start, qb = xs
            mask = keys <= (start + jnp.arange(tb))[:, None]  # [Tb, Tw]
            out, probs = attention(qb, k[:, :, :tw], v[:, :, :tw], mask[None])
            return (obs if observe is None else observe(obs, start, probs)), out

        return jax.lax.scan(block, observed, (jnp.arange(first, stop) * tb, blocks[first:stop]))

    segments = min(n, CAUSAL_SEGMENTS)
    outs = []
    for i in range(segments):
        observed, out = segment(observed, i * n // segments, (i + 1) * n // segments)
        outs.append(out)
    out = jnp.moveaxis(jnp.concatenate(outs), 0, 1)
    return out.reshape(b, n * tb, hq, d)[:, :t], observed


def cached_attention(
    q: jax.Array, caches: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """Softmax attention of one new query per row over several KV caches at once: one
    softmax over the slots of all caches, in order, with the arithmetic of ``attention``.

    Args:
        q: ``[B, 1, Hq, D]``.
        caches: each ``(k [B, Hkv, S, D], v [B, Hkv, D, S], mask [S])``: keys, values
            transposed (``model.kv_cache``) and which of its ``S`` slots may be attended.
    Returns:
        ``out [B, 1, Hq, D]``, ``probs [B, Hq, 1, sum(S)]`` float32 and the softmax's parts
        ``(scores, top, lse)``: the scores it took (shaped as ``probs``, masked slots
        ``NEG_INF``), their maximum and log-sum-exp ``[B, Hq, 1]`` each
        (``probs = exp(scores - lse)``).
    """
    b, tq, hq, d = q.shape
    hkv = caches[0][0].shape[1]
    q = q.reshape(b, tq, hkv, hq // hkv, d)
    scale = jnp.asarray(d**-0.5, q.dtype)

    def scores(k, mask):
        s = jnp.einsum("bqkgd,bksd->bkgqs", q, k) * scale
        return jnp.where(mask, s.astype(jnp.float32), NEG_INF)

    logits = jnp.concatenate([scores(k, m) for k, _, m in caches], -1)  # [B, Hkv, G, 1, S]
    top = logits.max(-1, keepdims=True)
    unnormalized = jnp.exp(logits - top)
    total = unnormalized.sum(-1, keepdims=True)
    probs = unnormalized / total  # jax.nn.softmax, with its parts kept
    lse = top + jnp.log(total)
    out, start = 0, 0
    for k, v, _ in caches:
        size = k.shape[2]
        p = probs[..., start : start + size].astype(v.dtype)
        out = out + jnp.einsum("bkgqs,bkds->bqkgd", p, v)
        start += size
    rows = (b, hq, tq, -1)
    parts = (logits.reshape(rows), top.reshape(rows[:3]), lse.reshape(rows[:3]))
    return out.reshape(b, tq, hq, d), probs.reshape(rows), parts


def head_stats(rows: jax.Array, vision: jax.Array) -> dict[str, jax.Array]:
    """Summaries of attention rows, each summing to 1.

    Args:
        rows: ``[..., Tk]``, e.g. ``[L, H, Tk]``.
        vision: ``[Tk]`` bool, True at image-token positions.
    Returns:
        ``[...]`` arrays by name: ``max_weight``, ``entropy`` (nats, ``0 log 0 = 0``),
        ``vision_mass``, ``sink_mass`` (weight on position 0) and ``argmax`` (int32, the
        first position of the largest weight).
    """
    logs = jnp.log(jnp.maximum(rows, jnp.finfo(rows.dtype).tiny))  # 0 log 0 = 0 * finite
    top, first = _first_max(rows)
    if rows.shape[-1] < LONG_ROW:  # a sum that fuses with the others (a dot costs a call)
        vision_mass = jnp.where(vision, rows, 0.0).sum(-1)
    else:  # a dot streams long rows faster
        vision_mass = rows @ vision.astype(rows.dtype)
    return {
        "max_weight": top,
        "entropy": -(rows * logs).sum(-1),
        "vision_mass": vision_mass,
        "sink_mass": rows[..., 0],
        "argmax": first,
    }


def softmax_stats(rows: jax.Array, parts, vision: jax.Array) -> dict[str, jax.Array]:
    """``head_stats`` of rows that ``cached_attention`` returned, from its softmax's parts,
    in fewer passes over the keys: the largest weight is ``exp(top - lse)``, the first key
    scoring ``top`` holds it, and the entropy needs no logarithm per key,
    ``-sum p log p = lse - sum p * scores``.

    Args:
        rows: ``[..., Tk]`` attention weights.
        parts: ``(scores [..., Tk], top [...], lse [...])``.
        vision: ``[Tk]`` bool, True at image-token positions.
    Returns:
        ``head_stats``' ``[...]`` arrays.
    """
    scores, top, lse = parts
    t = rows.shape[-1]
    first = jnp.where(scores == top[..., None], jnp.arange(t, dtype=jnp.float32), t).min(-1)
    scored = jnp.matmul(rows[..., None, :], scores[..., None])[..., 0, 0]  # sum p * scores
    return {
        "max_weight": jnp.exp(top - lse),
        "entropy": lse - scored,  # masked keys: weight 0, score finite
        "vision_mass": rows @ vision.astype(rows.dtype),
        "sink_mass": rows[..., 0],
        "argmax": first.astype(jnp.int32),
    }


def _first_max(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The maximum of ``rows [..., T]`` (weights >= 0) and the first index where it occurs,
    ``[...]`` each, found in two levels: the first block of ``ARGMAX_BLOCK`` keys holding the
    maximum, then the first index inside it, which reads long rows in fewer passes than one
    compare-and-min over all keys (or XLA's argmax on a CPU). Rows shorter than ``LONG_ROW``
    take one compare-and-min."""
    t, block = rows.shape[-1], ARGMAX_BLOCK
    if t < LONG_ROW:  # one compare-and-min
        top = rows.max(-1)
        first = jnp.where(rows == top[..., None], jnp.arange(t), t).min(-1)
        return top, first.astype(jnp.int32)
    padded = jnp.pad(rows, [(0, 0)] * (rows.ndim - 1) + [(0, -t % block)], constant_values=-1)
    blocks = padded.reshape(*rows.shape[:-1], -1, block)  # [..., nb, block]
    block_max = blocks.max(-1)
    top = block_max.max(-1)
    nb = block_max.shape[-1]
    first_block = jnp.where(block_max == top[..., None], jnp.arange(nb), nb).min(-1)
    inside = jnp.take_along_axis(blocks, first_block[..., None, None], axis=-2)[..., 0, :]
    offset = jnp.where(inside == top[..., None], jnp.arange(block), block).min(-1)
    return top, (first_block * block + offset).astype(jnp.int32)


def pool_max(rows: jax.Array, start, length, size: int) -> jax.Array:
    """Block-max pool one block of rows of an attention map to ``[size, size]``; the map's
    top-left ``[length, length]`` counts.

    Index ``i < length`` falls in bin ``i * r // length`` with ``r = min(length, size)``, so
    bins cover the map evenly; the maximum keeps a single strong weight visible. The maximum
    of the results over all blocks of rows is the pooled map; only its top-left ``[r, r]``
    is meaningful (the rest is 0).

    Args:
        rows: ``[Tb, T]`` the map's rows ``start .. start + Tb - 1``.
        length: the map's real size; rows and columns from ``length`` on are left out.
    Returns:
        ``[size, size]``, this block's share of the pooled map.
    """
    tb, t = rows.shape
    r = jnp.minimum(length, size)

    def bins(idx):  # size = dropped
        return jnp.where(idx < length, idx * r // jnp.maximum(length, 1), size)

    by_row = jax.ops.segment_max(rows, bins(start + jnp.arange(tb)), num_segments=size)
    pooled = jax.ops.segment_max(by_row.T, bins(jnp.arange(t)), num_segments=size).T
    return jnp.maximum(pooled, 0.0)
