"""The two compiled programs of generation: the prefill and a chunk of decode steps.

Both are module-level ``jax.jit`` functions keyed by the model's graph and the shapes
(batch, prompt bucket, capacity): a second ``generate`` of the same shapes compiles
nothing. The watched ``selection = (sample, layer, head)``, the sampling parameters, the
chunk's first step and its length are traced arguments, so changing them never recompiles.
With ``telemetry`` they return the watched row's telemetry packed by ``Layout``: per step,
its attention summaries ``[L, H]``, the selected head's row over the cache, every row's
token, the watched token's probability and top alternatives, the cache length and the
query's mRoPE position. ``telemetry=False`` compiles a variant that computes none of it.

On a mesh (``jax.set_mesh``, ``model.sharding``) the programs pin what they hand back: the
cache and the chunk's buffers keep their shards from call to call, and the results the host
fetches are replicated (every process reads its own copy); the telemetry keeps the candidate
of the ``data`` shard that holds the watched row (``model.decode.summaries``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from model import sharding
from model.decode.forward import CHUNK, prefill_forward, step_forward
from model.decode.layout import Layout
from model.decode.summaries import Observations, Summaries, summarize, summarize_later
from model.kv_cache import KVCache
from model.qwen3_vl import merge
from model.sampling import sample, top_alternatives


def _columns(
    summaries: Summaries, start, tokens, logp, sample_, cache_len, position, capacity: int
) -> dict:
    """``Layout``'s columns of ``n`` steps of the watched row ``sample_``.

    Args:
        summaries: the steps' ``Summaries``, ``[n, ...]``; their rows have the prompt's
            slots (at most ``capacity``), or for decode steps ``capacity`` slots of the
            main cache and then the chunk's own, which hold positions ``start, start + 1,
            ...``.
        tokens: ``[n, B]`` every row's token; ``logp [n, D, V]`` the watched row's
            log-probabilities; ``cache_len [n]``; ``position [n, 3]`` of each query.
    """
    shard = sharding.owner(sample_, tokens.shape[1])  # the candidate (axis D) to keep
    summaries = jax.tree.map(lambda x: sharding.select(x, shard, axis=-2), summaries)
    logp = sharding.select(logp, shard, axis=1)
    columns = summaries.columns()
    row, argmax = columns["row"], columns["argmax"]
    if row.shape[1] > capacity:  # slot c + j holds position start + j (main slots weigh 0)
        argmax = jnp.where(argmax < capacity, argmax, start + argmax - capacity)
        row = jax.lax.dynamic_update_slice(row, row[:, capacity:], (0, start))[:, :capacity]
    row = jnp.pad(row, ((0, 0), (0, capacity - row.shape[1])))  # a prompt's: zero weights
    token = jax.lax.dynamic_slice_in_dim(tokens, sample_, 1, axis=1)  # [n, 1]
    top_ids, top_probs = top_alternatives(logp)
    return columns | {
        "row": row,
        "argmax": argmax,
        "tokens": tokens,
        "prob": jnp.exp(jnp.take_along_axis(logp, token, axis=1, mode="clip")),
        "top_ids": top_ids,
        "top_probs": top_probs,
        "cache_len": cache_len,
        "position": position,
    }


def layout(m, batch: int, capacity: int) -> Layout:
    t = m.config.text
    return Layout(t.num_hidden_layers, t.num_attention_heads, batch, capacity)


@functools.partial(jax.jit, static_argnums=0, static_argnames="telemetry", donate_argnames="cache")
def prefill(
    graph,
    weights,
    cache,
    embeds,
    deepstack,
    positions,
    length,
    vision,
    key,
    params,
    selection,
    *,
    telemetry,
):
    """The prompt's forward, its keys and values written to ``cache`` and the first new
    token sampled from the logits of its last real position ``length - 1``.

    Args:
        embeds: ``[B, Tp, D]`` the padded prompt (``model.qwen3_vl.encode``).
        positions: ``[3, B, Tp]``; ``vision [B, Tp]`` marks image tokens.
        key, params: the sampling key and ``SamplingParams.arrays()``.
    Returns:
        the cache, ``tokens [B]`` and, with telemetry, ``(floats [1, F], ints [1, I],
        map [MAP_SIZE, MAP_SIZE])``: the ``Layout`` of the step and the pooled map.
    """
    m = merge(graph, weights)
    embeds = sharding.constrain(embeds, ("batch", None, None))
    logits, k, v, obs = prefill_forward(
        m, embeds, deepstack, positions, length, selection if telemetry else None
    )
    cache = sharding.constrain_cache(cache.write_prompt(k, v, vision, length))
    tokens, logp = sample(jax.random.fold_in(key, 0), logits, params)
    tokens = sharding.replicated(tokens)
    if not telemetry:
        return cache, tokens, None
    sample_, layer, head = selection
    position = jax.lax.dynamic_index_in_dim(positions[:, sample_], length - 1, 1, False)
    watched_vision = sharding.select(vision, sample_, axis=0)
    summaries = summarize(Observations(obs.rows[None]), watched_vision, layer, head)
    columns = _columns(
        summaries,
        0,
        tokens[None],
        sharding.watched(logp, sample_)[None],
        sample_,
        length[None],
        position[None],
        cache.capacity,
    )
    floats, ints = layout(m, tokens.shape[0], cache.capacity).pack(columns)
    pooled = sharding.select(obs.map, sharding.owner(sample_, tokens.shape[0]), axis=0)
    return cache, tokens, sharding.replicated((floats, ints, pooled))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stored:
    """What the steps of a chunk keep, ``[n, ...]`` per step: every row's token (-1 for
    steps not run) and, with telemetry, the watched row's log-probabilities ``[n, D, V]``
    and its attention (``Observations`` or ``Summaries``: ``summarize_later``); ``D``
    candidates (``model.sharding.watched``)."""

    tokens: jax.Array
    logp: jax.Array | None = None
    attention: Observations | Summaries | None = None

    def at(self, i, tokens, logp, attention) -> Stored:
        """These buffers with step ``i``'s values written."""
        return jax.tree.map(
            lambda buffer, x: buffer.at[i].set(x),
            self,
            Stored(tokens, logp, attention),
        )

    def pinned(self) -> Stored:
        """These buffers split over the mesh as ``model.sharding.TELEMETRY`` says."""
        by_rank = {5: "rows", 4: "heads", 3: "row"}

        def pin(x, name):
            return sharding.constrain(x, sharding.TELEMETRY[name])

        return Stored(
            pin(self.tokens, "tokens"),
            None if self.logp is None else pin(self.logp, "logp"),
            jax.tree.map(lambda x: pin(x, by_rank[x.ndim]), self.attention),
        )


class Carry(NamedTuple):
    """The state of a chunk's loop of decode steps."""

    recent: KVCache  # the chunk's own cache: its steps' keys and values
    tokens: jax.Array  # [B] each row's newest token
    finished: jax.Array  # [B] the row sampled an EOS
    stored: Stored


@functools.partial(
    jax.jit, static_argnums=0, static_argnames="telemetry", donate_argnames=("cache", "stored")
)
def decode_chunk(
    graph,
    weights,
    cache,
    stored,
    tokens,
    finished,
    deltas,
    eos,
    key,
    start,
    count,
    params,
    selection,
    *,
    telemetry,
):
    """Decode steps ``start, start + 1, ...``: ``count`` of them (``1 <= count <= CHUNK``,
    at most the cache's free slots), fewer once every row has finished.

    Args:
        stored: the chunk's buffers (``Stored`` of ``empty_store``), donated and handed
            from chunk to chunk: clearing them would cost as much as the steps' writes.
        tokens, finished: ``[B]`` each row's newest token and whether it sampled one of
            ``eos [E]``.
        deltas: ``[B]`` each row's mRoPE offset.
        key: the sampling key; step ``s`` draws with ``fold_in(key, s)``.
    Returns:
        the cache with the chunk's tokens appended, ``stored``, ``tokens [B]``, ``finished
        [B]`` and the chunk's results: every row's tokens ``[n, B]`` (-1 for steps not
        run) or, with telemetry, the ``Layout`` ``(floats [k, F], ints [k, I])`` of its
        first ``k`` steps, ``k`` the least of ``1, 2, 4, ..., n`` that holds the steps run
        (``n = min(CHUNK, capacity)``; ``tokens`` -1 in rows of steps not run).
    """
    m = merge(graph, weights)
    batch = tokens.shape[0]
    n = min(CHUNK, cache.capacity)
    sample_, layer, head = selection
    vision = jnp.pad(sharding.select(cache.vision, sample_, 0), (0, n))  # own tokens: text
    later = summarize_later(m.config.text, cache.capacity, n)
    watched = sample_ if telemetry else None

    def step(carry: Carry) -> Carry:
        i = carry.recent.length
        logits, recent, obs = step_forward(m, cache, carry.recent, carry.tokens, deltas, watched)
        new, logp = sample(jax.random.fold_in(key, start + i), logits, params)
        finished = carry.finished | (new[:, None] == eos).any(-1)
        if telemetry:
            attention = obs if later else summarize(obs, vision, layer, head)
            stored = carry.stored.at(i, new, sharding.watched(logp, sample_), attention)
        else:
            stored = carry.stored.at(i, new, None, None)
        return Carry(recent, new, finished, stored)

    def running(carry: Carry):
        return (carry.recent.length < count) & ~carry.finished.all()

    recent = sharding.constrain_cache(KVCache.create(m.config.text, batch, n, cache.k[0].dtype))
    stored = dataclasses.replace(stored, tokens=jnp.full((n, batch), -1, jnp.int32))
    carry = jax.lax.while_loop(running, step, Carry(recent, tokens, finished, stored))
    cache_out = sharding.constrain_cache(cache.append(carry.recent))
    stored_out, tokens, finished = carry.stored.pinned(), *sharding.replicated(carry[1:3])
    if not telemetry:
        return cache_out, stored_out, tokens, finished, stored_out.tokens
    pack = layout(m, batch, cache.capacity).pack

    def first_steps(k: int):  # the first k steps' telemetry, packed
        kept = jax.tree.map(lambda x: x[:k], carry.stored)
        attention = kept.attention
        if later:
            attention = summarize(attention, vision, layer, head)
        pos = cache.length + jnp.arange(k)  # each step's query position
        position = jnp.broadcast_to((pos + deltas[sample_])[:, None], (k, 3))
        columns = _columns(
            attention,
            cache.length,
            kept.tokens,
            kept.logp,
            sample_,
            pos + 1,
            position,
            cache.capacity,
        )
        floats, ints = pack(columns)
        pad = ((0, n - k), (0, 0))
        return jnp.pad(floats, pad), jnp.pad(ints, pad, constant_values=-1)

    sizes = [k for k in (1 << j for j in range(n.bit_length())) if k < n] + [n]
    bucket = (jnp.asarray(sizes) < carry.recent.length).sum()  # the first size >= steps run
    results = jax.lax.switch(bucket, [functools.partial(first_steps, k) for k in sizes])
    return cache_out, stored_out, tokens, finished, sharding.replicated(results)
