"""The decode step's attention as one Triton kernel (Pallas), for GPUs.

XLA compiles a decode step's cache write and attention (``KVCache.write_token``, then
``model.attention.cached_attention``) into about a dozen small kernels per layer on a GPU
(two writes, scores of each cache, their concatenation, max, exponentials, sum, two
weighted sums and their addition), each costing a GPU its launch whatever it computes.
Here one kernel does it, in parts as flash decoding does: a program per batch row, KV head
and block of ``KEY_BLOCK`` slots of the main cache (blocks past its length read nothing),
and one for the chunk's own cache, which also stores the step's key and value there (in
place). Each holds the KV head's queries, scores its block and writes the block's maximum
score, sum of exponentials and weighted sum of values; a small XLA fusion combines the
blocks. Giving each block its own program keeps the GPU's memory busy: one program per
head looping over the blocks took 15 us per layer of the 2B model, as long as XLA's
kernels. With ``parts`` the kernel also writes every slot's score (``NEG_INF`` where
masked), which the telemetry reads with the maximum and the log-sum-exp.

The arithmetic is ``cached_attention``'s in float32, except that scores accumulate the
products of bfloat16 inputs in float32 (XLA rounds them to the inputs' dtype first) and
values are weighted before normalising; ``tests/model/test_attention_kernel.py`` runs it in
Pallas' interpreter against ``cached_attention`` and lowers it for CUDA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from model.attention import NEG_INF

KEY_BLOCK = 128  # cache slots per program
QUERY_ROWS = 16  # a KV head's query heads, padded to Triton's smallest dot
COMPILER_PARAMS = pltriton.CompilerParams(num_warps=4, num_stages=1)


def supported(head_dim: int, group: int, capacity: int, recent: int) -> bool:
    """Whether the kernel takes these shapes: Triton's blocks are powers of two, so the head
    size and the chunk's cache must be ones, the main cache a whole number of blocks."""

    def power_of_two(n: int) -> bool:
        return n >= 16 and n & (n - 1) == 0

    block = min(KEY_BLOCK, capacity)
    return (
        power_of_two(head_dim)
        and power_of_two(recent)
        and group <= QUERY_ROWS
        and power_of_two(block)
        and capacity % block == 0
    )


def fused_cached_attention(
    q, new, main, recent, main_length, position, *, parts, interpret=False
):  # fmt: skip
    """A decode step's attention over two caches as one kernel: ``KVCache.write_token``
    of the step's key and value into the chunk's cache, then ``cached_attention``.

    ``q [B, 1, Hq, D]``; the step's ``new = (k, v)``, ``[B, Hkv, 1, D]`` each; ``main = (k
    [B, Hkv, C, D], v [B, Hkv, D, C])`` of which slots ``< main_length`` may be attended;
    the chunk's cache ``recent = (k [B, Hkv, S, D], v [B, Hkv, D, S])``, whose slot
    ``position`` receives ``new`` and whose slots ``<= position`` may be attended. Returns
    ``out [B, 1, Hq, D]``, with ``parts`` ``probs [B, Hq, 1, C + S]`` and ``(scores, top,
    lse)`` as ``cached_attention`` does (``None, None`` without), and ``recent`` updated.
    """
    b, _, hq, d = q.shape
    hkv, capacity = main[0].shape[1], main[0].shape[2]
    size = recent[0].shape[2]
    group = hq // hkv
    block = min(KEY_BLOCK, capacity)
    blocks = capacity // block + 1  # the main cache's, then the chunk's cache
    rows = jnp.pad(q.reshape(b, hkv, group, d), ((0, 0), (0, 0), (0, QUERY_ROWS - group), (0, 0)))

    def spec(shape, index=lambda j: ()):  # a program's block of a [B, Hkv, ...] array
        return pl.BlockSpec((None, None, *shape), lambda i, h, j: (i, h, *index(j)))

    def main_block(j):  # the chunk's program reads the last main block's pointer, not its data
        return jnp.minimum(j, blocks - 2)

    new_row = spec((None, d), lambda j: (0, 0))  # [B, Hkv, 1, D] as [D]
    partial = (b, hkv, blocks, QUERY_ROWS)
    out_shapes = [
        jax.ShapeDtypeStruct((*partial, d), jnp.float32),  # weighted sums of values
        jax.ShapeDtypeStruct(partial, jnp.float32),  # maximum scores
        jax.ShapeDtypeStruct(partial, jnp.float32),  # sums of exponentials
    ]
    out_specs = [
        spec((None, QUERY_ROWS, d), lambda j: (j, 0, 0)),
        spec((None, QUERY_ROWS), lambda j: (j, 0)),
        spec((None, QUERY_ROWS), lambda j: (j, 0)),
        spec((size, d), lambda j: (0, 0)),
        spec((d, size), lambda j: (0, 0)),
    ]
    out_shapes += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in recent]
    if parts:  # every program writes its slots' columns of its head's scores
        slots = capacity + size
        out_shapes.append(jax.ShapeDtypeStruct((b, hkv, QUERY_ROWS, slots), jnp.float32))
        out_specs.append(spec((QUERY_ROWS, slots), lambda j: (0, 0)))
    sums, tops, totals, recent_k, recent_v, *scores = pl.pallas_call(
        functools.partial(_kernel, scale=d**-0.5, capacity=capacity),
        grid=(b, hkv, blocks),
        in_specs=[
            spec((QUERY_ROWS, d), lambda j: (0, 0)),
            spec((block, d), lambda j: (main_block(j), 0)),
            spec((d, block), lambda j: (0, main_block(j))),
            spec((size, d), lambda j: (0, 0)),
            spec((d, size), lambda j: (0, 0)),
            new_row,
            new_row,
            pl.BlockSpec((), lambda i, h, j: ()),
            pl.BlockSpec((), lambda i, h, j: ()),
        ],
        out_specs=out_specs,
        out_shape=out_shapes,
        input_output_aliases={3: 3, 4: 4},  # the chunk's cache, updated in place
        compiler_params=COMPILER_PARAMS,
        interpret=interpret,
        name="cached_attention",
    )(
        rows, *main, *recent, *(x.astype(recent[0].dtype) for x in new),
        *(jnp.asarray(n, jnp.int32) for n in (main_length, position)),
    )  # fmt: skip
    top = tops.max(2)  # [B, Hkv, R]
    weights = jnp.exp(tops - top[:, :, None])  # [B, Hkv, blocks, R]; empty blocks weigh 0
    total = (weights * totals).sum(2)
    out = (weights[..., None] * sums).sum(2) / total[..., None]
    out = out[:, :, :group].reshape(b, 1, hq, d).astype(q.dtype)
    recent = (recent_k, recent_v)
    if not parts:
        return out, None, None, recent
    scores = scores[0][:, :, :group].reshape(b, hq, 1, -1)
    top, lse = (x[:, :, :group].reshape(b, hq, 1) for x in (top, top + jnp.log(total)))
    return out, jnp.exp(scores - lse[..., None]), (scores, top, lse), recent


def _kernel(
    q_ref, km_ref, vm_ref, kr_ref, vr_ref, k_ref, v_ref, main_length_ref, position_ref,
    sum_ref, top_ref, total_ref, kr_out_ref, vr_out_ref, *scores_ref, scale, capacity,
):  # fmt: skip
    """Program ``(row, KV head, j)``: ``q_ref [R, D]``; main cache block ``j``, ``km_ref
    [K, D]``, ``vm_ref [D, K]`` or, for the last ``j``, the chunk's cache ``kr_ref [S, D]``,
    ``vr_ref [D, S]`` (the main cache has ``capacity`` slots), which gets the step's ``k_ref,
    v_ref [D]`` at slot ``position`` (``kr_out_ref``, ``vr_out_ref``: the same buffers).
    Writes the block's ``sum_ref [R, D]`` (values weighted by ``exp(score - top)``),
    ``top_ref [R]``, ``total_ref [R]`` (the sum of ``exp(score - top)``) and, when given,
    its columns of ``scores [R, C + S]``.
    """
    q = q_ref[...]
    rows = q.shape[0]
    block = km_ref.shape[0]
    j = pl.program_id(2)
    first = j * block

    def attend(k, vt, valid):  # k [n, D], vt [D, n], valid [n]
        scores = jnp.where(valid[None, :], _dot_transposed(q, k) * scale, NEG_INF)
        top = scores.max(1)
        weights = jnp.where(valid[None, :], jnp.exp(scores - top[:, None]), 0.0)
        sum_ref[...] = _dot_transposed(weights.astype(vt.dtype), vt)
        top_ref[...] = top
        total_ref[...] = weights.sum(1)
        return scores

    main_length = main_length_ref[()]
    in_main = j < pl.num_programs(2) - 1

    @pl.when(in_main & (first < main_length))
    def _main_block():
        scores = attend(km_ref[...], vm_ref[...], first + jnp.arange(block) < main_length)
        if scores_ref:
            scores_ref[0][:, pl.ds(pl.multiple_of(first, block), block)] = scores

    @pl.when(in_main & (first >= main_length))
    def _empty_block():
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        top_ref[...] = jnp.full((rows,), NEG_INF, jnp.float32)
        total_ref[...] = jnp.zeros((rows,), jnp.float32)
        if scores_ref:
            empty = jnp.full((rows, block), NEG_INF, jnp.float32)
            scores_ref[0][:, pl.ds(pl.multiple_of(first, block), block)] = empty

    @pl.when(~in_main)
    def _recent_block():
        size, position = kr_ref.shape[0], position_ref[()]
        k, v = k_ref[...], v_ref[...]
        slots = jnp.arange(size)
        keys = jnp.where((slots == position)[:, None], k[None, :], kr_ref[...])
        values = jnp.where((slots == position)[None, :], v[:, None], vr_ref[...])
        kr_out_ref[pl.ds(position, 1), :] = k[None, :]
        vr_out_ref[:, pl.ds(position, 1)] = v[:, None]
        scores = attend(keys, values, slots <= position)
        if scores_ref:
            scores_ref[0][:, pl.ds(capacity, size)] = scores


def _dot_transposed(a, b):
    """``a [m, k] @ b [n, k].T`` in float32."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
