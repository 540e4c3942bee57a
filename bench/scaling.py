"""What each mesh axis costs a decode step at Qwen3-VL-8B and 32B shapes, on paper.

For each model and ``data x model`` mesh of 8 devices (and one device for reference):

- the collectives XLA's partitioner puts into one decode step: the loop body of
  ``model.decode.programs.decode_chunk`` with telemetry, compiled for a simulated mesh of CPU
  devices from shapes alone (no weights are made), counted by kind with their sizes; and those
  of the chunk around the loop (the telemetry's summaries and row, gathered once per chunk);
- per device: the weights (exact, from the partitioning table), the KV cache, and the bytes a
  decode step reads (its share of the text weights and of the cache);
- the projection on 8 x H100: the memory-bandwidth floor of ``bench.gpu`` (bytes read per
  step / the copy bandwidth it measured on an H100, ``COPY_GB_S``), plus an assumed
  ``COLLECTIVE_US`` per collective (small all-reduces over NVSwitch are bound by latency, not
  bandwidth; not measured here).

The batch is a GRPO group of ``BATCH`` rows over ``data`` with ``CAPACITY`` cache slots each,
bf16 weights and cache. Figures go to stdout and ``$OUT/scaling.json``.

    python -m bench.scaling            # about 10 minutes on a 2-core CPU (8 compiles)
    python -m bench.scaling --quick    # 8B on 2x4 only
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import time

import jax

DEVICES = 8
MESHES = ((1, 8), (2, 4), (4, 2), (8, 1))
BATCH, CAPACITY = 8, 1024
COPY_GB_S = 2745  # H100 device-to-device copy bandwidth measured by bench.gpu (RESULTS.md)
COLLECTIVE_US = 15  # assumed time of one small NCCL collective on 8 x H100 (NVSwitch)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def configs():
    from model.config import Qwen3VLConfig, TextConfig, VisionConfig

    def vision(out: int) -> VisionConfig:
        return VisionConfig(
            depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=out
        )

    def text(hidden, layers, heads, intermediate) -> TextConfig:
        return TextConfig(
            vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8,
            head_dim=128,
        )  # fmt: skip

    return {
        "Qwen3-VL-8B": Qwen3VLConfig(text(4096, 36, 32, 12288), vision(4096)),
        "Qwen3-VL-32B": Qwen3VLConfig(text(5120, 64, 64, 25600), vision(5120)),
    }


def abstract_model(config, mesh):
    """The graph and ``ShapeDtypeStruct`` weights of a bf16 model placed on ``mesh``."""
    import jax.numpy as jnp
    from flax import nnx

    from model import sharding
    from model.qwen3_vl import Qwen3VL, split

    m = nnx.eval_shape(lambda: Qwen3VL(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    graph, weights = split(m)
    paths = [path for path, _ in nnx.to_flat_state(nnx.state(m))]
    placed = []
    for path, w in zip(paths, weights, strict=True):
        where = sharding.parameter_sharding(path, w.shape, config, mesh)
        placed.append(jax.ShapeDtypeStruct(w.shape, w.dtype, sharding=where))
    return graph, placed, paths


def per_device_bytes(config, mesh) -> dict[str, float]:
    """Weights (text, vision) and KV cache on one device, and the bytes a decode step reads
    there: its text weights but the embedding (one row) and its share of a full cache."""
    _, weights, paths = abstract_model(config, mesh)
    out = collections.Counter()
    for path, w in zip(paths, weights, strict=True):
        shard = math.prod(w.sharding.shard_shape(w.shape)) * w.dtype.itemsize
        part = "vision" if path[0] == "visual" else "text"
        out[part] += shard
        if part == "text" and path[:2] != ("language_model", "embed_tokens"):
            out["read"] += shard
    t = config.text
    kv_split = t.num_key_value_heads % mesh.shape["model"] == 0
    heads = t.num_key_value_heads // (mesh.shape["model"] if kv_split else 1)
    rows = BATCH // mesh.shape["data"]
    out["kv"] = 2 * t.num_hidden_layers * rows * heads * CAPACITY * t.head_dim * 2
    out["read"] += out["kv"]
    return dict(out)


def compile_chunk(config, mesh) -> str:
    """The optimised HLO of one decode chunk with telemetry on ``mesh`` (CPU devices)."""
    import jax.numpy as jnp
    import numpy as np

    from model import sharding
    from model.decode import programs
    from model.decode.programs import Stored
    from model.decode.summaries import empty_store
    from model.sampling import GREEDY

    graph, weights, _ = abstract_model(config, mesh)
    t, n, shards = config.text, 32, mesh.shape["data"]

    def made():
        cache = sharding.create_cache(t, BATCH, CAPACITY, jnp.bfloat16, mesh)
        logp = sharding.zeros(
            (n, shards, t.vocab_size), jnp.float32, (None, "watched", "vocab"), mesh
        )
        tokens = sharding.zeros((n, BATCH), jnp.int32, (None, None), mesh)
        return cache, Stored(tokens, logp, empty_store(t, CAPACITY, n, mesh))

    with jax.set_mesh(mesh):
        cache, stored = jax.eval_shape(made)
        lowered = programs.decode_chunk.lower(
            graph, weights, cache, stored, jax.ShapeDtypeStruct((BATCH,), jnp.int32),
            jax.ShapeDtypeStruct((BATCH,), bool), np.zeros(BATCH, np.int32),
            np.zeros(1, np.int32), jax.random.key(0), np.int32(1), np.int32(n),
            GREEDY.arrays(), np.zeros(3, np.int32), telemetry=True,
        )  # fmt: skip
    return lowered.compile().as_text()


def collectives(hlo: str) -> dict[str, list[tuple[str, str, str]]]:
    """The collectives (kind, result shape, the JAX operation it came from) of a decode
    chunk's program: ``step``, those a greedy decode step runs (the loop's body and condition,
    the greedy branch of the sampling); ``filter``, those only top-k / top-p sampling adds;
    ``chunk``, the rest, run once per chunk (a ``lax.switch`` branch only when taken)."""
    computations, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = header[1]
            computations[current] = []
        elif current and line.startswith("  "):
            computations[current].append(line.strip())

    def reached(name: str, seen: set) -> list[tuple[str, str]]:
        if name in seen:
            return []
        seen.add(name)
        found = []
        for inst in computations[name]:
            op = re.search(r"= (\S+(?: \S+)*?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(", inst)
            if op:
                source = re.search(
                    r'op_name="(?:jit\(decode_chunk\)/)?(?:while/body/)?([^"]*)"', inst
                )
                found.append((op[2], op[1], source[1] if source else ""))
            for key in ("calls", "body", "condition", "branch_computations"):
                for group in re.findall(key + r"=\{?([%\w.\-, ]+)\}?", inst):
                    for callee in group.split(","):
                        callee = callee.strip().lstrip("%")
                        if callee in computations:
                            found += reached(callee, seen)
        return found

    loops = [
        (re.search(r"body=%?([\w.\-]+)", inst)[1], re.search(r"condition=%?([\w.\-]+)", inst)[1])
        for insts in computations.values()
        for inst in insts
        if " while(" in inst
    ]
    body, condition = max(loops, key=lambda loop: len(reached(loop[0], set())))
    loop = reached(body, set()) + reached(condition, set())
    entry = re.search(r"^ENTRY %?([\w.\-]+)", hlo, re.M)[1]
    rest = collections.Counter(reached(entry, set())) - collections.Counter(loop)

    def sampling(op: str) -> str:  # sample(): lax.cond(temperature > 0, draw, greedy)
        if not op.startswith("cond/"):
            return "always"
        if op.startswith("cond/branch_0_fun/"):
            return "greedy"
        return "filter" if "cond/branch_1_fun/cond/" in op else "draw"

    return {
        "step": [c for c in loop if sampling(c[2]) in ("always", "greedy")],
        "filter": [c for c in loop if sampling(c[2]) == "filter"],
        "chunk": list(rest.elements()),
    }


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO result shape (a tuple's are summed)."""
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
        size = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}
        total += math.prod(int(d) for d in dims.split(",") if d) * size.get(dtype, 4)
    return total


def summary(found: list[tuple[str, str, str]]) -> list[str]:
    counts = collections.Counter(
        (kind, re.sub(r"\{[^}]*\}", "", shape), op) for kind, shape, op in found
    )
    return [f"{n} x {kind} {shape} <- {op}" for (kind, shape, op), n in counts.most_common()]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8B on 2x4 only")
    args = p.parse_args()
    jax.config.update("jax_num_cpu_devices", DEVICES)
    from model import sharding

    results = {"batch": BATCH, "capacity": CAPACITY, "copy_GB_s": COPY_GB_S}
    results["collective_us"] = COLLECTIVE_US
    for name, config in configs().items():
        if args.quick and name != "Qwen3-VL-8B":
            continue
        one = per_device_bytes(config, sharding.make_mesh(1, 1, jax.devices()[:1]))
        results[f"{name} 1x1"] = {"bytes": one, "floor_ms": 1e3 * one["read"] / (COPY_GB_S * 1e9)}
        for data, model in MESHES if not args.quick else ((2, 4),):
            mesh = sharding.make_mesh(data, model)
            start = time.perf_counter()
            found = collectives(compile_chunk(config, mesh))
            step_bytes = sum(shape_bytes(s) for _, s, _ in found["step"])
            bytes_ = per_device_bytes(config, mesh)
            floor_ms = 1e3 * bytes_["read"] / (COPY_GB_S * 1e9)
            with_collectives_ms = floor_ms + 1e-3 * COLLECTIVE_US * len(found["step"])
            results[f"{name} {data}x{model}"] = {
                "bytes": bytes_,
                "step_collectives": summary(found["step"]),
                "step_collective_count": len(found["step"]),
                "step_collective_bytes": step_bytes,
                "top_k_top_p_adds": summary(found["filter"]),
                "chunk_collectives": summary(found["chunk"]),
                "floor_ms": floor_ms,
                "with_collectives_ms": with_collectives_ms,
                "tok_s_per_row": 1e3 / with_collectives_ms,
                "tok_s_group": BATCH * 1e3 / with_collectives_ms,
                "compile_s": round(time.perf_counter() - start, 1),
            }
            print(f"{name} {data}x{model}: {json.dumps(results[f'{name} {data}x{model}'])}")
            sys.stdout.flush()
    if os.environ.get("OUT"):
        os.makedirs(os.environ["OUT"], exist_ok=True)
        with open(os.path.join(os.environ["OUT"], "scaling.json"), "w") as f:
            json.dump(results, f, indent=2)
    print(f"\n== a decode step on 8 devices: batch {BATCH} over data, {CAPACITY} cache slots ==")
    gb = 1e9
    for key, r in results.items():
        if not isinstance(r, dict):
            continue
        b = r["bytes"]
        line = (
            f"{key:18s} weights {b['text'] / gb:6.2f} + vision {b['vision'] / gb:4.2f} GB, "
            f"KV {b['kv'] / gb:5.2f} GB, reads {b['read'] / gb:6.2f} GB/step -> floor "
            f"{r['floor_ms']:6.3f} ms"
        )
        if "step_collective_count" in r:
            line += (
                f"; {r['step_collective_count']} collectives/step "
                f"({r['step_collective_bytes'] / 1e3:.0f} kB) -> {r['with_collectives_ms']:.3f} ms"
                f" = {r['tok_s_per_row']:.0f} tok/s per row, {r['tok_s_group']:.0f} per group"
            )
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
