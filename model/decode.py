"""Generation: a prefill, then the decode in chunks: one jitted call runs up to ``CHUNK``
decode steps in an XLA loop on a preallocated KV cache, with attention telemetry reduced
inside the compiled program.

Flow of ``generate``:

1. ``prepare_prompt`` + ``encode`` (vision tower, embeddings) on the prompt, padded on the
   right to a multiple of ``PROMPT_BUCKET`` tokens (causal attention never reads the padding,
   and decode overwrites its cache slots), so prompts of similar length share one compile.
2. ``_prefill``: the full forward over the prompt (causal attention computed for one block
   of queries at a time, so memory grows as ``T x block``, not ``T x T``) writes every
   layer's keys and values into the cache; the first new token is sampled from the logits
   of the last prompt position.
3. ``_decode`` per chunk of ``n <= CHUNK`` further tokens (``n`` is traced: any chunk length
   runs the same program): a ``lax.while_loop`` feeds the newest token of every row, attends,
   and samples the next token (step ``s`` with ``fold_in(key, s)``); it ends after ``n``
   steps or once every row has sampled an EOS. Each step writes its keys and values to a
   small cache of the chunk's own (``recent``) and attends over both caches at once (the main
   one up to the chunk's start, ``recent`` up to itself); the main cache is only read inside
   the loop and receives the chunk's tokens at its end (``KVCache.append``): updating in place
   a buffer that the same loop iteration reads makes XLA copy it at every step. All layers
   run in one compiled program over per-layer copies of their weights (``unstack_layers``,
   made once per ``generate``); nothing in a chunk waits for the host. On a GPU each layer's
   q/k norms, rotary, cache write and attention run as one Triton kernel
   (``model.attention_kernel``) where the shapes allow; XLA's version of them is about sixteen
   small kernels, and a GPU pays for every launch.

Telemetry (``telemetry=True``) for one watched batch row ``sample`` is computed inside both
programs, for every token: per layer and query head ``[L, H]`` the max weight, entropy, vision
mass, sink mass and argmax of the attention row of the newest query; the full row of the
selected ``(layer, head)``; the sampled token's probability and the top-5 alternatives; the
cache length and the query's mRoPE position. A chunk stacks them per step, ``[CHUNK, ...]``:
where its steps' attention rows of the watched sample fit in ``SUMMARIZE_LATER_BYTES`` its
loop only stores them (weights and scores) and summarises them for all steps at once after
the loop, which costs a short step less; longer rows are summarised inside each step, while
they are still in the CPU's caches.
The prefill adds the selected head's ``T x T`` map, block-max pooled on the device to at most
``MAP_SIZE x MAP_SIZE`` one block of queries at a time (no ``T x T`` array exists). The
selection ``(sample, layer, head)`` and the sampling
parameters are traced arguments: changing them never recompiles; a chunk uses the selection
read before it was dispatched. ``telemetry=False`` runs a separately compiled variant that
computes none of it.

Host side: a chunk is sized to take about ``CHUNK_SECONDS`` at the measured time per step (one
step until measured, one while paused, at most ``CHUNK``), so a slow model still reaches the
viewer a few tokens at a time. Chunk ``c + 1`` is dispatched before chunk ``c``'s results are
fetched, so the host's work on a chunk (unpacking, its callback) overlaps the device
computing the next. Per chunk, one array of tokens, or with telemetry two arrays of
``O(CHUNK * (L * H + capacity))`` numbers, leave the device.

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

from model import attention_kernel
from model.attention import cached_attention, head_stats, pool_max, softmax_stats
from model.kv_cache import KVCache
from model.qwen3_vl import Prompt, Qwen3VL, encode, merge, prepare_prompt, split
from model.sampling import GREEDY, TOP_ALTERNATIVES, SamplingParams, sample, top_alternatives
from model.telemetry import HeadStats, RolloutControl
from model.text import DecoderLayer

MAP_SIZE = 128  # prefill attention map resolution (at most MAP_SIZE x MAP_SIZE)
PROMPT_BUCKET = 32  # prompts are padded to a multiple of this many tokens
CAPACITY_BUCKET = 128  # default cache capacities are multiples of this
CHUNK = 32  # most decode steps per compiled call
CHUNK_SECONDS = 0.05  # a chunk is sized to take about this long: a frame at 20 FPS
SUMMARIZE_LATER_BYTES = 1 << 21  # most bytes of attention rows a chunk buffers


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


def step_forward(
    m: Qwen3VL, layer_weights, cache: KVCache, recent: KVCache, tokens, deltas, selection=None
):
    """One decode step: ``tokens [B]`` (each row's newest token) enter at position
    ``cache.length + recent.length``. ``cache`` holds the tokens before the chunk and is only
    read; this step's keys and values are written to ``recent``, the chunk's own cache.
    ``layer_weights`` are the decoder layers' parameters one layer at a time
    (``unstack_layers``). Returns logits ``[B, V]``, the updated ``recent`` and the
    observations of the watched row (``None`` without a ``selection``): ``"rows"
    [L, H, C + S]``, its attention over the slots of ``cache`` (0 from ``start`` on), then over
    those of ``recent``, which hold positions ``start, start + 1, ...``, and their softmax's
    parts: ``"scores" [L, H, C + S]``, ``"top"`` and ``"lse" [L, H]`` (``softmax_stats``).

    The layers run as an unrolled Python loop over per-layer weights and cache buffers:
    slicing stacked arrays inside a compiled loop would copy them every step.
    """
    start = cache.length
    pos = start + recent.length
    x = m.language_model.embed_tokens(tokens)[:, None]  # [B, 1, D]
    cos, sin = m.cos_sin(jnp.broadcast_to((pos + deltas)[None, :, None], (3, len(deltas), 1)))
    attend = _step_attention(m.config.text, cache, cos, sin, selection is not None)
    rows, softmax = [], []
    for index, layer in enumerate(layer_modules(m, layer_weights)):
        out, probs, parts, recent = attend(layer, x, index, recent)
        if selection is not None:
            rows.append(probs[selection[0], :, 0])  # [H, C + S]
            softmax.append([part[selection[0], :, 0] for part in parts])  # scores, top, lse
        x = layer.finish(x, out)
    recent = dataclasses.replace(recent, length=recent.length + 1)
    obs = None
    if selection is not None:
        parts = [jnp.stack(part) for part in zip(*softmax, strict=True)]
        obs = {"rows": jnp.stack(rows), **dict(zip(("scores", "top", "lse"), parts, strict=True))}
    return m.head(m.language_model.norm(x[:, 0])), recent, obs


def runs_attention_kernel(cfg, capacity: int) -> bool:
    """Whether a decode step with a ``capacity``-slot cache runs ``model.attention_kernel``:
    on a GPU, where its shapes allow (the chunk's own cache has ``min(CHUNK, capacity)``)."""
    recent = min(CHUNK, capacity)
    return jax.default_backend() == "gpu" and attention_kernel.supported(cfg, capacity, recent)


def _step_attention(cfg, cache: KVCache, cos, sin, with_parts: bool):
    """``attend(layer, x, index, recent) -> (out, probs, parts, recent)``: decoder ``layer``
    (number ``index``) of a decode step from its input ``x [B, 1, D]`` to the input of its
    output projection: ``layer.qkv`` (rotated by ``cos, sin [B, 1, hd]``), the step's key
    and value written to ``recent``, and the attention of its queries over ``cache``'s slots
    before the chunk and ``recent``'s up to the step's own (``cached_attention``'s results;
    ``probs`` and ``parts`` are ``None`` without ``with_parts`` where that saves work). On a
    GPU, where the shapes allow, all but the projections run as one Triton kernel
    (``model.attention_kernel``), which XLA's version costs a GPU sixteen launches."""
    start = cache.length
    if runs_attention_kernel(cfg, cache.capacity):

        def attend_in_kernel(layer, x, index, recent):
            attn = layer.self_attn
            q, k, v = (p[:, 0] for p in attn.projections(layer.input_layernorm(x)))
            out, probs, parts, (k_slots, v_slots) = attention_kernel.decode_attention(
                q, k, v, (attn.q_norm.weight[...], attn.k_norm.weight[...]), cos[:, 0],
                sin[:, 0], (cache.k[index], cache.v[index]), (recent.k[index], recent.v[index]),
                start, recent.length, eps=attn.q_norm.eps, parts=with_parts,
            )  # fmt: skip
            return out, probs, parts, recent.with_layer(index, k_slots, v_slots)

        return attend_in_kernel
    before = jnp.arange(cache.capacity) < start  # [C]

    def attend(layer, x, index, recent):
        q, k, v = layer.qkv(x, cos, sin)
        recent = recent.write_token(index, k, v)
        so_far = jnp.arange(recent.capacity) <= recent.length  # [S]
        out, probs, parts = cached_attention(
            q,
            ((cache.k[index], cache.v[index], before), (recent.k[index], recent.v[index], so_far)),
        )
        return out, probs, parts, recent

    return attend


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


def _step_summaries(obs, vision, selection) -> dict[str, jax.Array]:
    """One step's ``HeadStats`` fields ``[L, H]`` and the selected head's ``"row"`` ``[Tk]``
    from its observations (``rows`` may carry a leading steps axis, then so do the
    results); ``vision [Tk]``. Decode steps have their softmax's parts (``softmax_stats``:
    no logarithm per key), the prefill only the weights (``head_stats``)."""
    rows = obs["rows"]
    if "scores" in obs:
        stats = softmax_stats(rows, (obs["scores"], obs["top"], obs["lse"]), vision)
    else:
        stats = head_stats(rows, vision)
    _, layer, head = selection
    return stats | {"row": rows[..., layer, head, :]}


def _telemetry(summaries, start, tokens, logp, selection, cache_len, position, capacity):
    """The watched row's telemetry of ``n`` steps packed into ``(floats [n, F], ints [n, I])``,
    two arrays, because each array fetched costs the host a fixed overhead (``_chunk_telemetry``
    gives the layout). Per step: ``summaries`` (``_step_summaries``, ``[n, ...]``),
    ``tokens [n, B]``, the watched row's log-probabilities ``logp [n, V]``, ``cache_len [n]``
    and the query's ``position [n, 3]``. A row has ``capacity`` slots, or for decode steps
    ``capacity`` slots of the main cache and then the chunk's own, which hold positions
    ``start, start + 1, ...``."""
    row, argmax = summaries["row"], summaries["argmax"]
    n = row.shape[0]
    if row.shape[1] > capacity:  # slot c + j holds position start + j (main slots weigh 0)
        argmax = jnp.where(argmax < capacity, argmax, start + argmax - capacity)
        row = jax.lax.dynamic_update_slice(row, row[:, capacity:], (0, start))[:, :capacity]
    token = jax.lax.dynamic_slice_in_dim(tokens, selection[0], 1, axis=1)  # [n, 1]
    prob = jnp.exp(jnp.take_along_axis(logp, token, axis=1, mode="clip"))
    top_ids, top_probs = top_alternatives(logp)
    floats = [summaries[k].reshape(n, -1) for k in HeadStats.METRICS] + [row, prob, top_probs]
    ints = [argmax.reshape(n, -1), tokens, top_ids, cache_len[:, None], position]
    return jnp.concatenate(floats, 1), jnp.concatenate([i.astype(jnp.int32) for i in ints], 1)


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
    sample_, _, _ = selection
    position = jax.lax.dynamic_index_in_dim(positions[:, sample_], length - 1, 1, False)
    summaries = _step_summaries({"rows": obs["rows"][None]}, vision[sample_], selection)
    tel = _telemetry(
        summaries, 0, tokens[None], logp[sample_][None], selection, length[None],
        position[None], vision.shape[1],
    )  # fmt: skip
    return cache, tokens, (*tel, obs["map"])


def _summarize_later(cfg, capacity: int) -> bool:
    """Whether a decode chunk stores its steps' attention rows and summarises them once
    after its loop (``_decode``): when all of them fit in ``SUMMARIZE_LATER_BYTES``. Longer
    rows are summarised inside each step while still in the CPU's caches."""
    keys = capacity + min(CHUNK, capacity)
    per_step = 2 * 4 * cfg.num_hidden_layers * cfg.num_attention_heads * keys  # weights, scores
    return min(CHUNK, capacity) * per_step <= SUMMARIZE_LATER_BYTES


def _step_buffers(cfg, capacity: int, telemetry: bool) -> dict[str, jax.Array]:
    """What each decode step of a chunk stores for the telemetry (``_decode``), ``[n, ...]``,
    ``n = min(CHUNK, capacity)``: the log-probabilities of the watched row ``[n, V]`` and
    either its attention weights and scores ``[n, L, H, C + n]`` with their maximum and
    log-sum-exp ``[n, L, H]`` (``_summarize_later``) or its summaries (``_step_summaries``).
    Made once per ``generate`` and handed from chunk to chunk: clearing them would cost each
    chunk as much as its steps' writes."""
    if not telemetry:
        return {}
    n = min(CHUNK, capacity)
    heads = (n, cfg.num_hidden_layers, cfg.num_attention_heads)
    keys = capacity + n
    later = _summarize_later(cfg, capacity)
    if later:
        shapes = {"rows": (*heads, keys), "scores": (*heads, keys), "top": heads, "lse": heads}
    else:
        shapes = dict.fromkeys(HeadStats.METRICS, heads) | {"row": (n, keys)}
    buffers = {name: jnp.zeros(shape, jnp.float32) for name, shape in shapes.items()}
    if not later:
        buffers["argmax"] = jnp.zeros(heads, jnp.int32)
    return buffers | {"logp": jnp.zeros((n, cfg.vocab_size), jnp.float32)}


@functools.partial(
    jax.jit, static_argnums=0, static_argnames="telemetry", donate_argnames=("cache", "stored")
)
def _decode(
    graph, weights, layer_weights, cache, stored, tokens, finished, deltas, eos, key, start,
    count, params, selection, *, telemetry,
):  # fmt: skip
    """Decode steps ``start, start + 1, ...``: ``count`` of them (``1 <= count <= CHUNK``,
    at most the cache's free slots), fewer once every row has finished (sampled one of
    ``eos [E]``; ``finished [B]`` on entry). Returns the cache, ``stored``, the newest
    ``tokens [B]``, ``finished [B]`` and the chunk's results stacked per step, tokens of steps
    not run -1: ``tokens [n, B]`` or, with telemetry, ``(floats [n, F], ints [n, I])``
    (``_telemetry``), ``n = min(CHUNK, capacity)``.

    With telemetry each step writes its part of ``stored`` (``_step_buffers``): its attention
    rows, to be summarised after the loop for all steps at once (``_summarize_later``: every
    operation inside the loop costs a fixed time per step), or its summaries. The top
    alternatives and the packing are done after the loop, over the first 1, 2, 4, ... or
    ``n`` steps, the fewest that hold the steps run."""
    m = merge(graph, weights)
    text = m.config.text
    batch = tokens.shape[0]
    n = min(CHUNK, cache.capacity)
    recent = KVCache.create(text, batch, n, cache.k[0].dtype)
    sample_, _, _ = selection
    vision = jnp.pad(cache.vision[sample_], (0, n))  # the chunk's own tokens are text
    later = _summarize_later(text, cache.capacity)
    stored = {**stored, "tokens": jnp.full((n, batch), -1, jnp.int32)}

    def step(carry):
        recent, tokens, finished, stored = carry
        i = recent.length
        sel = selection if telemetry else None
        logits, recent, obs = step_forward(m, layer_weights, cache, recent, tokens, deltas, sel)
        tokens, logp = sample(jax.random.fold_in(key, start + i), logits, params)
        finished = finished | (tokens[:, None] == eos).any(-1)
        now = {"tokens": tokens}
        if telemetry:  # the observations themselves, or their summaries
            now |= obs if later else _step_summaries(obs, vision, selection)
            now["logp"] = logp[sample_]
        stored = {k: stored[k].at[i].set(x) for k, x in now.items()}
        return recent, tokens, finished, stored

    def running(carry):
        recent, _, finished, _ = carry
        return (recent.length < count) & ~finished.all()

    carry = (recent, tokens, finished, stored)
    recent, tokens, finished, stored = jax.lax.while_loop(running, step, carry)
    results = (stored.pop("tokens"),)
    if telemetry:

        def pack(k: int):  # the first k steps' results, padded to n steps
            first = {name: x[:k] for name, x in stored.items()}
            if later:  # first holds the steps' observations
                first |= _step_summaries(first, vision, selection)
            pos = cache.length + jnp.arange(k)  # each step's query position
            position = jnp.broadcast_to((pos + deltas[sample_])[:, None], (k, 3))
            floats, ints = _telemetry(
                first, cache.length, results[0][:k], first["logp"], selection, pos + 1,
                position, cache.capacity,
            )  # fmt: skip
            pad = ((0, n - k), (0, 0))
            return jnp.pad(floats, pad), jnp.pad(ints, pad, constant_values=-1)

        sizes = [k for k in (1 << j for j in range(n.bit_length())) if k < n] + [n]
        bucket = (jnp.asarray(sizes) < recent.length).sum()  # the first size >= steps run
        results = jax.lax.switch(bucket, [functools.partial(pack, k) for k in sizes])
    return cache.append(recent), stored, tokens, finished, results


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
class ChunkTelemetry:
    """``n`` consecutive generated tokens of the watched row, steps ``first, first + 1, ...``,
    and the attention that produced each, stacked per token (host views, one set per chunk).

    Step 0's token comes from the prefill (its query is the last prompt token); step ``s``'s
    from decode step ``s``, whose query is the token of step ``s - 1``.
    """

    first: int  # step of the first token
    sample: int
    layer: int
    head: int
    token_ids: np.ndarray  # [n] int32, the watched row's tokens
    probs: np.ndarray  # [n] float32, under the sampling distribution (model.sampling)
    top_ids: np.ndarray  # [n, 5] int32
    top_probs: np.ndarray  # [n, 5] float32
    cache_lens: np.ndarray  # [n] int32, tokens in the cache after each step's write
    positions: np.ndarray  # [n, 3] int32, mRoPE (t, h, w) of each query
    stats: HeadStats  # fields [n, L, H]
    attn_rows: np.ndarray  # [n, C] float32, the selected (layer, head); row j over cache_lens[j]
    elapsed_ms: float  # wall time per step: the chunk's wall time / its steps
    tokens: np.ndarray  # [n, B] int32, every row's token
    finished: np.ndarray  # [n, B] bool, the row had stopped before the step (token discarded)


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


def _chunk_telemetry(
    floats: np.ndarray, ints: np.ndarray, shape, first: int, sel, finished, elapsed_ms: float
) -> ChunkTelemetry:
    """Host views of the packed telemetry of the first ``len(finished)`` steps of a chunk,
    ``floats [n, F]`` and ``ints [n, I]`` (``_telemetry`` gives the layout); ``shape`` is
    ``(L, H, B)``, ``sel`` the selection ``[sample, layer, head]``, ``finished [n, B]``."""
    layers, heads, batch = shape
    n, lh, k = len(finished), layers * heads, TOP_ALTERNATIVES
    floats, ints = floats[:n], ints[:n]
    metrics = floats[:, : 4 * lh].reshape(n, 4, layers, heads)
    stats = HeadStats(
        *(metrics[:, i] for i in range(4)), argmax=ints[:, :lh].reshape(n, layers, heads)
    )
    tokens = _tokens(ints, shape)
    sample, layer, head = sel
    return ChunkTelemetry(
        first=first, sample=sample, layer=layer, head=head, token_ids=tokens[:, sample],
        probs=floats[:, -1 - k], top_ids=ints[:, lh + batch : lh + batch + k],
        top_probs=floats[:, -k:], cache_lens=ints[:, lh + batch + k],
        positions=ints[:, lh + batch + k + 1 :], stats=stats, attn_rows=floats[:, 4 * lh : -1 - k],
        elapsed_ms=elapsed_ms, tokens=tokens, finished=finished,
    )  # fmt: skip


def _tokens(ints: np.ndarray, shape) -> np.ndarray:
    """Every row's token per step, ``[n, B]``, of packed ``ints [n, I]`` (``_telemetry``)."""
    layers, heads, batch = shape
    return ints[:, layers * heads : layers * heads + batch]


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
    on_chunk: Callable[[ChunkTelemetry], None] | None = None,
) -> Generation:
    """Generate up to ``max_new_tokens`` tokens for every row of ``input_ids [B, T]``.

    Images as in ``Qwen3VL.logits``. Each prompt row is decoded ``num_samples`` times (a GRPO
    group), its vision tower run once; rows are ordered prompt-major. A row stops at any of
    ``eos_token_ids`` (kept in its output); generation ends when every row stopped.
    ``capacity`` (cache slots per row) defaults to the prompt plus ``max_new_tokens``,
    rounded up to a multiple of ``CAPACITY_BUCKET``.

    With ``telemetry`` on, ``on_prefill`` and ``on_chunk`` receive host-side telemetry of the
    watched row: ``PrefillTelemetry`` once, then a ``ChunkTelemetry`` of the prefill's token
    and one of each chunk's tokens, in order.
    ``control`` (optional) is read for the watched ``selection = (sample, layer, head)``
    before the prefill and before every chunk of decode steps, and ``control.gate()`` is
    called before every chunk: it blocks while paused and stops generation once it returns
    False. While paused, every chunk is one step (a single step granted by
    ``control.step_once()`` decodes one token), and the last computed chunk is delivered
    before waiting, so the caller sees every step the device has run.
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
    stored = _step_buffers(text, capacity, telemetry)
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

    def record(first: int, new: np.ndarray) -> np.ndarray:
        """Store the tokens ``new [n, B]`` of steps ``first, first + 1, ...``; returns which
        rows had stopped before each of those steps, ``[n, B]``."""
        ended = finished | np.logical_or.accumulate(np.isin(new, eos), axis=0)
        before = np.concatenate([finished[None], ended[:-1]])
        np.copyto(out[:, first : first + len(new)], new.T, where=~before.T)
        lengths[:] += (~before).sum(0, dtype=np.int32)
        finished[:] = ended[-1]
        return before

    before = record(0, host_tokens[None])
    if telemetry:
        sel = sel.tolist()
        chunk = _chunk_telemetry(tel[0], tel[1], shape, 0, sel, before, elapsed_ms)
        s, r = sel[0], min(length, MAP_SIZE)
        if on_prefill:
            on_prefill(
                PrefillTelemetry(
                    sample=s, layer=sel[1], head=sel[2], stats=chunk.stats.steps()[0],
                    attn_map=tel[2][:r, :r], positions=prompt.positions[:, s, :length],
                    prompt_length=length, cache_capacity=capacity, vision_norm=float(norms[0]),
                    text_norm=float(norms[1]), elapsed_ms=elapsed_ms,
                )
            )  # fmt: skip
        if on_chunk:
            on_chunk(chunk)

    decode_start = last = now
    step_seconds = None  # measured wall time per decode step
    steps = 0
    pending = None  # (first step, selection, device results) dispatched, not yet fetched

    def flush():
        nonlocal last, pending, step_seconds, steps
        first, sel, results = pending
        pending = None
        results = [np.asarray(a) for a in results]
        now = time.perf_counter()
        new = _tokens(results[1], shape) if telemetry else results[0]
        n = int(np.count_nonzero(new[:, 0] >= 0))
        if n == 0:
            return  # dispatched before the last row's EOS was seen: nothing ran
        step_seconds, last = (now - last) / n, now
        steps += n
        before = record(first, new[:n])
        if on_chunk and telemetry:
            ms = step_seconds * 1e3
            on_chunk(_chunk_telemetry(*results, shape, first, sel.tolist(), before, ms))

    done = finished.copy()
    step = 1
    while step < max_new_tokens and not finished.all():
        if control is not None:
            if control.paused and pending:
                flush()
            if not control.gate():
                break
        if (control is not None and control.paused) or step_seconds is None:
            count = 1
        else:
            count = max(int(CHUNK_SECONDS / step_seconds), 1)
        count = min(count, CHUNK, max_new_tokens - step)
        sel = selection()
        cache, stored, tokens, done, results = _decode(
            graph, weights, layer_weights, cache, stored, tokens, done, prompt.deltas, eos, key,
            np.int32(step), np.int32(count), params, sel, telemetry=telemetry,
        )  # fmt: skip
        _to_host_async(results)
        if pending:
            flush()
        pending = (step, sel, results)
        step += count
    if pending:
        flush()
    return Generation(
        tokens=out,
        lengths=lengths,
        prompt_length=length,
        steps=steps,
        decode_seconds=last - decode_start,
    )
