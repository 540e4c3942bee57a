"""Sharded runs against the single-device run, on 8 simulated CPU devices: run as a
subprocess by ``tests/model/test_sharding.py`` (the rest of the suite keeps one device).

``python -m tests.model.sharded_checks [FILTER]`` prints one JSON line per check (``names``):
its name, its error (``null`` when it passed) and its seconds. For two tiny configurations,
``kv2`` (2 KV heads: fewer than the model axis of 1x8 and 2x4, as many as 4x2's) and ``kv8``
(8 KV heads: as many as 1x8's), on the meshes 1x8, 2x4, 4x2 and 8x1 (data x model), each
check compares with the one-device run:

- ``logits``: the full forward's logits;
- ``cache``: the KV cache after the prefill and two decode chunks, and their tokens and
  packed telemetry (summaries, selected row, prefill map: the same arrays, so the same
  bytes to the host);
- ``generate``: ``generate`` with telemetry, the watched selection moving at every chunk:
  every token's telemetry, the prefill's, and the greedy tokens;
- ``no_recompile``: moving the selection and changing the sampling parameters compile
  nothing new;
- ``grpo``: one GRPO update: loss, gradient norm, the per-token credit, the updated
  parameters;
- ``checkpoint/.../load``: the stored tiny checkpoint loaded onto the mesh, each device
  reading only its slices (or refused, naming the query heads the mesh does not divide).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import sharding
from model.checkpoint import load_config, load_pretrained
from model.config import Qwen3VLConfig, TextConfig, VisionConfig
from model.decode import generate
from model.decode import programs as programs_module
from model.decode.generate import _repeat_rows
from model.decode.programs import Stored
from model.decode.summaries import empty_store
from model.processor import Processor
from model.qwen3_vl import encode, init_random, prepare_prompt, split
from model.rl.train import GRPOSettings, GRPOTrainer
from model.sampling import SamplingParams
from model.telemetry import RolloutControl
from tests.model.conftest import ASSETS, FIXTURES
from tests.model.recording import tokens as token_records

DEVICES = 8
MESHES = ((1, 8), (2, 4), (4, 2), (8, 1))
SAMPLES = 8  # rows decoded together (a GRPO group): every data axis divides them
NEW = 5  # new tokens per generate
CAPACITY = 16  # cache slots per row (a short cache: the decode chunks have 16 steps)
ATOL = 2e-5  # float32 sums in another order


def configs(processor: Processor) -> dict[str, Qwen3VLConfig]:
    vocab = processor.tokenizer.get_vocab()
    ids = {
        "image_token_id": vocab["<|image_pad|>"],
        "video_token_id": vocab["<|video_pad|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
    }
    vision = VisionConfig(
        depth=1,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=32,
        num_position_embeddings=256,
        deepstack_visual_indexes=(0,),
    )

    def text(heads: int, kv_heads: int) -> TextConfig:
        return TextConfig(
            vocab_size=-(-len(vocab) // 8) * 8,  # the tokenizer's ids and a few unused rows
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=8,
            mrope_section=(2, 1, 1),
        )

    return {
        "kv2": Qwen3VLConfig(text(8, 2), vision, **ids),  # KV heads < the model axis
        "kv8": Qwen3VLConfig(text(16, 8), vision, tie_word_embeddings=True, **ids),
    }


def prompt(config: Qwen3VLConfig, seed: int, words: int = 6) -> dict:
    """A prompt of ``words`` text tokens around one 64x64 image (4 image tokens), in the
    processor's format."""
    rng = np.random.default_rng(seed)
    text = rng.integers(10, 300, words)
    image = [config.vision_start_token_id, *[config.image_token_id] * 4, config.vision_end_token_id]
    ids = np.concatenate([text[:2], image, text[2:]]).astype(np.int32)[None]
    v = config.vision
    pixels = rng.standard_normal((16, 3 * v.temporal_patch_size * v.patch_size**2), np.float32)
    return {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": np.array([[1, 4, 4]])}


def texts(ids) -> tuple[str, ...]:
    return tuple(f"<{i}>" for i in np.ravel(ids))


def host(tree):
    return jax.tree.map(np.asarray, tree)


def close(name: str, a, b, atol: float = ATOL) -> None:
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        x, y = np.asarray(x), np.asarray(y)
        where = f"{name}{jax.tree_util.keystr(path)}"
        assert x.shape == y.shape, f"{where}: shape {y.shape} != {x.shape}"
        if x.dtype.kind in "iub":
            np.testing.assert_array_equal(y, x, err_msg=where)
        else:
            np.testing.assert_allclose(y, x, atol=atol, rtol=1e-4, err_msg=where)


def run_logits(m, inputs) -> np.ndarray:
    return m.logits(inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"])


def run_cache(m, inputs) -> dict:
    """The prefill and two decode chunks of ``SAMPLES`` rows, as ``generate`` dispatches
    them: the cache, the tokens and the packed telemetry."""
    graph, weights = split(m)
    mesh = sharding.mesh_of(weights)
    prefill = sharding.within(mesh, programs_module.prefill)
    decode_chunk = sharding.within(mesh, programs_module.decode_chunk)
    ids, pixels, grid = (inputs[k] for k in ("input_ids", "pixel_values", "image_grid_thw"))
    prepared = prepare_prompt(m.config, ids, pixels, grid)
    length = prepared.input_ids.shape[1]
    embeds, deepstack, _ = encode(graph, weights, prepared)
    prepared = _repeat_rows(prepared, SAMPLES)
    embeds, deepstack = jnp.repeat(embeds, SAMPLES, 0), jnp.repeat(deepstack, SAMPLES, 1)
    text = m.config.text
    cache = sharding.create_cache(text, SAMPLES, CAPACITY, m.dtype, mesh)
    key, params = jax.random.key(3), SamplingParams(temperature=0.7).arrays()
    cache, tokens, prefilled = prefill(
        graph, weights, cache, embeds, deepstack, prepared.positions, np.int32(length),
        prepared.image_mask, key, params, np.array([5, 1, 3], np.int32), telemetry=True,
    )  # fmt: skip
    out = {"prefill": host(prefilled), "prefill_tokens": np.asarray(tokens)}
    n, shards = CAPACITY, 1 if mesh is None else mesh.shape[sharding.DATA]
    logp = sharding.zeros(
        (n, shards, text.vocab_size), np.float32, sharding.TELEMETRY["logp"], mesh
    )
    tokens_buffer = sharding.zeros((n, SAMPLES), np.int32, sharding.TELEMETRY["tokens"], mesh)
    stored = Stored(tokens_buffer, logp, empty_store(text, CAPACITY, n, mesh))
    finished = sharding.put(np.zeros(SAMPLES, bool), (None,), mesh)
    eos = np.zeros(0, np.int32)  # as generate without EOS ids
    for i, (start, count, sel) in enumerate([(1, 2, (2, 0, 7)), (3, 3, (6, 1, 4))]):
        cache, stored, tokens, finished, results = decode_chunk(
            graph, weights, cache, stored, tokens, finished, prepared.deltas, eos, key,
            np.int32(start), np.int32(count), params, np.array(sel, np.int32), telemetry=True,
        )  # fmt: skip
        out[f"chunk{i}"] = host(results)
    out["cache"] = host(cache)
    return out


def run_generate(m, inputs) -> dict:
    """Greedy ``generate`` with telemetry, the selection moved at every chunk."""
    control = RolloutControl(layer=1, head=3, sample=6)
    chunks, prefills = [], []

    def on_chunk(c):
        chunks.append(c)
        s = len(chunks)
        control.select((3 * s) % SAMPLES, s % 2, (5 * s) % m.config.text.num_attention_heads)

    gen = generate(
        m, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
        max_new_tokens=NEW, num_samples=SAMPLES, capacity=CAPACITY, control=control,
        on_chunk=on_chunk, on_prefill=prefills.append, token_texts=texts,
    )  # fmt: skip
    fields = ("sample", "layer", "head", "token_id", "prob", "top_ids", "top_probs")
    fields += ("cache_len", "position", "attn_row")
    steps = [r for c in chunks for r in token_records(c)]
    per_token = [{f: getattr(r, f) for f in fields} | {"stats": r.stats.__dict__} for r in steps]
    (p,) = prefills
    prefill = {"stats": dataclasses.asdict(p.stats), "map": p.attn_map, "at": (p.layer, p.head)}
    return {"tokens": gen.tokens, "per_token": per_token, "prefill": prefill}


def run_no_recompile(m, inputs) -> dict:
    """Compiled programs before and after moving the selection and changing sampling."""
    generate(
        m, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
        max_new_tokens=3, num_samples=SAMPLES, capacity=CAPACITY, control=RolloutControl(),
        on_chunk=lambda c: None, token_texts=texts,
    )  # fmt: skip

    def compiled():
        return programs_module.decode_chunk._cache_size(), programs_module.prefill._cache_size()

    before = compiled()
    control = RolloutControl()
    for i, sampling in enumerate([SamplingParams(), SamplingParams(1.0, 3, 0.5)]):
        control.select(i + 2, 1 - i, 3 - i)
        generate(
            m, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
            max_new_tokens=NEW, num_samples=SAMPLES, capacity=CAPACITY, sampling=sampling,
            seed=i, control=control,
            token_texts=texts, on_chunk=lambda c: control.select(*(c.first % k for k in (8, 2, 4))),
        )  # fmt: skip
    return {"before": before, "after": compiled()}


def run_grpo(m, processor, prompts) -> dict:
    """One GRPO update on fixed answers: its metrics and the updated parameters."""
    settings = GRPOSettings(group_size=2, prompts_per_step=len(prompts), updates_per_batch=1)
    trainer = GRPOTrainer(m, processor, settings)
    rng = np.random.default_rng(0)
    groups = []
    for i, inputs in enumerate(prompts):
        answers = rng.integers(10, 300, (2, settings.max_new_tokens), np.int32)
        lengths = np.array([settings.max_new_tokens, 3 + i % 4], np.int32)
        gen = generate_result(answers, lengths, inputs["input_ids"].shape[1])
        groups.append((inputs, gen, np.array([1.0, 0.25 * i], np.float32)))
    metrics, advantages, credit = trainer.update(groups)
    params = host(jax.tree.leaves(trainer.state))
    return {"metrics": metrics, "credit": credit, "params": params}


def generate_result(tokens, lengths, prompt_length):
    from model.decode import Generation

    return Generation(tokens, lengths, prompt_length, int(lengths.max()), 0.0)


def checks(config: str, mesh: tuple[int, int]) -> list[str]:
    """The checks of a configuration on a ``(data, model)`` mesh. The costly ones (no
    recompiling, a GRPO update) run on every mesh with ``kv2``, and with ``kv8`` where its
    KV heads equal the model axis."""
    if config == "checkpoint":
        return ["load"]
    if config == "kv2":
        return ["logits", "cache", "generate", "no_recompile", "grpo"]
    return ["logits", "cache", "generate"] + (["grpo"] if mesh == (1, 8) else [])


def names() -> list[str]:
    """Every check, in the order ``main`` runs them."""
    return [
        f"{config}/{data}x{model}/{check}"
        for config in ("kv2", "kv8", "checkpoint")
        for data, model in MESHES
        for check in checks(config, (data, model))
    ]


@dataclasses.dataclass(frozen=True)
class Case:
    """A configuration's inputs: a prompt for the decode, prompts for a GRPO update."""

    processor: Processor
    inputs: dict
    prompts: list[dict]

    def run(self, check: str, m):
        if check == "logits":
            return run_logits(m, self.inputs)
        if check == "cache":
            return run_cache(m, self.inputs)
        if check == "generate":
            return run_generate(m, self.inputs)
        if check == "grpo":
            return run_grpo(m, self.processor, self.prompts)
        raise ValueError(check)

    def compare(self, check: str, one: dict, sharded) -> None:
        if check == "no_recompile":
            counts = run_no_recompile(sharded, self.inputs)
            assert counts["after"] == counts["before"], f"compiled {counts}"
        else:
            close(check, one[check], self.run(check, sharded))


def check_load(mesh) -> None:
    """The stored tiny checkpoint loaded onto ``mesh``: equal to the one-device load, and
    every device read only its slice of each split tensor; a mesh whose model axis does
    not divide the query heads is refused, naming them."""
    path = FIXTURES / "tiny"
    config = load_config(path)
    try:
        place = sharding.placement(config, mesh)
    except sharding.MeshError as e:
        assert config.text.num_attention_heads % mesh.shape["model"], e
        assert f"does not divide num_attention_heads {config.text.num_attention_heads}" in str(e)
        return
    reads = {}

    def recording(path, shape, dtype, read):
        def counted(index):
            value = read(index)
            reads.setdefault(path, set()).add(value.shape)
            return value

        return place(path, shape, dtype, counted)

    loaded = load_pretrained(path, place=recording)
    one = load_pretrained(path)
    for (key, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(one)), nnx.to_flat_state(nnx.state(loaded)), strict=True
    ):
        value = b.get_value()
        np.testing.assert_array_equal(
            np.asarray(value), np.asarray(a.get_value()), err_msg=str(key)
        )
        shard = value.sharding.shard_shape(value.shape)
        assert value.sharding == sharding.parameter_sharding(key, value.shape, config, mesh)
        assert reads[key] == {shard}, f"{key}: read {reads[key]}, its shards are {shard}"


def main(only: str = "") -> int:
    jax.config.update("jax_num_cpu_devices", DEVICES)  # before JAX starts its backends
    processor = Processor.from_pretrained(ASSETS)
    failed = 0

    def report(name: str, run) -> None:
        nonlocal failed
        start = time.perf_counter()
        try:
            run()
            error = None
        except Exception as e:  # noqa: BLE001 - every check reports, then the next runs
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
            failed += 1
        seconds = round(time.perf_counter() - start, 2)
        print(json.dumps({"check": name, "error": error, "seconds": seconds}), flush=True)

    for data, model in MESHES:
        name = f"checkpoint/{data}x{model}/load"
        if only in name:
            report(name, functools.partial(check_load, sharding.make_mesh(data, model)))
    for config_name, config in configs(processor).items():
        todo = [n for n in names() if n.startswith(config_name) and only in n]
        if not todo:
            continue
        m = init_random(config, seed=1)
        prompts = [prompt(config, i, words=4 + i % 3) for i in range(1, 5)]
        case = Case(processor, prompt(config, 0), prompts)
        every = {c for mesh in MESHES for c in checks(config_name, mesh)} - {"no_recompile"}
        one = {c: case.run(c, m) for c in sorted(every)}
        for data, model in MESHES:
            sharded = sharding.shard_model(m, sharding.make_mesh(data, model))
            for check in checks(config_name, (data, model)):
                name = f"{config_name}/{data}x{model}/{check}"
                if name in todo:
                    report(name, functools.partial(case.compare, check, one, sharded))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
