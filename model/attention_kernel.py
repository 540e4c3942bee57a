"""The decode step's attention as one Triton kernel (Pallas), for GPUs.

XLA compiles what a decode step does between the projections of a layer's queries, keys and
values and its output projection (per-head RMSNorm of q and k, mRoPE, ``KVCache.write_token``,
``model.attention.cached_attention``) into about sixteen small kernels per layer on a GPU,
each costing a GPU its launch whatever it computes. Here one kernel does it, in parts as
flash decoding does: a program per batch row, KV head and block of ``KEY_BLOCK`` slots of
the main cache (blocks past its length read nothing), and one for the chunk's own cache,
which also stores the step's key and value there (in place). Each normalises and rotates
the step's queries (all ``Hq`` of them: one dot of Triton's smallest height serves a KV
head's group) and its KV head's key, scores its block and writes the block's maximum score,
sum of exponentials and weighted sum of values; a small XLA fusion combines the blocks of
each query head's own KV head. Giving each block its own program keeps the GPU's memory
busy, which one program per head looping over the blocks does not (it was no faster than
XLA's kernels). With ``parts`` the kernel also writes every slot's score (``NEG_INF``
where masked), which the telemetry reads with the maximum and the log-sum-exp.

The arithmetic is that of ``RMSNorm``, ``apply_rotary`` and ``cached_attention``, with the
same roundings to the inputs' dtype, except that scores accumulate the products of bfloat16
inputs in float32 (XLA rounds them to bfloat16 first) and values are weighted before
normalising; ``tests/model/test_attention_kernel.py`` runs it in Pallas' interpreter against
those functions and lowers it for CUDA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from model.attention import NEG_INF
from model.config import TextConfig

KEY_BLOCK = 128  # cache slots per program
DOT_MIN = 16  # Triton's smallest dot: rows of queries, half head sizes
COMPILER_PARAMS = pltriton.CompilerParams(num_warps=4, num_stages=1)


def supported(cfg: TextConfig, capacity: int, recent: int) -> bool:
    """Whether the kernel takes these shapes: Triton's blocks are powers of two and its dots
    at least ``DOT_MIN`` high and deep, so the query heads, half the head size and the
    chunk's cache must be such, the main cache a whole number of blocks.

    Args:
        capacity: slots of the main cache, ``C``.
        recent: slots of the chunk's own cache, ``S``.
    """

    def fits(n: int) -> bool:
        return n >= DOT_MIN and n & (n - 1) == 0

    block = min(KEY_BLOCK, capacity)
    return (
        fits(cfg.num_attention_heads)
        and cfg.num_attention_heads % cfg.num_key_value_heads == 0
        and fits(cfg.head_dim // 2)
        and fits(recent)
        and fits(block)
        and capacity % block == 0
    )


def decode_attention(
    q,
    k,
    v,
    scales,
    cos,
    sin,
    main,
    recent,
    main_length,
    position,
    *,
    eps,
    parts,
    interpret=False,
):
    """A decode step's attention of one layer, from the projections of its query, key and
    value to the input of the output projection, as one kernel.

    Args:
        q: ``[B, Hq, D]`` the step's query projections; ``k, v [B, Hkv, D]`` its key's and
            value's.
        scales: ``(q_scale, k_scale)``, ``[D]`` each: q and k are RMS-normalised per head
            with them and ``eps``, then rotated by ``cos, sin [B, D]`` float32 (mRoPE).
        main: ``(k [B, Hkv, C, D], v [B, Hkv, D, C])``, the main cache, of which slots
            ``< main_length`` may be attended.
        recent: ``(k [B, Hkv, S, D], v [B, Hkv, D, S])``, the chunk's cache: slot
            ``position`` receives the step's key and value, and slots ``<= position`` may be
            attended.
        parts: also return the weights and the softmax's parts.
        interpret: run in Pallas' interpreter (on any backend).
    Returns:
        ``out [B, 1, Hq, D]``; with ``parts``, ``probs [B, Hq, 1, C + S]`` and ``(scores,
        top, lse)`` as ``cached_attention`` returns them (``None, None`` without); and
        ``recent`` updated.
    """
    b, hq, d = q.shape
    hkv, capacity = main[0].shape[1], main[0].shape[2]
    size = recent[0].shape[2]
    block = min(KEY_BLOCK, capacity)
    blocks = capacity // block + 1  # the main cache's, then the chunk's cache

    def spec(shape, index=lambda h, j: ()):  # a program's block of a [B, ...] array
        return pl.BlockSpec((None, *shape), lambda i, h, j: (i, *index(h, j)))

    def per_head(shape, index=lambda j: ()):  # a program's block of a [B, Hkv, ...] array
        return spec((None, *shape), lambda h, j: (h, *index(j)))

    def main_block(j):  # the chunk's program reads the last main block's pointer, not its data
        return jnp.minimum(j, blocks - 2)

    whole = pl.BlockSpec((d,), lambda i, h, j: (0,))
    partial = (b, hkv, blocks, hq)
    out_shapes = [
        jax.ShapeDtypeStruct((*partial, d), jnp.float32),  # weighted sums of values
        jax.ShapeDtypeStruct(partial, jnp.float32),  # maximum scores
        jax.ShapeDtypeStruct(partial, jnp.float32),  # sums of exponentials
        *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in recent),
    ]
    out_specs = [
        per_head((None, hq, d), lambda j: (j, 0, 0)),
        per_head((None, hq), lambda j: (j, 0)),
        per_head((None, hq), lambda j: (j, 0)),
        per_head((size, d), lambda j: (0, 0)),
        per_head((d, size), lambda j: (0, 0)),
    ]
    if parts:  # every program writes its slots' columns of its queries' scores
        slots = capacity + size
        out_shapes.append(jax.ShapeDtypeStruct((b, hkv, hq, slots), jnp.float32))
        out_specs.append(per_head((hq, slots), lambda j: (0, 0)))
    sums, tops, totals, recent_k, recent_v, *scores = pl.pallas_call(
        functools.partial(_kernel, scale=d**-0.5, eps=eps, capacity=capacity, group=hq // hkv),
        grid=(b, hkv, blocks),
        in_specs=[
            spec((hq, d), lambda h, j: (0, 0)),
            per_head((d,), lambda j: (0,)),
            per_head((d,), lambda j: (0,)),
            whole,
            whole,
            spec((d,), lambda h, j: (0,)),
            spec((d,), lambda h, j: (0,)),
            per_head((block, d), lambda j: (main_block(j), 0)),
            per_head((d, block), lambda j: (0, main_block(j))),
            per_head((size, d), lambda j: (0, 0)),
            per_head((d, size), lambda j: (0, 0)),
            pl.BlockSpec((), lambda i, h, j: ()),
            pl.BlockSpec((), lambda i, h, j: ()),
        ],
        out_specs=out_specs,
        out_shape=out_shapes,
        input_output_aliases={9: 3, 10: 4},  # the chunk's cache, updated in place
        compiler_params=COMPILER_PARAMS,
        interpret=interpret,
        name="decode_attention",
    )(
        q,
        k.astype(q.dtype),
        v.astype(recent[1].dtype),
        *scales,
        cos,
        sin,
        *main,
        *recent,
        *(jnp.asarray(n, jnp.int32) for n in (main_length, position)),
    )
    tops, totals = _own(tops, 3), _own(totals, 3)  # [B, Hkv, blocks, G]
    top = tops.max(2)  # [B, Hkv, G]
    weights = jnp.exp(tops - top[:, :, None])  # empty blocks weigh 0
    total = (weights * totals).sum(2)
    out = (weights[..., None] * _own(sums, 3)).sum(2) / total[..., None]
    out = out.reshape(b, 1, hq, d).astype(q.dtype)
    recent = (recent_k, recent_v)
    if not parts:
        return out, None, None, recent
    scores = _own(scores[0], 2).reshape(b, hq, 1, -1)
    top, lse = (x.reshape(b, hq, 1) for x in (top, top + jnp.log(total)))
    return out, jnp.exp(scores - lse[..., None]), (scores, top, lse), recent


def _own(x: jax.Array, axis: int) -> jax.Array:
    """Of ``x [B, Hkv, ..., Hq, ...]`` computed by each KV head for all query heads (axis
    ``axis``), the rows of the head's own queries: ``[B, Hkv, ..., G, ...]``."""
    hkv = x.shape[1]
    x = x.reshape(*x.shape[:axis], hkv, -1, *x.shape[axis + 1 :])  # [..., Hkv, G, ...]
    return jnp.moveaxis(jnp.diagonal(x, axis1=1, axis2=axis), -1, 1)


def _kernel(
    q_ref,
    k_ref,
    v_ref,
    q_scale_ref,
    k_scale_ref,
    cos_ref,
    sin_ref,
    km_ref,
    vm_ref,
    kr_ref,
    vr_ref,
    main_length_ref,
    position_ref,
    sum_ref,
    top_ref,
    total_ref,
    kr_out_ref,
    vr_out_ref,
    *scores_ref,
    scale,
    eps,
    capacity,
    group,
):
    """Program ``(row, KV head, j)``: the step's projections ``q_ref [Hq, D]``, ``k_ref,
    v_ref [D]``; main cache block ``j``, ``km_ref [K, D]``, ``vm_ref [D, K]`` or, for the
    last ``j``, the chunk's cache ``kr_ref [S, D]``, ``vr_ref [D, S]``, which gets the
    step's key and value at slot ``position`` (``kr_out_ref``, ``vr_out_ref``: the same
    buffers). Writes the block's ``sum_ref [Hq, D]`` (values weighted by ``exp(score -
    top)``), ``top_ref [Hq]``, ``total_ref [Hq]`` (the sum of ``exp(score - top)``) and, when
    given, its columns of ``scores [Hq, C + S]`` for the head's own queries. Head sizes are
    handled as two halves, the two parts that rotary embedding exchanges."""
    half = q_ref.shape[1] // 2
    lo, hi = pl.ds(0, half), pl.ds(half, half)
    cos, sin = (cos_ref[lo], cos_ref[hi]), (sin_ref[lo], sin_ref[hi])

    def normed_rotated(x_lo, x_hi, scale_ref):  # [n, D/2] halves -> the same, rotated
        dtype = x_lo.dtype
        x_lo, x_hi = x_lo.astype(jnp.float32), x_hi.astype(jnp.float32)
        squares = (x_lo * x_lo).sum(1) + (x_hi * x_hi).sum(1)
        inverse = jax.lax.rsqrt(squares / (2 * half) + eps)[:, None]

        def normed(x, weight):  # RMSNorm: scale times the normalised value, in x's dtype
            x = (x * inverse).astype(dtype).astype(jnp.float32)
            return (weight.astype(jnp.float32)[None, :] * x).astype(dtype).astype(jnp.float32)

        x_lo, x_hi = normed(x_lo, scale_ref[lo]), normed(x_hi, scale_ref[hi])
        rotated_lo = x_lo * cos[0][None, :] - x_hi * sin[0][None, :]  # apply_rotary
        rotated_hi = x_hi * cos[1][None, :] + x_lo * sin[1][None, :]
        return rotated_lo.astype(dtype), rotated_hi.astype(dtype)

    q = normed_rotated(q_ref[:, lo], q_ref[:, hi], q_scale_ref)
    mine = jnp.arange(q_ref.shape[0]) // group == pl.program_id(1)  # [Hq]: this head's queries
    block, j = km_ref.shape[0], pl.program_id(2)
    first = j * block

    def attend(keys, vt, valid):  # keys: halves [n, D/2]; vt [D, n]; valid [n]
        products = _dot_transposed(q[0], keys[0]) + _dot_transposed(q[1], keys[1])
        scores = jnp.where(valid[None, :], products * scale, NEG_INF)
        top = scores.max(1)
        weights = jnp.where(valid[None, :], jnp.exp(scores - top[:, None]), 0.0)
        sum_ref[...] = _dot_transposed(weights.astype(vt.dtype), vt)
        top_ref[...] = top
        total_ref[...] = weights.sum(1)
        return scores

    def store_scores(columns, scores):  # only the head's own queries' rows
        if scores_ref:
            rows = jnp.broadcast_to(mine[:, None], scores.shape)
            pltriton.store(scores_ref[0].at[:, columns], scores, mask=rows)

    main_length = main_length_ref[()]
    in_main = j < pl.num_programs(2) - 1

    @pl.when(in_main & (first < main_length))
    def _main_block():
        keys = km_ref[:, lo], km_ref[:, hi]
        scores = attend(keys, vm_ref[...], first + jnp.arange(block) < main_length)
        store_scores(pl.ds(pl.multiple_of(first, block), block), scores)

    @pl.when(in_main & (first >= main_length))
    def _empty_block():
        rows = q_ref.shape[0]
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        top_ref[...] = jnp.full((rows,), NEG_INF, jnp.float32)
        total_ref[...] = jnp.zeros((rows,), jnp.float32)
        empty = jnp.full((rows, block), NEG_INF, jnp.float32)
        store_scores(pl.ds(pl.multiple_of(first, block), block), empty)

    @pl.when(~in_main)
    def _recent_block():
        size, position = kr_ref.shape[0], position_ref[()]
        k = normed_rotated(k_ref[lo][None, :], k_ref[hi][None, :], k_scale_ref)  # [1, D/2] x 2
        v = v_ref[...]
        slots = jnp.arange(size)
        here = (slots == position)[:, None]
        keys = (jnp.where(here, k[0], kr_ref[:, lo]), jnp.where(here, k[1], kr_ref[:, hi]))
        values = jnp.where(here.T, v[:, None], vr_ref[...])
        kr_out_ref[pl.ds(position, 1), lo] = k[0]
        kr_out_ref[pl.ds(position, 1), hi] = k[1]
        vr_out_ref[:, pl.ds(position, 1)] = v[:, None]
        scores = attend(keys, values, slots <= position)
        store_scores(pl.ds(capacity, size), scores)


def _dot_transposed(a, b):
    """``a [m, k] @ b [n, k].T`` in float32."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
