"""The decode step's attention kernel, run in Pallas' interpreter, equals ``cached_attention``
over the same two caches; it lowers for CUDA to a Triton kernel (no GPU needed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import NEG_INF, cached_attention
from model.attention_kernel import fused_cached_attention, supported


def _inputs(capacity, size, dtype, heads=4, kv_heads=2, head_dim=16, batch=2):
    """``q [B, 1, Hq, D]``, main ``(k [B, Hkv, C, D], v [B, Hkv, D, C])`` and the chunk's
    cache ``(k [B, Hkv, S, D], v [B, Hkv, D, S])``, normal random."""
    keys = iter(jax.random.split(jax.random.key(0), 5))

    def normal(*shape):
        return jax.random.normal(next(keys), shape, dtype)

    q = normal(batch, 1, heads, head_dim)
    main = normal(batch, kv_heads, capacity, head_dim), normal(batch, kv_heads, head_dim, capacity)
    recent = normal(batch, kv_heads, size, head_dim), normal(batch, kv_heads, head_dim, size)
    return q, main, recent


@functools.partial(jax.jit, static_argnames="parts")
def _kernel(q, main, recent, main_length, recent_length, parts):
    return fused_cached_attention(q, main, recent, main_length, recent_length, parts=parts,
                                  interpret=True)  # fmt: skip


@pytest.mark.parametrize(
    ("capacity", "main_length", "recent_length"),
    [(256, 150, 5), (256, 0, 1), (256, 256, 16), (256, 128, 9), (64, 37, 3)],
)
def test_kernel_equals_cached_attention(capacity, main_length, recent_length):
    """Main-cache blocks partly, wholly and not at all valid; an empty main cache."""
    size = 16
    q, main, recent = _inputs(capacity, size, jnp.float32)
    masks = (jnp.arange(capacity) < main_length, jnp.arange(size) < recent_length)
    out, probs, (scores, top, lse) = cached_attention(q, ((*main, masks[0]), (*recent, masks[1])))
    got_out, got_probs, (got_scores, got_top, got_lse) = _kernel(
        q, main, recent, main_length, recent_length, parts=True
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
    alone, no_probs, no_parts = _kernel(q, main, recent, main_length, recent_length, parts=False)
    np.testing.assert_array_equal(alone, got_out)
    assert no_probs is None and no_parts is None


def test_bfloat16_matches_within_its_rounding():
    q, main, recent = _inputs(128, 32, jnp.bfloat16, head_dim=32)
    masks = (jnp.arange(128) < 100, jnp.arange(32) < 20)
    out, probs, _ = cached_attention(q, ((*main, masks[0]), (*recent, masks[1])))
    got_out, got_probs, _ = _kernel(q, main, recent, 100, 20, parts=True)
    assert got_out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got_out), np.float32(out), atol=2e-2)
    np.testing.assert_allclose(got_probs, probs, atol=2e-3)


@pytest.mark.parametrize("parts", [True, False])
def test_lowers_for_cuda_to_a_triton_kernel(parts):
    q, main, recent = _inputs(256, 32, jnp.bfloat16, heads=16, kv_heads=8, head_dim=128, batch=1)

    def attend(q, main, recent):
        return fused_cached_attention(q, main, recent, 200, 7, parts=parts)

    lowered = jax.jit(attend).trace(q, main, recent).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1


def test_supported_shapes():
    assert supported(head_dim=128, group=2, capacity=768, recent=32)
    assert supported(head_dim=16, group=16, capacity=64, recent=16)
    assert not supported(head_dim=8, group=2, capacity=768, recent=32)  # below a Triton dot
    assert not supported(head_dim=96, group=2, capacity=768, recent=32)  # not a power of two
    assert not supported(head_dim=128, group=2, capacity=700, recent=32)  # partial block
    assert not supported(head_dim=128, group=2, capacity=768, recent=24)
    assert not supported(head_dim=128, group=32, capacity=768, recent=32)
