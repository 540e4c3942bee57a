"""The KV-cache decoder: equal to the full forward, telemetry equal to the full attention
weights, no recompilation when the watched selection, the sampling parameters or the chunk
length change, and the control's pause, single step and stop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import attention_kernel
from model.attention import QUERY_BLOCK
from model.config import Qwen3VLConfig, TextConfig, VisionConfig
from model.decode import CHUNK, MAP_SIZE, PROMPT_BUCKET, default_capacity, generate
from model.decode.forward import prefill_forward, step_forward
from model.decode.generate import pad_prompt
from model.decode.programs import decode_chunk, prefill
from model.decode.summaries import summarize_later
from model.kv_cache import KVCache
from model.qwen3_vl import encode, init_random, merge, prepare_prompt, split
from model.sampling import SamplingParams
from model.telemetry import HeadStats, RolloutControl
from tests.model.pooling import block_max
from tests.model.recording import tokens

CAPACITY = 128


@functools.partial(jax.jit, static_argnums=0)
def _prefill_logits(graph, weights, cache, embeds, deepstack, positions, length, vision):
    logits, k, v, _ = prefill_forward(merge(graph, weights), embeds, deepstack, positions, length)
    return logits, cache.write_prompt(k, v, vision, length)


@functools.partial(jax.jit, static_argnums=0)
def _chunk_logits(graph, weights, cache, tokens, deltas):
    """Teacher-forced decode steps of ``tokens [B, n]`` as one chunk: logits ``[n, B, V]``
    and the cache with the chunk appended."""
    m = merge(graph, weights)
    recent = KVCache.create(m.config.text, tokens.shape[0], tokens.shape[1], m.dtype)
    logits = []
    for i in range(tokens.shape[1]):
        step_logits, recent, _ = step_forward(m, cache, recent, tokens[:, i], deltas)
        logits.append(step_logits)
    return jax.numpy.stack(logits), cache.append(recent)


@functools.partial(jax.jit, static_argnums=0)
def _all_attention(graph, weights, embeds, deepstack, positions):
    """Unfused reference: every layer's attention weights ``[L, B, H, T, T]`` and logits."""
    m = merge(graph, weights)
    cos, sin = m.cos_sin(positions)
    t = embeds.shape[1]
    cfg = m.config.text
    initial = jnp.zeros((cfg.num_hidden_layers, embeds.shape[0], cfg.num_attention_heads, t, t))

    def observe(all_probs, index, start, p):  # one block of queries; padding rows dropped
        rows = start + jnp.arange(p.shape[2])
        return all_probs.at[index, :, :, rows, : p.shape[3]].set(jnp.moveaxis(p, 2, 0), mode="drop")

    h, _, _, probs = m.language_model(embeds, cos, sin, deepstack, observe, initial)
    return probs, m.head(h)


def _inputs(reference, with_image):
    r = reference
    if with_image:
        return r["image_ids"], r["pixel_values"], r["image_grid_thw"]
    return r["text_ids"], None, None


@pytest.mark.parametrize("with_image", [False, True])
def test_cached_decode_equals_full_forward(tiny_model, reference, with_image):
    m = tiny_model
    ids, pixels, grid = _inputs(reference, with_image)
    n = 8
    new = generate(m, ids, pixels, grid, max_new_tokens=n).tokens
    full = m.logits(np.concatenate([ids, new], axis=1), pixels, grid)[0]
    length = ids.shape[1]

    graph, weights = split(m)
    prompt = prepare_prompt(m.config, ids, pixels, grid)
    prompt = pad_prompt(prompt, -(-length // PROMPT_BUCKET) * PROMPT_BUCKET)
    embeds, deepstack, _ = encode(graph, weights, prompt)
    cache = KVCache.create(m.config.text, 1, CAPACITY, m.dtype)
    logits, cache = _prefill_logits(
        graph,
        weights,
        cache,
        embeds,
        deepstack,
        prompt.positions,
        np.int32(length),
        prompt.image_mask,
    )
    np.testing.assert_allclose(np.asarray(logits)[0], full[length - 1], atol=1e-5)
    for i in range(0, n - 1, 3):  # chunks of 3, 3 and 1 steps
        chunk = new[:, i : min(i + 3, n - 1)]
        logits, cache = _chunk_logits(graph, weights, cache, chunk, prompt.deltas)
        np.testing.assert_allclose(
            np.asarray(logits)[:, 0], full[length + i : length + i + chunk.shape[1]], atol=1e-5
        )


def _per_token(chunks):
    """Each token of ``chunks`` (``DecodeChunk``s) as its record's fields: ``step``,
    ``sample``, ``layer``, ``head``, ``token_id``, ``prob``, ``top_ids``, ``top_probs``,
    ``cache_len``, ``position``, ``stats``, ``attn_row``, ...."""
    for c in chunks:
        yield from tokens(c)


def _texts(ids):
    return tuple(f"<{i}>" for i in np.ravel(ids))


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize(
    ("with_image", "capacity", "later"),
    [(False, None, True), (True, None, True), (True, 768, False)],
)
def test_telemetry_equals_full_attention_weights(
    tiny_model, reference, with_image, capacity, later
):
    """Two sampled rows; the watched (sample, layer, head) moves at every step. Short caches
    summarise a chunk's attention rows after its loop, long ones inside each step."""
    m = tiny_model
    cfg = m.config.text
    ids, pixels, grid = _inputs(reference, with_image)
    length, n, temperature = ids.shape[1], 10, 0.8
    capacity = capacity or default_capacity(length, n)
    assert summarize_later(cfg, capacity, min(CHUNK, capacity)) == later
    control = RolloutControl(layer=1, head=2, sample=1)
    prefills, chunks = [], []

    def on_chunk(c):
        chunks.append(c)
        s = len(chunks)
        control.select(s % 2, s % cfg.num_hidden_layers, (3 * s) % cfg.num_attention_heads)

    gen = generate(
        m,
        ids,
        pixels,
        grid,
        max_new_tokens=n,
        num_samples=2,
        seed=5,
        sampling=SamplingParams(temperature=temperature),
        control=control,
        on_prefill=prefills.append,
        on_chunk=on_chunk,
        token_texts=_texts,
        capacity=capacity,
    )
    steps = list(_per_token(chunks))
    assert [t.step for t in steps] == list(range(n))
    assert len(chunks) >= 3  # the prefill's token, a first decode step, then longer chunks
    assert not (gen.tokens[0] == gen.tokens[1]).all()  # the rows sampled differently

    full_ids = np.concatenate([np.repeat(ids, 2, 0), gen.tokens], axis=1)
    full_grid = None if grid is None else np.concatenate([grid, grid])
    full_pixels = None if pixels is None else np.concatenate([pixels, pixels])
    prompt = prepare_prompt(m.config, full_ids, full_pixels, full_grid)
    graph, weights = split(m)
    embeds, deepstack, _ = encode(graph, weights, prompt)
    probs, logits = map(
        np.asarray, _all_attention(graph, weights, embeds, deepstack, prompt.positions)
    )
    vision = prompt.image_mask

    for t in steps:
        q = length - 1 + t.step  # the query that produced token t.step
        s = t.sample
        rows = probs[:, s, :, q, : q + 1]  # [L, H, q + 1]
        assert t.cache_len == q + 1
        assert t.token_id == gen.tokens[s, t.step]
        np.testing.assert_allclose(t.stats.max_weight, rows.max(-1), atol=1e-5)
        logs = np.log(np.where(rows > 0, rows, 1.0))
        np.testing.assert_allclose(t.stats.entropy, -(rows * logs).sum(-1), atol=1e-4)
        np.testing.assert_allclose(
            t.stats.vision_mass, (rows * vision[s, : q + 1]).sum(-1), atol=1e-5
        )
        np.testing.assert_allclose(t.stats.sink_mass, rows[..., 0], atol=1e-5)
        np.testing.assert_array_equal(t.stats.argmax, rows.argmax(-1))
        np.testing.assert_allclose(t.attn_row, rows[t.layer, t.head], atol=1e-5)
        np.testing.assert_array_equal(t.position, prompt.positions[:, s, q])
        dist = _softmax(logits[s, q] / temperature)
        np.testing.assert_allclose(t.prob, dist[t.token_id], rtol=1e-4)
        np.testing.assert_array_equal(t.top_ids, np.argsort(-dist)[:5])
        np.testing.assert_allclose(t.top_probs, np.sort(dist)[::-1][:5], rtol=1e-4)
    assert {(t.sample, t.layer, t.head) for t in steps} != {(1, 1, 2)}  # the selection moved

    (p,) = prefills
    assert (p.sample, p.layer, p.head) == (1, 1, 2)
    np.testing.assert_array_equal(p.positions, prompt.positions[:, 1, :length])
    grid_map = probs[1, 1, 2, :length, :length]
    r = min(length, MAP_SIZE)
    np.testing.assert_allclose(p.attn_map, block_max(grid_map, MAP_SIZE)[:r, :r], atol=1e-6)
    np.testing.assert_allclose(
        p.stats.max_weight, probs[:, 1, :, length - 1, :length].max(-1), atol=1e-5
    )
    assert (p.vision_norm > 0) == with_image and p.text_norm > 0


def test_prefill_map_is_pooled_to_map_size(tiny_model):
    """A prompt of several blocks of queries (and a padded last block): the map pooled block
    by block and the last query's rows equal those of the whole attention map."""
    length = 150  # padded to 160 = 3 blocks of 54 queries, the last with 2 padding rows
    assert length > 2 * QUERY_BLOCK and length % PROMPT_BUCKET
    ids = np.arange(1, length + 1, dtype=np.int64)[None] % 90
    got = []
    control = RolloutControl(layer=2, head=1)
    generate(tiny_model, ids, max_new_tokens=1, on_prefill=got.append, control=control)
    (p,) = got
    assert p.attn_map.shape == (MAP_SIZE, MAP_SIZE)
    # every row of a causal map has its weights somewhere: no empty bins
    assert (p.attn_map.max(1) > 0).all()

    graph, weights = split(tiny_model)
    prompt = prepare_prompt(tiny_model.config, ids)
    embeds, _, _ = encode(graph, weights, prompt)
    probs, _ = _all_attention(graph, weights, embeds, None, prompt.positions)
    probs = np.asarray(probs)[:, 0]  # [L, H, T, T]
    np.testing.assert_allclose(p.attn_map, block_max(probs[2, 1], MAP_SIZE), atol=1e-6)
    np.testing.assert_allclose(p.stats.max_weight, probs[:, :, -1].max(-1), atol=1e-6)
    np.testing.assert_array_equal(p.stats.argmax, probs[:, :, -1].argmax(-1))


def test_moving_selection_or_sampling_never_recompiles(tiny_model, reference):
    ids = reference["text_ids"]
    generate(tiny_model, ids, max_new_tokens=4, num_samples=2)  # compile this shape
    compiled = decode_chunk._cache_size(), prefill._cache_size()
    control = RolloutControl()
    for i, sampling in enumerate([SamplingParams(), SamplingParams(1.0, 3, 0.5)]):
        control.select(i, 2 - i, 3 - i)
        generate(
            tiny_model,
            ids,
            max_new_tokens=6,
            num_samples=2,
            sampling=sampling,
            seed=i,
            control=control,
            token_texts=_texts,
            on_chunk=lambda c: control.select(*(c.first % k for k in (2, 3, 4))),
        )
    assert (decode_chunk._cache_size(), prefill._cache_size()) == compiled


def test_eos_stops_a_row_and_pads_it(tiny_model, reference):
    ids = reference["text_ids"]
    greedy = generate(tiny_model, ids, max_new_tokens=8).tokens[0]
    eos = int(greedy[2])
    first = int(np.argmax(greedy == eos))
    gen = generate(tiny_model, ids, max_new_tokens=8, eos_token_ids=[eos])
    assert gen.lengths[0] == first + 1
    np.testing.assert_array_equal(gen.tokens[0, : first + 1], greedy[: first + 1])
    assert (gen.tokens[0, first + 1 :] == eos).all()
    assert gen.steps == first  # the device stopped at the EOS


def test_stop_request_ends_generation(tiny_model, reference):
    control = RolloutControl()
    seen = []

    def on_chunk(c):
        steps = range(c.first, c.first + len(c.token_ids))
        seen.extend(steps)
        if 2 in steps:
            control.stop()

    n = 3 * CHUNK
    generate(
        tiny_model,
        reference["text_ids"],
        max_new_tokens=n,
        control=control,
        on_chunk=on_chunk,
        token_texts=_texts,
    )
    # the chunk already dispatched when step 2 arrived is the last one
    assert seen[-1] <= 2 + CHUNK and seen == list(range(len(seen)))


def test_paused_decode_runs_one_step_per_grant(tiny_model, reference):
    """While paused every granted step decodes exactly one token, with the selection made
    before the grant; the result is the one of an unpaused run."""
    layers = tiny_model.config.text.num_hidden_layers
    control = RolloutControl()
    control.set_paused(True)
    control.step_once()
    seen = []

    def on_chunk(c):
        (token,) = _per_token([c])  # one step per chunk
        seen.append((token.step, token.layer, token.head))
        control.select(0, (token.step + 1) % layers, (token.step + 1) % 2)
        control.step_once()

    ids = reference["text_ids"]
    gen = generate(
        tiny_model, ids, max_new_tokens=6, control=control, on_chunk=on_chunk, token_texts=_texts
    )
    assert seen == [(s, s % layers, s % 2) for s in range(6)]
    np.testing.assert_array_equal(gen.tokens, generate(tiny_model, ids, max_new_tokens=6).tokens)


def test_tokens_do_not_depend_on_capacity(tiny_model, reference):
    """A cache with no room to spare (the last chunks are appended where they fit) decodes
    the same tokens as a roomy one, in several chunks."""
    ids = reference["text_ids"]
    n = 2 * CHUNK
    tight = generate(tiny_model, ids, max_new_tokens=n, capacity=ids.shape[1] + n - 1)
    roomy = generate(tiny_model, ids, max_new_tokens=n, capacity=4 * CHUNK + 128)
    np.testing.assert_array_equal(tight.tokens, roomy.tokens)


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny_model, reference):
    ids = reference["text_ids"]
    greedy = generate(tiny_model, ids, max_new_tokens=8).tokens
    hot = SamplingParams(temperature=1.5)
    a = generate(tiny_model, ids, max_new_tokens=8, sampling=hot, seed=1).tokens
    b = generate(tiny_model, ids, max_new_tokens=8, sampling=hot, seed=1).tokens
    c = generate(tiny_model, ids, max_new_tokens=8, sampling=hot, seed=2).tokens
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    top1 = generate(tiny_model, ids, max_new_tokens=8, sampling=SamplingParams(1.5, 1), seed=1)
    np.testing.assert_array_equal(top1.tokens, greedy)
    nucleus = generate(tiny_model, ids, max_new_tokens=8, sampling=SamplingParams(1.5, 0, 1e-6))
    np.testing.assert_array_equal(nucleus.tokens, greedy)


def test_capacity_too_small_is_an_error(tiny_model, reference):
    with pytest.raises(ValueError, match="capacity"):
        generate(tiny_model, reference["text_ids"], max_new_tokens=8, capacity=10)


def test_attention_kernel_decodes_as_xla_does(monkeypatch):
    """On a GPU the decode step attends with ``model.attention_kernel``'s Triton kernel: run
    here in Pallas' interpreter, it generates the same tokens and telemetry as XLA's
    operations, over main-cache blocks partly and wholly filled."""
    text = TextConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=32,
        mrope_section=(8, 4, 4),
    )
    vision = VisionConfig(
        depth=1,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=64,
        deepstack_visual_indexes=(),
    )
    m = init_random(Qwen3VLConfig(text=text, vision=vision), seed=1)
    ids = np.arange(3, 40)[None]

    def run():
        chunks = []
        control = RolloutControl(layer=1, head=6)
        gen = generate(
            m,
            ids,
            max_new_tokens=60,
            capacity=128,
            control=control,
            on_chunk=chunks.append,
            token_texts=_texts,
        )
        return gen.tokens, list(_per_token(chunks))

    tokens, steps = run()
    calls, kernel = [], attention_kernel.decode_attention

    def interpreted(*args, **kwargs):
        calls.append(kwargs["parts"])
        return kernel(*args, **kwargs, interpret=True)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attention_kernel, "decode_attention", interpreted)
    decode_chunk.clear_cache()
    try:
        kernel_tokens, kernel_steps = run()
    finally:
        decode_chunk.clear_cache()
    assert calls and all(calls)  # one per layer as the decode compiled, with telemetry
    np.testing.assert_array_equal(kernel_tokens, tokens)
    for a, b in zip(kernel_steps, steps, strict=True):
        np.testing.assert_allclose(a.attn_row, b.attn_row, atol=1e-6)
        for name in HeadStats.METRICS:
            np.testing.assert_allclose(getattr(a.stats, name), getattr(b.stats, name), atol=1e-5)
        np.testing.assert_array_equal(a.stats.argmax, b.stats.argmax)
        np.testing.assert_allclose(a.top_probs, b.top_probs, atol=1e-6)
