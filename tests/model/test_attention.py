"""Attention: the one-query form of a decode step, causal attention in blocks of queries,
the map pooled block by block and the argmax of the head stats, each equal to the plain
computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import (
    ARGMAX_BLOCK,
    CAUSAL_SEGMENTS,
    LONG_ROW,
    NEG_INF,
    QUERY_BLOCK,
    attention,
    causal_attention,
    head_stats,
    pool_max,
    softmax_stats,
)
from tests.model.pooling import block_max


def _qkv(t_q, t_k, seed=0):
    """``q [2, Tq, 4, 8]``, ``k, v [2, 2, Tk, 8]`` (two query heads per KV head)."""
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (2, t_q, 4, 8))
    k, v = (jax.random.normal(key, (2, 2, t_k, 8)) for key in keys[1:])
    return q, k, v


def test_one_query_equals_its_row_of_many():
    q, k, v = _qkv(5, 9)
    mask = jax.random.bernoulli(jax.random.key(1), 0.7, (2, 5, 9)).at[..., 0].set(True)
    out, probs = attention(q, k, v, mask)
    for i in range(5):
        one_out, one_probs = attention(q[:, i : i + 1], k, v, mask[:, i : i + 1])
        np.testing.assert_allclose(one_out[:, 0], out[:, i], atol=1e-6)
        np.testing.assert_allclose(one_probs[:, :, 0], probs[:, :, i], atol=1e-6)


def test_causal_attention_in_blocks_equals_the_whole_map():
    t = (CAUSAL_SEGMENTS + 1) * QUERY_BLOCK + 3  # segments of 1 and 2 blocks, padding rows
    q, k, v = _qkv(t, t)
    out, probs = attention(q, k, v, jnp.tril(jnp.ones((t, t), bool))[None])

    def observe(seen, start, p):  # p [B, H, Tb, Tw]
        rows = start + jnp.arange(p.shape[2])
        return seen.at[:, :, rows, : p.shape[3]].set(p, mode="drop")

    blocked, seen = jax.jit(causal_attention, static_argnums=3)(
        q, k, v, observe, jnp.zeros(probs.shape)
    )
    np.testing.assert_allclose(blocked, out, atol=1e-5)
    np.testing.assert_allclose(seen, probs, atol=1e-6)


def test_pool_max_by_blocks_of_rows_equals_pooling_the_whole_map():
    grid = np.random.default_rng(0).random((300, 300), np.float32)
    for length, size in [(290, 128), (50, 128), (300, 16)]:
        pooled = np.zeros((size, size), np.float32)
        for start in range(0, 300, 70):
            rows = grid[start : start + 70]
            pooled = np.maximum(pooled, pool_max(jnp.asarray(rows), start, length, size))
        np.testing.assert_array_equal(pooled, block_max(grid[:length, :length], size))


@pytest.mark.parametrize("t", [3 * ARGMAX_BLOCK + 5, LONG_ROW + 2 * ARGMAX_BLOCK + 5])
def test_head_stats_of_short_and_long_rows(t):
    """Both ways of reducing rows (short, long): the first maximum with ties inside a block,
    across blocks and on the very last key (in a partial block), and the vision mass."""
    rows = np.array(jax.random.uniform(jax.random.key(3), (4, t)))
    rows[0, [7, ARGMAX_BLOCK + 3]] = 2.0  # across blocks: the first
    rows[1, [ARGMAX_BLOCK + 9, ARGMAX_BLOCK + 4]] = 2.0  # inside a block: the first
    rows[2, -1] = 2.0
    vision = np.arange(t) % 3 == 1
    stats = head_stats(jnp.asarray(rows), jnp.asarray(vision))
    np.testing.assert_array_equal(stats["argmax"], rows.argmax(-1))
    np.testing.assert_array_equal(stats["max_weight"], rows.max(-1))
    np.testing.assert_allclose(stats["vision_mass"], (rows * vision).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("t", [300, LONG_ROW + 5])
def test_softmax_stats_equal_head_stats(t):
    """The summaries from the softmax's parts equal those of the weights alone: entropy
    without logarithms, the first maximum (a tie included), also with masked keys (score
    NEG_INF, weight 0) and a nearly one-hot row."""
    scores = 4 * jax.random.normal(jax.random.key(5), (4, t))
    scores = scores.at[1, t // 2 :].set(NEG_INF).at[2, 7].set(60.0)
    scores = scores.at[3, [5, t - 9]].set(30.0)  # a tie: the first counts
    rows = jax.nn.softmax(scores, axis=-1)
    parts = (scores, scores.max(-1), jax.nn.logsumexp(scores, axis=-1))
    vision = jnp.arange(t) % 2 == 0
    fast, plain = softmax_stats(rows, parts, vision), head_stats(rows, vision)
    p = np.asarray(rows, np.float64)
    entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(-1)
    np.testing.assert_allclose(plain["entropy"], entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast["entropy"], entropy, atol=1e-4)
    np.testing.assert_array_equal(fast["argmax"], [*np.asarray(rows[:3]).argmax(-1), 5])
    np.testing.assert_array_equal(fast["argmax"], plain["argmax"])
    for key in ("max_weight", "vision_mass", "sink_mass"):
        np.testing.assert_allclose(fast[key], plain[key], rtol=1e-5, err_msg=key)
