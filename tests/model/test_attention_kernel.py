"""The decode step's attention kernel, run in Pallas' interpreter, equals writing the step's
key and value into the chunk's cache and ``cached_attention`` over both caches; it lowers for
CUDA to one Triton kernel (no GPU needed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import NEG_INF, cached_attention
from model.attention_kernel import fused_cached_attention, supported
from model.kv_cache import KVCache


def _inputs(capacity, size, dtype, heads=4, kv_heads=2, head_dim=16, batch=2):
    """``q [B, 1, Hq, D]``, main ``(k [B, Hkv, C, D], v [B, Hkv, D, C])``, the chunk's
    cache ``(k [B, Hkv, S, D], v [B, Hkv, D, S])`` and the step's ``(k, v)`` ``[B, Hkv, 1,
    D]`` each, normal random."""
    keys = iter(jax.random.split(jax.random.key(0), 7))

    def normal(*shape):
        return jax.random.normal(next(keys), shape, dtype)

    q = normal(batch, 1, heads, head_dim)
    main = normal(batch, kv_heads, capacity, head_dim), normal(batch, kv_heads, head_dim, capacity)
    recent = normal(batch, kv_heads, size, head_dim), normal(batch, kv_heads, head_dim, size)
    new = normal(batch, kv_heads, 1, head_dim), normal(batch, kv_heads, 1, head_dim)
    return q, main, recent, new


@functools.partial(jax.jit, static_argnames="parts")
def _kernel(q, new, main, recent, main_length, position, parts):
    return fused_cached_attention(q, new, main, recent, main_length, position, parts=parts,
                                  interpret=True)  # fmt: skip


@jax.jit
def _reference(q, new, main, recent, main_length, position):
    """``KVCache.write_token`` into ``recent``, then ``cached_attention``."""
    size = recent[0].shape[2]
    cache = KVCache(k=(recent[0],), v=(recent[1],), vision=jnp.zeros((1, size), bool),
                    length=position).write_token(0, *new)  # fmt: skip
    masks = jnp.arange(main[0].shape[2]) < main_length, jnp.arange(size) <= position
    caches = ((*main, masks[0]), (cache.k[0], cache.v[0], masks[1]))
    return *cached_attention(q, caches), (cache.k[0], cache.v[0])


@pytest.mark.parametrize(
    ("capacity", "main_length", "position"),
    [(256, 150, 5), (256, 0, 0), (256, 256, 15), (256, 128, 9), (64, 37, 3)],
)
def test_kernel_equals_cache_write_and_cached_attention(capacity, main_length, position):
    """Main-cache blocks partly, wholly and not at all valid; an empty main cache; the
    chunk's first and last slots."""
    q, main, recent, new = _inputs(capacity, 16, jnp.float32)
    out, probs, (scores, top, lse), written = _reference(q, new, main, recent, main_length,
                                                         position)  # fmt: skip
    got_out, got_probs, (got_scores, got_top, got_lse), got_written = _kernel(
        q, new, main, recent, main_length, position, parts=True
    )
    np.testing.assert_allclose(got_out, out, atol=1e-5)
    np.testing.assert_allclose(got_probs, probs, atol=1e-6)
    valid = np.asarray(scores) > NEG_INF
    np.testing.assert_array_equal(np.asarray(got_scores) > NEG_INF, valid)
    np.testing.assert_allclose(
        np.where(valid, got_scores, 0), np.where(valid, scores, 0), atol=1e-5
    )
    np.testing.assert_allclose(got_top, top, atol=1e-5)
    np.testing.assert_allclose(got_lse, lse, atol=1e-5)
    for got, expected in zip(got_written, written, strict=True):
        np.testing.assert_array_equal(got, expected)
    alone, no_probs, no_parts, alone_written = _kernel(
        q, new, main, recent, main_length, position, parts=False
    )
    np.testing.assert_array_equal(alone, got_out)
    assert no_probs is None and no_parts is None
    for got, expected in zip(alone_written, written, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_bfloat16_matches_within_its_rounding():
    q, main, recent, new = _inputs(128, 32, jnp.bfloat16, head_dim=32)
    out, probs, _, _ = _reference(q, new, main, recent, 100, 19)
    got_out, got_probs, _, _ = _kernel(q, new, main, recent, 100, 19, parts=True)
    assert got_out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got_out), np.float32(out), atol=2e-2)
    np.testing.assert_allclose(got_probs, probs, atol=2e-3)


@pytest.mark.parametrize("parts", [True, False])
def test_lowers_for_cuda_to_a_triton_kernel(parts):
    q, main, recent, new = _inputs(256, 32, jnp.bfloat16, 16, 8, 128, batch=1)

    def attend(q, new, main, recent):
        return fused_cached_attention(q, new, main, recent, 200, 7, parts=parts)

    lowered = jax.jit(attend).trace(q, new, main, recent).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1


def test_supported_shapes():
    assert supported(head_dim=128, group=2, capacity=768, recent=32)
    assert supported(head_dim=16, group=16, capacity=64, recent=16)
    assert not supported(head_dim=8, group=2, capacity=768, recent=32)  # below a Triton dot
    assert not supported(head_dim=96, group=2, capacity=768, recent=32)  # not a power of two
    assert not supported(head_dim=128, group=2, capacity=700, recent=32)  # partial block
    assert not supported(head_dim=128, group=2, capacity=768, recent=24)
    assert not supported(head_dim=128, group=32, capacity=768, recent=32)
