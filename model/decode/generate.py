"""``generate``: a prefill, then the decode in chunks of steps, with the watched row's
telemetry delivered as events (see the package docstring for the flow)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model import compile_clock, distributed, sharding
from model.decode import programs
from model.decode.forward import CHUNK, MAP_SIZE
from model.decode.programs import Stored
from model.decode.schedule import Schedule, Tokens
from model.decode.summaries import empty_store
from model.decode.watch import TokenTexts, Watch
from model.qwen3_vl import Prompt, Qwen3VL, encode, prepare_prompt, split
from model.sampling import GREEDY, SamplingParams
from model.telemetry import DecodeChunk, HeadStats, RolloutControl

PROMPT_BUCKET = 32  # prompts are padded to a multiple of this many tokens
CAPACITY_BUCKET = 128  # default cache capacities are multiples of this


@dataclasses.dataclass(frozen=True)
class PrefillTelemetry:
    """The watched row's prompt after prefill (host copies)."""

    sample: int
    layer: int
    head: int
    stats: HeadStats  # attention of the last prompt position, [L, H]
    attn_map: np.ndarray  # [r, r] float32, block-max pooled T x T map of (layer, head)
    positions: np.ndarray  # [3, T] int32 mRoPE (t, h, w) of the prompt tokens
    prompt_length: int
    cache_capacity: int
    vision_norm: float  # mean L2 norm of the merged image tokens (0 without images)
    text_norm: float  # mean L2 norm of the text token embeddings
    elapsed_ms: float  # encode + prefill, wall time less the time spent compiling


@dataclasses.dataclass(frozen=True)
class Generation:
    tokens: np.ndarray  # [B, n] int32 new tokens; after a row's EOS, the pad id
    lengths: np.ndarray  # [B] int32 new tokens of each row (its EOS included; fewer if stopped)
    prompt_length: int
    steps: int  # decode steps run after the prefill
    decode_seconds: float  # time of those steps, compiling and pauses left out


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def default_capacity(prompt_length: int, max_new_tokens: int) -> int:
    """Cache slots per row: prompt plus new tokens, rounded up to ``CAPACITY_BUCKET``."""
    return _round_up(prompt_length + max_new_tokens, CAPACITY_BUCKET)


def pad_prompt(prompt: Prompt, length: int) -> Prompt:
    """Right-pad ``prompt`` to ``length`` tokens (text padding: causal attention never
    reads it, and decode overwrites its cache slots)."""
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


def _clamp_selection(selection, batch: int, m: Qwen3VL) -> np.ndarray:
    limits = (batch, m.config.text.num_hidden_layers, m.config.text.num_attention_heads)
    clamped = [min(max(int(s), 0), n - 1) for s, n in zip(selection, limits, strict=True)]
    return np.array(clamped, np.int32)


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
    on_chunk: Callable[[DecodeChunk], None] | None = None,
    token_texts: TokenTexts | None = None,
    episode: int = 0,
) -> Generation:
    """Generate up to ``max_new_tokens`` tokens for every row of ``input_ids [B, T]``.

    Args:
        pixel_values, image_grid_thw: images, as in ``Qwen3VL.logits``.
        eos_token_ids: a row stops at any of them (kept in its output); generation ends
            when every row stopped.
        num_samples: answers decoded per prompt row (a GRPO group), its vision tower run
            once; rows are ordered prompt-major.
        capacity: cache slots per row; defaults to the prompt plus ``max_new_tokens``,
            rounded up to a multiple of ``CAPACITY_BUCKET``.
        telemetry: compute the watched row's telemetry: ``on_prefill`` receives its
            ``PrefillTelemetry`` once, ``on_chunk`` a ``DecodeChunk`` of the prefill's token
            and then one of each chunk's tokens, in order, with texts from
            ``token_texts(ids)`` (required with ``on_chunk``) and ``episode``.
        control: read for the watched ``selection = (sample, layer, head)`` before the
            prefill and every chunk; ``control.gate()`` runs before every chunk: it blocks
            while paused (every chunk is then one step) and stops generation once it
            returns False (``model.decode.schedule``).
    Returns:
        the ``Generation``.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    if on_chunk is not None and token_texts is None:
        raise ValueError("on_chunk needs token_texts")
    prompt = prepare_prompt(m.config, input_ids, pixel_values, image_grid_thw)
    rows, length = prompt.input_ids.shape
    batch = rows * num_samples
    needed = length + max_new_tokens - 1  # the last new token is never written
    capacity = capacity or default_capacity(length, max_new_tokens)
    if capacity < needed:
        raise ValueError(f"capacity {capacity} < prompt {length} + new tokens - 1 = {needed}")
    padded = _round_up(length, PROMPT_BUCKET)
    prompt = pad_prompt(prompt, padded if padded <= capacity else length)
    eos = np.asarray(list(eos_token_ids), np.int32)
    text = m.config.text
    params = sampling.arrays()
    key = jax.random.key(seed)
    layout = programs.layout(m, batch, capacity)
    watch = Watch(layout, token_texts, frozenset(eos.tolist()), max_new_tokens, episode)
    tokens_kept = Tokens(batch, max_new_tokens, eos)

    def selection(count: int = 1) -> tuple[int, np.ndarray]:
        """The next chunk's steps and the watched selection, the same on every process."""
        sel = _clamp_selection(control.selection if control else (0, 0, 0), batch, m)
        return distributed.agree(count, sel) if distributed.several() else (count, sel)

    def deliver(first: int, sel: np.ndarray, results: tuple, seconds: float | None) -> int:
        """Keep a chunk's tokens and send its telemetry; returns the steps it ran."""
        columns = layout.unpack(*results[:2]) if telemetry else {"tokens": results[0]}
        new = columns["tokens"]
        n = int(np.count_nonzero(new[:, 0] >= 0))
        if n == 0:
            return 0
        before = tokens_kept.record(first, new[:n])
        if telemetry and on_chunk is not None:
            kept = {name: column[:n] for name, column in columns.items()}
            step_ms = None if seconds is None else 1e3 * seconds / n
            chunk = watch.chunk(kept, before, first, sel, step_ms)
            if chunk is not None:
                on_chunk(chunk)
        return n

    graph, weights = split(m)
    mesh = sharding.mesh_of(weights)  # a model placed on a mesh decodes on it
    sharding.check_batch(batch, mesh)
    prefill = sharding.within(mesh, programs.prefill)
    decode_chunk = sharding.within(mesh, programs.decode_chunk)
    start, compiled = time.perf_counter(), compile_clock.seconds()
    embeds, deepstack, norms = encode(graph, weights, prompt)
    prompt = _repeat_rows(prompt, num_samples)
    if num_samples > 1:
        embeds = jnp.repeat(embeds, num_samples, axis=0)
        deepstack = None if deepstack is None else jnp.repeat(deepstack, num_samples, axis=1)
    cache = sharding.create_cache(text, batch, capacity, m.dtype, mesh)
    _, sel = selection()
    cache, tokens, results = prefill(
        graph,
        weights,
        cache,
        embeds,
        deepstack,
        prompt.positions,
        np.int32(length),
        prompt.image_mask,
        key,
        params,
        sel,
        telemetry=telemetry,
    )
    host_tokens, results, norms = jax.device_get((tokens, results, norms))
    elapsed = time.perf_counter() - start - (compile_clock.seconds() - compiled)
    if telemetry and on_prefill is not None:
        columns = layout.unpack(*results[:2])
        s, r = int(sel[0]), min(length, MAP_SIZE)
        stats = HeadStats(**{f.name: columns[f.name][0] for f in dataclasses.fields(HeadStats)})
        on_prefill(
            PrefillTelemetry(
                sample=s,
                layer=int(sel[1]),
                head=int(sel[2]),
                stats=stats,
                attn_map=results[2][:r, :r],
                positions=prompt.positions[:, s, :length],
                prompt_length=length,
                cache_capacity=capacity,
                vision_norm=float(norms[0]),
                text_norm=float(norms[1]),
                elapsed_ms=1e3 * elapsed,
            )
        )
    deliver(0, sel, results if telemetry else (host_tokens[None],), elapsed)

    n = min(CHUNK, capacity)
    stored = Stored(sharding.zeros((n, batch), jnp.int32, sharding.TELEMETRY["tokens"], mesh))
    if telemetry:
        shards = 1 if mesh is None else mesh.shape[sharding.DATA]
        logp = (n, shards, text.vocab_size)
        logp = sharding.zeros(logp, jnp.float32, sharding.TELEMETRY["logp"], mesh)
        stored = Stored(stored.tokens, logp, empty_store(text, capacity, n, mesh))
    finished = sharding.put(tokens_kept.finished, (None,), mesh)
    schedule = Schedule(tokens_kept, max_new_tokens, control, deliver)
    for count in schedule.chunks():
        count, sel = selection(count)
        cache, stored, tokens, finished, results = decode_chunk(
            graph,
            weights,
            cache,
            stored,
            tokens,
            finished,
            prompt.deltas,
            eos,
            key,
            np.int32(schedule.step),
            np.int32(count),
            params,
            sel,
            telemetry=telemetry,
        )
        schedule.dispatched(count, sel, results)
    return Generation(
        tokens=tokens_kept.out,
        lengths=tokens_kept.lengths,
        prompt_length=length,
        steps=schedule.steps_run,
        decode_seconds=schedule.decode_seconds,
    )
