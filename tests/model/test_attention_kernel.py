"""The decode step's attention kernel, run in Pallas' interpreter, equals what XLA runs in its
place: per-head RMSNorm and mRoPE of the step's queries and key, the key and value written
into the chunk's cache, ``cached_attention`` over both caches. It lowers for CUDA to one
Triton kernel (no GPU needed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import NEG_INF, cached_attention
from model.attention_kernel import decode_attention, supported
from model.config import TextConfig
from model.kv_cache import KVCache
from model.layers import RMSNorm
from model.rope import apply_rotary

EPS = 1e-6


def _inputs(capacity, size, dtype, heads=16, kv_heads=4, head_dim=32, batch=2):
    """The step's projections ``q [B, Hq, D]``, ``k, v [B, Hkv, D]``, norm scales ``[D]`` x 2,
    ``cos, sin [B, D]``, the main cache ``(k [B, Hkv, C, D], v [B, Hkv, D, C])`` and the
    chunk's ``(k [B, Hkv, S, D], v [B, Hkv, D, S])``, random."""
    keys = iter(jax.random.split(jax.random.key(0), 12))

    def normal(*shape, scale=1.0):
        return (scale * jax.random.normal(next(keys), shape)).astype(dtype)

    q, k, v = (normal(batch, n, head_dim, scale=3.0) for n in (heads, kv_heads, kv_heads))
    scales = normal(head_dim, scale=0.3) + 1, normal(head_dim, scale=0.3) + 1
    angles = jax.random.uniform(next(keys), (batch, head_dim // 2), maxval=50.0)
    angles = jnp.concatenate([angles, angles], -1)
    main = normal(batch, kv_heads, capacity, head_dim), normal(batch, kv_heads, head_dim, capacity)
    recent = normal(batch, kv_heads, size, head_dim), normal(batch, kv_heads, head_dim, size)
    return q, k, v, scales, jnp.cos(angles), jnp.sin(angles), main, recent


@functools.partial(jax.jit, static_argnames="parts")
def _kernel(q, k, v, scales, cos, sin, main, recent, main_length, position, parts):
    return decode_attention(
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
        eps=EPS,
        parts=parts,
        interpret=True,
    )


@jax.jit
def _reference(q, k, v, scales, cos, sin, main, recent, main_length, position):
    """The model's own functions: ``RMSNorm``, ``apply_rotary``, ``KVCache.write_token``,
    ``cached_attention``."""
    head_dim, size = q.shape[-1], recent[0].shape[2]
    q_norm, k_norm = (RMSNorm(head_dim, eps=EPS, dtype=q.dtype) for _ in scales)
    q_norm.weight[...], k_norm.weight[...] = scales
    cos, sin = cos[:, None], sin[:, None]  # [B, T = 1, D]
    q = apply_rotary(q_norm(q[:, None]), cos, sin)  # [B, 1, Hq, D]
    k = jnp.swapaxes(apply_rotary(k_norm(k[:, None]), cos, sin), 1, 2)  # [B, Hkv, 1, D]
    cache = KVCache(
        k=(recent[0],), v=(recent[1],), vision=jnp.zeros((1, size), bool), length=position
    ).write_token(0, k, v[:, :, None])
    masks = jnp.arange(main[0].shape[2]) < main_length, jnp.arange(size) <= position
    caches = ((*main, masks[0]), (cache.k[0], cache.v[0], masks[1]))
    return *cached_attention(q, caches), (cache.k[0], cache.v[0])


@pytest.mark.parametrize(
    ("capacity", "main_length", "position"),
    [(256, 150, 5), (256, 0, 0), (256, 256, 15), (256, 128, 9), (64, 37, 3)],
)
def test_kernel_equals_the_functions_it_replaces(capacity, main_length, position):
    """Main-cache blocks partly, wholly and not at all valid; an empty main cache; the
    chunk's first and last slots."""
    args = (*_inputs(capacity, 16, jnp.float32), main_length, position)
    out, probs, (scores, top, lse), written = _reference(*args)
    got_out, got_probs, (got_scores, got_top, got_lse), got_written = _kernel(*args, parts=True)
    np.testing.assert_allclose(got_out, out, atol=1e-5)
    np.testing.assert_allclose(got_probs, probs, atol=1e-6)
    valid = np.asarray(scores) > NEG_INF
    np.testing.assert_array_equal(np.asarray(got_scores) > NEG_INF, valid)
    masked = np.where(valid, got_scores, 0), np.where(valid, scores, 0)
    np.testing.assert_allclose(*masked, atol=2e-5)
    np.testing.assert_allclose(got_top, top, atol=2e-5)
    np.testing.assert_allclose(got_lse, lse, atol=2e-5)
    for got, expected in zip(got_written, written, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    alone, no_probs, no_parts, alone_written = _kernel(*args, parts=False)
    np.testing.assert_array_equal(alone, got_out)
    assert no_probs is None and no_parts is None
    for got, expected in zip(alone_written, got_written, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_bfloat16_matches_within_its_rounding():
    args = (*_inputs(128, 32, jnp.bfloat16), 100, 19)
    out, probs, _, written = _reference(*args)
    got_out, got_probs, _, got_written = _kernel(*args, parts=True)
    assert got_out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got_out), np.float32(out), atol=3e-2)
    np.testing.assert_allclose(got_probs, probs, atol=3e-3)
    for got, expected in zip(got_written, written, strict=True):
        np.testing.assert_allclose(np.float32(got), np.float32(expected), atol=3e-2)


@pytest.mark.parametrize("parts", [True, False])
def test_lowers_for_cuda_to_a_triton_kernel(parts):
    inputs = _inputs(256, 32, jnp.bfloat16, heads=16, kv_heads=8, head_dim=128, batch=1)

    def attend(*inputs):
        return decode_attention(*inputs, 200, 7, eps=EPS, parts=parts)

    try:
        lowered = jax.jit(attend).trace(*inputs).lower(lowering_platforms=("cuda",))
    except RuntimeError as e:  # jax >= 0.12 asks for a GPU (or an abstract one) to lower
        if "No supported GPU devices found" not in str(e):
            raise
        pytest.skip(f"jax {jax.__version__} lowers Triton kernels only for a GPU it can see")
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1


def test_supported_shapes():
    def text(heads=16, kv_heads=8, head_dim=128):
        return TextConfig(
            vocab_size=8,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
        )

    assert supported(text(), capacity=768, recent=32)  # Qwen3-VL-2B
    assert supported(text(32, 8, 128), capacity=64, recent=16)
    assert not supported(text(4, 2, 128), capacity=768, recent=32)  # below a Triton dot
    assert not supported(text(head_dim=16), capacity=768, recent=32)
    assert not supported(text(head_dim=96), capacity=768, recent=32)  # not a power of two
    assert not supported(text(24, 8), capacity=768, recent=32)
    assert not supported(text(), capacity=700, recent=32)  # a partial block
    assert not supported(text(), capacity=768, recent=24)
