"""Generation: a prefill, then one jitted decode step per token on a preallocated KV cache,
with attention telemetry reduced inside the compiled step.

Flow of ``generate``:

1. ``prepare_prompt`` + ``encode`` (vision tower, embeddings) on the prompt, padded on the
   right to a multiple of ``PROMPT_BUCKET`` tokens (causal attention never reads the padding,
   and decode overwrites its cache slots), so prompts of similar length share one compile.
2. ``_prefill``: the full forward over the prompt (causal attention computed for one block
   of queries at a time, so memory grows as ``T x block``, not ``T x T``) writes every
   layer's keys and values into the cache; the first new token is sampled from the logits
   of the last prompt position.
3. ``_step`` per further token: feeds the newest token of every row, writes its keys and
   values at ``cache.length`` (``dynamic_update_slice`` on the donated per-layer cache
   buffers), attends over the whole capacity with a length mask, and samples the next token.
   All layers run in one compiled program over per-layer copies of their weights
   (``unstack_layers``, made once per ``generate``); nothing in the step waits for the host.

Telemetry (``telemetry=True``) for one watched batch row ``sample`` is computed inside both
programs: per layer and query head ``[L, H]`` the max weight, entropy, vision mass, sink mass
and argmax of the attention row of the newest query; the full row of the selected
``(layer, head)``; the sampled token's probability and the top-5 alternatives; the cache
length and the query's mRoPE position. The prefill adds the selected head's ``T x T`` map,
block-max pooled on the device to at most ``MAP_SIZE x MAP_SIZE`` one block of queries at a
time (no ``T x T`` array exists). The selection ``(sample, layer, head)`` and the sampling
parameters are traced arguments: changing them never recompiles. ``telemetry=False`` runs a
separately compiled variant that computes none of it.

Host side: step ``n + 1`` is dispatched before step ``n``'s results are fetched, so copies
to the host overlap the next step (JAX's asynchronous dispatch). Only ``O(L * H + capacity)``
numbers leave the device per step.

Compiled programs are module-level ``jax.jit`` functions keyed by the model's graph and the
shapes (batch, prompt bucket, capacity); a second ``generate`` of the same shapes compiles
nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.attention import attention, head_stats, pool_max
from model.kv_cache import KVCache
from model.qwen3_vl import Prompt, Qwen3VL, encode, merge, prepare_prompt, split
from model.sampling import GREEDY, TOP_ALTERNATIVES, SamplingParams, sample, top_alternatives
from model.telemetry import HeadStats, RolloutControl
from model.text import DecoderLayer

MAP_SIZE = 128  # prefill attention map resolution (at most MAP_SIZE x MAP_SIZE)
PROMPT_BUCKET = 32  # prompts are padded to a multiple of this many tokens
CAPACITY_BUCKET = 128  # default cache capacities are multiples of this


# --- device side: forward passes --------------------------------------------------------


def _observer(num_layers: int, num_heads: int, selection, length, tk: int):
    """``(observe, initial)`` for ``TextModel``'s prefill of a prompt padded to ``tk`` tokens:
    of batch row ``sample`` (``selection = (sample, layer, head)``), keeps the attention rows
    ``[L, H, tk]`` of the last real query ``length - 1``, and the selected ``(layer, head)``'s
    ``[length, length]`` map block-max pooled to ``[MAP_SIZE, MAP_SIZE]`` (``pool_max``, block
    of queries by block)."""
    sample, layer, head = selection
    query = length - 1

    def observe(obs, index, start, probs):  # [B, H, Tb, Tw]: queries start + [0, Tb)
        offset = query - start
        inside = (offset >= 0) & (offset < probs.shape[2])
        row = jax.lax.dynamic_index_in_dim(probs[sample], offset, axis=1, keepdims=False)
        row = jnp.pad(row, ((0, 0), (0, tk - row.shape[1])))  # keys past Tw weigh 0
        rows = obs["rows"].at[index].set(jnp.where(inside, row, obs["rows"][index]))

        def pool():
            return jnp.maximum(obs["map"], pool_max(probs[sample, head], start, length, MAP_SIZE))

        return {"rows": rows, "map": jax.lax.cond(index == layer, pool, lambda: obs["map"])}

    initial = {
        "rows": jnp.zeros((num_layers, num_heads, tk), jnp.float32),
        "map": jnp.zeros((MAP_SIZE, MAP_SIZE), jnp.float32),
    }
    return observe, initial


def prefill_forward(m: Qwen3VL, embeds, deepstack, positions, length, selection=None):
    """Full forward of the padded prompt ``embeds [B, Tp, D]`` whose first ``length`` tokens
    are real. Returns logits ``[B, V]`` of position ``length - 1``, ``k, v [L, B, Hkv, Tp, hd]``
    and the telemetry observations (``None`` without a ``selection``)."""
    t = m.config.text
    observe, initial = None, None
    if selection is not None:
        observe, initial = _observer(
            t.num_hidden_layers, t.num_attention_heads, selection, length, embeds.shape[1]
        )
    cos, sin = m.cos_sin(positions)
    h, k, v, obs = m.language_model(embeds, cos, sin, deepstack, observe, initial)
    last = jax.lax.dynamic_index_in_dim(h, length - 1, axis=1, keepdims=False)
    return m.head(last), k, v, obs


def step_forward(m: Qwen3VL, layer_weights, cache: KVCache, tokens, deltas, selection=None):
    """One decode step: ``tokens [B]`` (each row's newest token) enter at cache index
    ``cache.length``. ``layer_weights`` are the decoder layers' parameters one layer at a
    time (``unstack_layers``). Returns logits ``[B, V]``, the updated cache and the
    observations (``{"rows": [L, H, C]}``; ``None`` without a ``selection``).

    The layers run as an unrolled Python loop over per-layer weights and cache buffers:
    slicing stacked arrays inside a compiled loop would copy them every step.
    """
    pos = cache.length
    x = m.language_model.embed_tokens(tokens)[:, None]  # [B, 1, D]
    cos, sin = m.cos_sin(jnp.broadcast_to((pos + deltas)[None, :, None], (3, len(deltas), 1)))
    mask = (jnp.arange(cache.capacity) <= pos)[None, None, :]  # [1, 1, C]
    rows = []
    for index, layer in enumerate(layer_modules(m, layer_weights)):
        q, k, v = layer.qkv(x, cos, sin)
        cache = cache.write_token(index, k, v)
        out, probs = attention(q, cache.k[index], cache.v[index], mask)
        if selection is not None:
            rows.append(probs[selection[0], :, 0])  # [H, C]
        x = layer.finish(x, out)
    cache = dataclasses.replace(cache, length=pos + 1)
    obs = {"rows": jnp.stack(rows)} if selection is not None else None
    return m.head(m.language_model.norm(x[:, 0])), cache, obs


def layer_modules(m: Qwen3VL, layer_weights) -> list[DecoderLayer]:
    """One ``DecoderLayer`` per entry of ``unstack_layers``' output (inside jitted code)."""
    graphdef, state = nnx.split(m.language_model.layers)
    treedef = jax.tree.structure(state)
    return [nnx.merge(graphdef, jax.tree.unflatten(treedef, w)) for w in layer_weights]


@functools.partial(jax.jit, static_argnums=0)
def unstack_layers(graph, weights) -> list[list[jax.Array]]:
    """The decoder layers' stacked parameters as one list of arrays per layer: copies, the
    decode step's weights, which take as much memory again as the decoder layers."""
    _, state = nnx.split(merge(graph, weights).language_model.layers)
    leaves = jax.tree.leaves(state)
    return [[a[i] for a in leaves] for i in range(leaves[0].shape[0])]


def _token_telemetry(obs, vision, tokens, logp, selection, cache_len, position):
    """The watched row's telemetry packed into ``(floats, ints)``, two arrays, because each
    array fetched costs the host a fixed overhead (see ``_unpack`` for the layout)."""
    sample, layer, head = selection
    rows = obs["rows"]  # [L, H, Tk]
    stats = head_stats(rows, vision[sample])
    top_ids, top_probs = top_alternatives(logp[sample])
    prob = jnp.exp(logp[sample, tokens[sample]])
    floats = [stats[k].ravel() for k in HeadStats.METRICS]
    floats += [rows[layer, head], prob[None], top_probs]
    ints = [stats["argmax"].ravel(), tokens, top_ids, jnp.stack([cache_len, *position])]
    return jnp.concatenate(floats), jnp.concatenate([i.astype(jnp.int32) for i in ints])


@functools.partial(jax.jit, static_argnums=0, static_argnames="telemetry", donate_argnames="cache")
def _prefill(
    graph, weights, cache, embeds, deepstack, positions, length, vision, key, params,
    selection, *, telemetry,
):  # fmt: skip
    m = merge(graph, weights)
    logits, k, v, obs = prefill_forward(
        m, embeds, deepstack, positions, length, selection if telemetry else None
    )
    cache = cache.write_prompt(k, v, vision, length)
    tokens, logp = sample(jax.random.fold_in(key, 0), logits, params)
    if not telemetry:
        return cache, tokens, None
    position = jax.lax.dynamic_index_in_dim(positions[:, selection[0]], length - 1, 1, False)
    tel = _token_telemetry(obs, vision, tokens, logp, selection, length, position)
    return cache, tokens, (*tel, obs["map"])


@functools.partial(jax.jit, static_argnums=0, static_argnames="telemetry", donate_argnames="cache")
def _step(
    graph, weights, layer_weights, cache, tokens, deltas, key, step, params, selection, *,
    telemetry,
):  # fmt: skip
    m = merge(graph, weights)
    pos = cache.length
    sel = selection if telemetry else None
    logits, cache, obs = step_forward(m, layer_weights, cache, tokens, deltas, sel)
    tokens, logp = sample(jax.random.fold_in(key, step), logits, params)
    if not telemetry:
        return cache, tokens, None
    position = jnp.broadcast_to(pos + deltas[selection[0]], (3,))
    tel = _token_telemetry(obs, cache.vision, tokens, logp, selection, pos + 1, position)
    return cache, tokens, tel


# --- host side ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrefillTelemetry:
    """The watched row's prompt after prefill (host copies)."""

    sample: int
    layer: int
    head: int
    stats: HeadStats  # attention of the last prompt position
    attn_map: np.ndarray  # [r, r] float32, block-max pooled T x T map of (layer, head)
    positions: np.ndarray  # [3, T] int32 mRoPE (t, h, w) of the prompt tokens
    prompt_length: int
    cache_capacity: int
    vision_norm: float  # mean L2 norm of the merged image tokens (0 without images)
    text_norm: float  # mean L2 norm of the text token embeddings
    elapsed_ms: float  # encode + prefill, wall time


@dataclasses.dataclass(frozen=True)
class TokenTelemetry:
    """One generated token of the watched row and the attention that produced it.

    Step 0's token comes from the prefill (its query is the last prompt token); step ``n``'s
    from decode step ``n``, whose query is the token of step ``n - 1``.
    """

    step: int
    sample: int
    layer: int
    head: int
    token_id: int
    prob: float  # under the sampling distribution (model.sampling)
    top_ids: np.ndarray  # [5] int32
    top_probs: np.ndarray  # [5] float32
    cache_len: int  # tokens in the cache after this step's write
    position: tuple[int, int, int]  # mRoPE (t, h, w) of the query
    stats: HeadStats
    attn_row: np.ndarray  # [cache_len] float32, the selected (layer, head) over the context
    elapsed_ms: float  # wall time of this step (between results of consecutive steps)
    tokens: np.ndarray  # [B] int32 this step's token of every row
    finished: np.ndarray  # [B] bool: the row had stopped before this step (token discarded)


@dataclasses.dataclass(frozen=True)
class Generation:
    tokens: np.ndarray  # [B, n] int32 new tokens; after a row's EOS, the pad id
    lengths: np.ndarray  # [B] int32 new tokens of each row (its EOS included; fewer if stopped)
    prompt_length: int
    steps: int  # decode steps run after the prefill
    decode_seconds: float  # wall time of those steps


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def default_capacity(prompt_length: int, max_new_tokens: int) -> int:
    """Cache slots per row: prompt plus new tokens, rounded up to ``CAPACITY_BUCKET``."""
    return _round_up(prompt_length + max_new_tokens, CAPACITY_BUCKET)


def _pad_prompt(prompt: Prompt, length: int) -> Prompt:
    """Right-pad ``prompt`` to ``length`` tokens (text padding, never read by real tokens)."""
    extra = length - prompt.input_ids.shape[1]
    if extra == 0:
        return prompt
    pad = ((0, 0), (0, extra))
    return dataclasses.replace(
        prompt,
        input_ids=np.pad(prompt.input_ids, pad),
        image_mask=np.pad(prompt.image_mask, pad),
        positions=np.pad(prompt.positions, ((0, 0), *pad)),
    )


def _repeat_rows(prompt: Prompt, n: int) -> Prompt:
    if n == 1:
        return prompt
    return dataclasses.replace(
        prompt,
        input_ids=np.repeat(prompt.input_ids, n, 0),
        image_mask=np.repeat(prompt.image_mask, n, 0),
        positions=np.repeat(prompt.positions, n, 1),
        deltas=np.repeat(prompt.deltas, n, 0),
    )


def _unpack(floats: np.ndarray, ints: np.ndarray, layers: int, heads: int, batch: int) -> dict:
    """Host views of ``_token_telemetry``'s packed arrays."""
    n = layers * heads
    k = TOP_ALTERNATIVES
    grids = floats[: 4 * n].reshape(4, layers, heads)
    stats = HeadStats(*grids, argmax=ints[:n].reshape(layers, heads))
    tail = ints[n + batch + k :]
    return {
        "stats": stats,
        "row": floats[4 * n : -1 - k],
        "prob": float(floats[-1 - k]),
        "top_probs": floats[-k:],
        "tokens": ints[n : n + batch],
        "top_ids": ints[n + batch : n + batch + k],
        "cache_len": int(tail[0]),
        "position": tuple(int(p) for p in tail[1:4]),
    }


def _clamp_selection(selection, batch: int, m: Qwen3VL) -> np.ndarray:
    limits = (batch, m.config.text.num_hidden_layers, m.config.text.num_attention_heads)
    clamped = [min(max(int(s), 0), n - 1) for s, n in zip(selection, limits, strict=True)]
    return np.array(clamped, np.int32)


def _to_host_async(arrays) -> None:
    for a in jax.tree.leaves(arrays):
        a.copy_to_host_async()


def generate(
    m: Qwen3VL,
    input_ids,
    pixel_values=None,
    image_grid_thw=None,
    *,
    max_new_tokens: int,
    sampling: SamplingParams = GREEDY,
    eos_token_ids: Sequence[int] = (),
    seed: int = 0,
    num_samples: int = 1,
    capacity: int | None = None,
    telemetry: bool = True,
    control: RolloutControl | None = None,
    on_prefill: Callable[[PrefillTelemetry], None] | None = None,
    on_step: Callable[[TokenTelemetry], None] | None = None,
) -> Generation:
    """Generate up to ``max_new_tokens`` tokens for every row of ``input_ids [B, T]``.

    Images as in ``Qwen3VL.logits``. Each prompt row is decoded ``num_samples`` times (a GRPO
    group), its vision tower run once; rows are ordered prompt-major. A row stops at any of
    ``eos_token_ids`` (kept in its output); generation ends when every row stopped.
    ``capacity`` (cache slots per row) defaults to the prompt plus ``max_new_tokens``,
    rounded up to a multiple of ``CAPACITY_BUCKET``.

    With ``telemetry`` on, ``on_prefill`` and ``on_step`` receive host-side telemetry of the
    watched row (``PrefillTelemetry`` once, then one ``TokenTelemetry`` per token, in order).
    ``control`` (optional) is read for the watched ``selection = (sample, layer, head)``
    before the prefill and before every decode step, and ``control.gate()`` is called before
    every decode step: it blocks while paused and stops generation once it returns False.
    While paused, the last computed step is delivered before waiting, so the caller sees
    every step the device has run.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    prompt = prepare_prompt(m.config, input_ids, pixel_values, image_grid_thw)
    rows, length = prompt.input_ids.shape
    batch = rows * num_samples
    needed = length + max_new_tokens - 1  # the last new token is never written
    capacity = capacity or default_capacity(length, max_new_tokens)
    if capacity < needed:
        raise ValueError(f"capacity {capacity} < prompt {length} + new tokens - 1 = {needed}")
    padded = _round_up(length, PROMPT_BUCKET)
    prompt = _pad_prompt(prompt, padded if padded <= capacity else length)
    eos = np.asarray(list(eos_token_ids), np.int32)
    text = m.config.text
    shape = (text.num_hidden_layers, text.num_attention_heads, batch)
    params = sampling.arrays()
    key = jax.random.key(seed)

    def selection():
        return _clamp_selection(control.selection if control else (0, 0, 0), batch, m)

    graph, weights = split(m)
    layer_weights = unstack_layers(graph, weights)
    start = time.perf_counter()
    embeds, deepstack, norms = encode(graph, weights, prompt)
    prompt = _repeat_rows(prompt, num_samples)
    if num_samples > 1:
        embeds = jnp.repeat(embeds, num_samples, axis=0)
        deepstack = None if deepstack is None else jnp.repeat(deepstack, num_samples, axis=1)
    cache = KVCache.create(text, batch, capacity, m.dtype)
    sel = selection()
    cache, tokens, tel = _prefill(
        graph, weights, cache, embeds, deepstack, prompt.positions, np.int32(length),
        prompt.image_mask, key, params, sel, telemetry=telemetry,
    )  # fmt: skip
    host_tokens, tel, norms = jax.device_get((tokens, tel, norms))
    now = time.perf_counter()
    elapsed_ms = (now - start) * 1e3

    out = np.full((batch, max_new_tokens), eos[0] if len(eos) else 0, np.int32)
    lengths = np.zeros(batch, np.int32)
    finished = np.zeros(batch, bool)

    def record(step: int, step_tokens: np.ndarray) -> np.ndarray:
        """Store one step's tokens; returns which rows had stopped before it."""
        before = finished.copy()
        out[~before, step] = step_tokens[~before]
        lengths[~before] = step + 1
        finished[~before & np.isin(step_tokens, eos)] = True
        return before

    before = record(0, host_tokens)
    if telemetry:
        values = _unpack(tel[0], tel[1], *shape)
        s, r = int(sel[0]), min(length, MAP_SIZE)
        if on_prefill:
            on_prefill(
                PrefillTelemetry(
                    sample=s, layer=int(sel[1]), head=int(sel[2]), stats=values["stats"],
                    attn_map=tel[2][:r, :r], positions=prompt.positions[:, s, :length],
                    prompt_length=length, cache_capacity=capacity, vision_norm=float(norms[0]),
                    text_norm=float(norms[1]), elapsed_ms=elapsed_ms,
                )
            )  # fmt: skip
        if on_step:
            on_step(_token(0, sel, values, before, elapsed_ms))

    decode_start = last = now
    pending = None  # (step, selection, device results) dispatched, not yet fetched

    def flush():
        nonlocal last, pending
        step, step_sel, results = pending
        pending = None
        results = [np.asarray(a) for a in results]
        now = time.perf_counter()
        ms, last = (now - last) * 1e3, now
        if finished.all():
            return  # a step dispatched before the last row's EOS was seen
        if not telemetry:
            record(step, results[0])
            return
        values = _unpack(*results, *shape)
        before = record(step, values["tokens"])
        if on_step:
            on_step(_token(step, step_sel, values, before, ms))

    steps = 0
    for step in range(1, max_new_tokens):
        if finished.all():
            break
        if control is not None:
            if control.paused and pending:
                flush()
            if not control.gate():
                break
        sel = selection()
        cache, tokens, tel = _step(
            graph, weights, layer_weights, cache, tokens, prompt.deltas, key, np.int32(step),
            params, sel, telemetry=telemetry,
        )  # fmt: skip
        results = tel if telemetry else (tokens,)
        _to_host_async(results)
        steps += 1
        if pending:
            flush()
        pending = (step, sel, results)
    if pending:
        flush()
    return Generation(
        tokens=out,
        lengths=lengths,
        prompt_length=length,
        steps=steps,
        decode_seconds=last - decode_start,
    )


def _token(step: int, sel, values: dict, finished: np.ndarray, elapsed_ms: float):
    cache_len = values["cache_len"]
    return TokenTelemetry(
        step=step,
        sample=int(sel[0]),
        layer=int(sel[1]),
        head=int(sel[2]),
        token_id=int(values["tokens"][sel[0]]),
        prob=values["prob"],
        top_ids=values["top_ids"],
        top_probs=values["top_probs"],
        cache_len=cache_len,
        position=values["position"],
        stats=values["stats"],
        attn_row=values["row"][:cache_len],
        elapsed_ms=elapsed_ms,
        tokens=values["tokens"],
        finished=finished,
    )
