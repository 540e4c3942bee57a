"""GPU decode benchmark at Qwen3-VL-2B text shapes (random bf16 weights), one run:

- our decode tokens/s with telemetry on and off (``model.decode.generate``), and again with
  XLA's operations in place of the decode step's Triton kernel (``model.attention_kernel``:
  q/k norms, mRoPE, cache write and attention);
- transformers' ``generate`` (torch, sdpa, bf16, same weights via ``save_pretrained``);
- the memory-bandwidth floor: bytes of text weights read per token (on one device) /
  measured device-to-device copy bandwidth (bytes read + written per second).

Batch 1, a 512-token text prompt, 256 new tokens (greedy, EOS disabled so every run makes
all 256). ``--small`` runs tiny shapes on any machine, through the same bf16 code paths (a
smoke test of this script). ``--mesh data=D,model=M`` places the model on ``D x M`` devices
(``model.sharding``) and decodes ``D`` rows, one per data group; the floor is then the bytes
of text weights one device reads (its slices) over the copy bandwidth, transformers is not
run, and the decode uses XLA's attention (the kernel runs on one device only). Each part is
warmed up once, then timed; a part that fails is recorded as an error and the rest still
runs. Figures are printed last in one block; with
``$OUT`` set they are also written to ``$OUT/gpu.json`` (after every part).

    python -m bench.gpu            # on the GPU machine, from the repository root
    python -m bench.gpu --small    # anywhere
    python -m bench.gpu --mesh data=1,model=8    # a machine with 8 devices
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m bench.gpu --small --mesh data=2,model=4   # simulated: a sanity check only

JAX is told not to preallocate most of the GPU's memory (``XLA_PYTHON_CLIENT_PREALLOCATE``),
so torch can load transformers' copy of the weights in the same process.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model import attention_kernel, sharding  # noqa: E402
from model.config import Qwen3VLConfig, TextConfig, VisionConfig  # noqa: E402
from model.decode import default_capacity, generate  # noqa: E402
from model.decode.forward import runs_attention_kernel  # noqa: E402
from model.decode.programs import decode_chunk  # noqa: E402
from model.qwen3_vl import build  # noqa: E402

PROMPT, NEW = 512, 256
RESULTS: dict[str, object] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save_results() -> None:
    if os.environ.get("OUT"):
        os.makedirs(os.environ["OUT"], exist_ok=True)
        with open(os.path.join(os.environ["OUT"], "gpu.json"), "w") as f:
            json.dump(RESULTS, f, indent=2)


def part(name: str, fn) -> bool:
    """Run one part; a failure is logged and recorded, not fatal. Saves the results."""
    start = time.perf_counter()
    try:
        fn()
        ok = True
    except Exception as e:  # noqa: BLE001 - one failed part must not lose the others
        RESULTS[f"error_{name}"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        ok = False
    RESULTS[f"seconds_{name}"] = round(time.perf_counter() - start, 1)
    log(f"{name} {'done' if ok else 'FAILED'} in {RESULTS[f'seconds_{name}']} s")
    save_results()
    return ok


def config(small: bool) -> Qwen3VLConfig:
    if small:
        text = TextConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            mrope_section=(2, 3, 3),
            rope_theta=5_000_000.0,
        )
    else:  # Qwen3-VL-2B text
        text = TextConfig(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            mrope_section=(24, 20, 20),
            rope_theta=5_000_000.0,
        )
    # a one-block vision tower: this benchmark decodes text
    vision = VisionConfig(
        depth=1,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=text.hidden_size,
        deepstack_visual_indexes=(),
    )
    return Qwen3VLConfig(text=text, vision=vision, tie_word_embeddings=True)


def random_model(cfg: Qwen3VLConfig, dtype):
    """Random weights drawn on the device (normal(0, 0.02); norms 1, biases 0)."""
    key = iter(jax.random.split(jax.random.key(0), 10_000))

    def value_of(path, shape, _dtype):
        if path[-1] == "bias":
            return jnp.zeros(shape, dtype)
        if "norm" in str(path[-2]):
            return jnp.ones(shape, dtype)
        return (0.02 * jax.random.normal(next(key), shape, jnp.float32)).astype(dtype)

    return build(cfg, dtype, value_of)


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written: the
    fastest of 30 copies (one run measured 2.3 TB/s by the median of 10, another 3.5)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 0)  # one read + one write of every byte
    copy(x).block_until_ready()
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        copy(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / min(times)  # the best copy: the floor is what the card can do


def device_weight_bytes(m) -> int:
    """Bytes of text weights on one device: the whole of them on one, its slices on a mesh."""
    from flax import nnx

    total = 0
    for path, var in nnx.to_flat_state(nnx.state(m)):
        x = var.get_value()
        if path[0] != "visual":
            total += math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    return total


def ours(m, ids, telemetry: bool, rows: int = 1) -> dict:
    chunks_seen = []
    on_chunk = chunks_seen.append if telemetry else None
    t0 = time.perf_counter()
    gen = generate(
        m,
        ids,
        max_new_tokens=NEW,
        telemetry=telemetry,
        on_chunk=on_chunk,
        num_samples=rows,
        token_texts=lambda ids: tuple(str(i) for i in np.ravel(ids)),
    )
    total = time.perf_counter() - t0
    assert gen.lengths[0] == NEW, gen.lengths
    return {
        "decode_tok_s": gen.steps / gen.decode_seconds,
        "end_to_end_tok_s": NEW / total,
        "ms_per_token": 1e3 * gen.decode_seconds / gen.steps,
        "tokens": gen.tokens[0].tolist(),
    }


def transformers_generate(m, ids) -> dict:
    """transformers' greedy ``generate`` of the same weights (bf16 when ``m`` is, sdpa)."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from model.checkpoint import save_pretrained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if m.dtype == jnp.bfloat16 else torch.float32
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        save_pretrained(m, d)
        log("saved for transformers")
        hf = Qwen3VLForConditionalGeneration.from_pretrained(
            d, dtype=dtype, attn_implementation="sdpa"
        ).to(device)
    hf.eval()
    x = torch.as_tensor(ids, device=device)
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

    def timed(n: int):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    with torch.inference_mode():
        timed(8)  # warm-up
        _, prefill = timed(1)  # prefill alone, to separate it from decode
        out, total = timed(NEW)
    RESULTS["transformers_device"] = f"torch {torch.__version__} {device} {dtype}"
    return {
        "decode_tok_s": (NEW - 1) / max(total - prefill, 1e-9),
        "end_to_end_tok_s": NEW / total,
        "tokens": out[0, ids.shape[1] :].tolist(),
    }


def kernel_profile(m, ids, telemetry: bool, top: int = 25) -> list[str]:
    """Trace one ``generate`` and sum the device's kernel times by kernel name (the lines
    of the profiler's GPU plane): the busiest kernels per decoded token, the kernel count,
    and device-busy time against wall time (the difference is time between kernels)."""
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            t0 = time.perf_counter()
            gen = generate(m, ids, max_new_tokens=NEW, telemetry=telemetry)
            wall = time.perf_counter() - t0
        data = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    per_name: collections.Counter = collections.Counter()
    count, lines = 0, []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            lines.append(f"{line.name} ({len(list(line.events))} events)")
            if "stream" not in line.name.lower():
                continue
            for e in line.events:
                per_name[e.name] += e.duration_ns
                count += 1
    steps = NEW  # prefill + decode steps, every token
    busy = sum(per_name.values()) / 1e3 / steps
    out = [
        f"telemetry {'on' if telemetry else 'off'}: {count / steps:.0f} kernels/token, "
        f"device busy {busy:.0f} us/token, wall {1e6 * wall / steps:.0f} us/token "
        f"(decode {1e6 * gen.decode_seconds / gen.steps:.0f}); lines: {', '.join(lines)}"
    ]
    for name, ns in per_name.most_common(top):
        out.append(f"  {ns / 1e3 / steps:8.1f} us/token  {name[:110]}")
    return out


def figures() -> list[tuple[str, str]]:
    """The compact block printed last."""
    r = RESULTS

    def tok_s(key: str) -> str:
        v = r.get(key)
        if not v:
            return "not measured"
        return (
            f"{v['decode_tok_s']:.1f} tok/s decode ({v['ms_per_token']:.3f} ms/token), "
            f"{v['end_to_end_tok_s']:.1f} end to end"
        )

    lines = [
        ("device", f"{r.get('device')} · {r.get('shapes')} · jax {jax.__version__}"),
        ("mesh", r.get("mesh", "one device")),
        ("run", f"batch {r.get('rows', 1)}, {PROMPT}-token prompt, {NEW} new tokens, greedy"),
        ("decode attention", "Triton kernel" if r.get("attention_kernel") else "XLA"),
        ("ours telemetry on", tok_s("ours_telemetry_on")),
        ("ours telemetry off", tok_s("ours_telemetry_off")),
    ]
    if "telemetry_on_over_off" in r:
        lines.append(("telemetry on / off", f"{r['telemetry_on_over_off']:.3f}"))
    if "xla_attention_telemetry_on_tok_s" in r:
        on, off = (r[f"xla_attention_telemetry_{k}_tok_s"] for k in ("on", "off"))
        lines.append(("without kernel on / off", f"{on:.1f} / {off:.1f} tok/s decode (XLA ops)"))
        if r.get("ours_telemetry_on"):
            gain = r["ours_telemetry_on"]["decode_tok_s"] / on
            lines.append(("kernel / without", f"{gain:.3f} (telemetry on)"))
    if "transformers" in r:
        t = r["transformers"]
        lines.append(
            (
                "transformers generate",
                f"{t['decode_tok_s']:.1f} tok/s decode, {t['end_to_end_tok_s']:.1f} end to end "
                f"({r.get('transformers_device')})",
            )
        )
        lines.append(("ours / transformers", f"{r['ours_over_transformers_decode']:.1f}x decode"))
        lines.append(("greedy ids equal", str(r["greedy_tokens_equal_to_transformers"])))
    if "floor_tok_s" in r:
        lines.append(
            (
                "bandwidth floor",
                f"{r['weight_bytes_per_token'] / 1e6:.1f} MB of text weights per token / "
                f"{r['copy_bandwidth_GB_s']:.0f} GB/s copy = {r['floor_ms_per_token']:.3f} "
                f"ms/token = {r['floor_tok_s']:.0f} tok/s",
            )
        )
    if "fraction_of_floor_telemetry_on" in r:
        frac = r["fraction_of_floor_telemetry_on"]
        verdict = "met" if frac >= 0.5 else "MISSED"
        lines.append(("% of floor, telemetry on", f"{frac:.1%} (target >= 50%: {verdict})"))
        lines.append(("% of floor, telemetry off", f"{r['fraction_of_floor_telemetry_off']:.1%}"))
    lines += [(k, v) for k, v in r.items() if k.startswith("error_")]
    seconds = [f"{k[len('seconds_') :]} {v}" for k, v in r.items() if k.startswith("seconds_")]
    lines.append(("seconds per part", ", ".join(seconds)))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke test anywhere)")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the busiest kernels per token")
    p.add_argument("--mesh", metavar="data=D,model=M", help="decode on D x M devices")
    args = p.parse_args()
    begin = time.perf_counter()
    dtype = jnp.bfloat16
    cfg = config(args.small)
    RESULTS["device"] = str(jax.devices()[0])
    RESULTS["shapes"] = "small, bf16" if args.small else "Qwen3-VL-2B text, bf16"
    log(f"device {RESULTS['device']}; building random model")
    m = random_model(cfg, dtype)
    mesh, rows = None, 1
    if args.mesh:
        sizes = sharding.parse_mesh(args.mesh)
        mesh = sharding.make_mesh(sizes["data"], sizes["model"])
        m, rows = sharding.shard_model(m, mesh), sizes["data"]
        RESULTS["mesh"] = f"{sharding.mesh_text(mesh)} over {mesh.size} x {RESULTS['device']}"
    RESULTS["rows"] = rows
    ids = np.random.default_rng(0).integers(10, cfg.text.vocab_size, (1, PROMPT), np.int32)
    runs: dict[str, list[dict]] = {"on": [], "off": []}

    def floor() -> None:
        floor_bytes = device_weight_bytes(m)  # text weights (per device on a mesh)
        bw = copy_bandwidth(64 << 20 if args.small else 2 << 30)
        RESULTS["weight_bytes_per_token"] = floor_bytes
        RESULTS["copy_bandwidth_GB_s"] = bw / 1e9
        RESULTS["floor_ms_per_token"] = 1e3 * floor_bytes / bw
        RESULTS["floor_tok_s"] = bw / floor_bytes

    def decode() -> None:
        for name, tel in (("on", True), ("off", False)):
            ours(m, ids, tel, rows)  # compile + warm-up
            log(f"compiled telemetry {name}")
        for _ in range(3):  # interleaved
            for name, tel in (("on", True), ("off", False)):
                runs[name].append(ours(m, ids, tel, rows))
        for name, rs in runs.items():
            best = max(rs, key=lambda r: r["decode_tok_s"])
            RESULTS[f"ours_telemetry_{name}"] = {k: v for k, v in best.items() if k != "tokens"}
            RESULTS[f"ours_telemetry_{name}"]["decode_tok_s_runs"] = [r["decode_tok_s"] for r in rs]
        on = RESULTS["ours_telemetry_on"]["decode_tok_s"]
        RESULTS["telemetry_on_over_off"] = on / RESULTS["ours_telemetry_off"]["decode_tok_s"]
        if "floor_tok_s" in RESULTS:
            RESULTS["fraction_of_floor_telemetry_on"] = on / RESULTS["floor_tok_s"]
            RESULTS["fraction_of_floor_telemetry_off"] = (
                RESULTS["ours_telemetry_off"]["decode_tok_s"] / RESULTS["floor_tok_s"]
            )

    def xla_attention() -> None:
        """The same runs with XLA's operations (``layer.qkv``, ``write_token``,
        ``cached_attention``) in place of the decode step's kernel."""
        kernel_supported = attention_kernel.supported
        attention_kernel.supported = lambda *shapes: False
        decode_chunk.clear_cache()
        try:
            xla_runs: dict[str, list[float]] = {"on": [], "off": []}
            for tel in (True, False):
                ours(m, ids, tel)  # compile + warm-up
            for _ in range(3):
                for name, tel in (("on", True), ("off", False)):
                    xla_runs[name].append(ours(m, ids, tel)["decode_tok_s"])
            for name, rs in xla_runs.items():
                RESULTS[f"xla_attention_telemetry_{name}_tok_s"] = max(rs)
        finally:
            attention_kernel.supported = kernel_supported
            decode_chunk.clear_cache()

    def transformers() -> None:
        hf = transformers_generate(m, ids)
        RESULTS["transformers"] = {k: v for k, v in hf.items() if k != "tokens"}
        if runs["on"]:
            on = RESULTS["ours_telemetry_on"]["decode_tok_s"]
            RESULTS["ours_over_transformers_decode"] = on / hf["decode_tok_s"]
            ours_ids = runs["on"][0]["tokens"]
            same = int(np.argmin(np.append(np.equal(ours_ids, hf["tokens"]), False)))
            RESULTS["greedy_tokens_equal_to_transformers"] = f"first {same} of {NEW}"

    def profile() -> None:
        lines = kernel_profile(m, ids, False) + kernel_profile(m, ids, True)
        RESULTS["profile"] = lines
        print("\n".join(lines), flush=True)

    part("floor", floor)
    part("ours", decode)
    kernel = runs_attention_kernel(cfg.text, default_capacity(PROMPT, NEW))
    RESULTS["attention_kernel"] = kernel and mesh is None
    if RESULTS["attention_kernel"]:  # elsewhere both runs would be the same program
        part("xla_attention", xla_attention)
    if not args.skip_transformers and mesh is None:
        part("transformers", transformers)
    if args.profile:  # last: a failure under the profiler can poison the CUDA context
        part("profile", profile)
    RESULTS["seconds_total"] = round(time.perf_counter() - begin, 1)
    save_results()
    print("\n== GPU decode at Qwen3-VL-2B text shapes, against the memory-bandwidth floor ==")
    lines = figures()
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.ljust(width)}  {v}")
    return 0 if not any(k.startswith("error_") for k in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
