"""Where the time of one decode step goes.

The decode step runs inside one fused XLA program, so it cannot be taken apart. Each
stage is instead run alone, jitted, at the step's shapes (batch, cache capacity) over all
layers, and timed after a warm-up:

- ``mrope``: cos/sin of the query's (t, h, w) position and rotating q and k;
- ``qkv``: input RMSNorm, q/k/v projections and the per-head q/k RMSNorms;
- ``attention``: scores over the whole cache capacity and the chunk's own slots
  (``model.decode``), softmax, weighted sum of the values and the output projection;
- ``kv_write``: writing the step's keys and values into the chunk's cache;
- ``sample``: final norm, LM head and choosing the token.

The MLPs are no stage of ``StepProfile.STAGES``; their time is the rest of the step.
The stages are XLA's operations: on a GPU the decode runs the q/k norms, rotary, KV write
and attention as one Triton kernel instead (``model.attention_kernel``), which is not timed
here.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from model.attention import cached_attention
from model.decode.forward import CHUNK
from model.kv_cache import KVCache
from model.qwen3_vl import Qwen3VL, merge, split
from model.rope import apply_rotary
from model.sampling import GREEDY, SamplingParams, sample
from model.telemetry import StepProfile


@functools.partial(jax.jit, static_argnums=0)
def _mrope(graph, weights, positions, q, k):
    cos, sin = merge(graph, weights).cos_sin(positions)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


@functools.partial(jax.jit, static_argnums=0)
def _qkv(graph, weights, x):
    layers = merge(graph, weights).language_model.layers
    return [layer.self_attn.project(layer.input_layernorm(x)) for layer in layers]


@functools.partial(jax.jit, static_argnums=0)
def _attention(graph, weights, q, cache: KVCache, recent: KVCache):
    """The decode's attention: over ``cache`` up to its length and the chunk's ``recent``."""
    before = jnp.arange(cache.capacity) < cache.length
    so_far = jnp.arange(recent.capacity) <= recent.length
    layers = merge(graph, weights).language_model.layers
    outs = []
    for index, layer in enumerate(layers):
        out, *_ = cached_attention(
            q,
            (
                (cache.k[index], cache.v[index], before),
                (recent.k[index], recent.v[index], so_far),
            ),
        )
        outs.append(layer.self_attn.o_proj(out.reshape(*q.shape[:2], -1)))
    return outs


@functools.partial(jax.jit, donate_argnums=0)
def _kv_write(recent: KVCache, k, v):
    for index in range(len(recent.k)):
        recent = recent.write_token(index, k, v)
    return recent


@functools.partial(jax.jit, static_argnums=0)
def _sample(graph, weights, x, key, params):
    m = merge(graph, weights)
    return sample(key, m.head(m.language_model.norm(x)), params)


def _median_ms(run, repeats: int) -> float:
    jax.block_until_ready(run())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


_MEASURED: dict[tuple, dict[str, float]] = {}


def profile_step(
    m: Qwen3VL,
    batch: int,
    capacity: int,
    cache_len: int,
    sampling: SamplingParams = GREEDY,
    repeats: int = 20,
) -> StepProfile:
    """Median time in ms of each decode-step stage of ``m`` (``StepProfile.STAGES``).

    Measured once per model graph, shapes and sampling mode (greedy or not), then
    remembered.

    Args:
        batch, capacity: the step's shapes: rows, and main cache slots per row.
        cache_len: the cache length the profile reports; the stages are timed with the
            cache half full.
        repeats: timed runs per stage, after a warm-up run.
    """
    graph, weights = split(m)
    key = (graph, batch, capacity, sampling.temperature > 0)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(graph, weights, m, batch, capacity, sampling, repeats)
    return StepProfile(stage_ms=dict(_MEASURED[key]), cache_len=cache_len)


def _measure(graph, weights, m, batch, capacity, sampling, repeats) -> dict[str, float]:
    t = m.config.text
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32), m.dtype)

    nl, hq, hkv, hd = t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim
    positions = np.full((3, batch, 1), capacity // 2, np.int32)
    x = normal(batch, 1, t.hidden_size)
    q, k, v = normal(batch, 1, hq, hd), normal(batch, hkv, 1, hd), normal(batch, hkv, 1, hd)
    q_all, k_all = normal(nl, batch, 1, hq, hd), normal(nl, batch, 1, hkv, hd)
    cache = KVCache(
        k=tuple(normal(batch, hkv, capacity, hd) for _ in range(nl)),
        v=tuple(normal(batch, hkv, hd, capacity) for _ in range(nl)),
        vision=jnp.zeros((batch, capacity), bool),
        length=jnp.int32(capacity // 2),
    )
    size = min(CHUNK, capacity)
    recent = KVCache.create(t, batch, size, m.dtype)
    written = [dataclasses.replace(recent, length=jnp.int32(size // 2))]

    def write():  # the buffers are donated and replaced by each write
        written[0] = _kv_write(written[0], k, v)
        return written[0]

    params = sampling.arrays()
    return {
        "mrope": _median_ms(lambda: _mrope(graph, weights, positions, q_all, k_all), repeats),
        "qkv": _median_ms(lambda: _qkv(graph, weights, x), repeats),
        "attention": _median_ms(lambda: _attention(graph, weights, q, cache, recent), repeats),
        "kv_write": _median_ms(write, repeats),
        "sample": _median_ms(
            lambda: _sample(graph, weights, x[:, 0], jax.random.key(0), params), repeats
        ),
    }
