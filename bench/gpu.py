"""GPU decode benchmark at Qwen3-VL-2B text shapes (random bf16 weights), one run:

- our decode tokens/s with telemetry on and off (``model.decode.generate``);
- transformers' ``generate`` (torch, sdpa, bf16, same weights via ``save_pretrained``);
- the memory-bandwidth floor: bytes of text weights read per token / measured
  device-to-device copy bandwidth (bytes read + written per second).

Batch 1, a 512-token text prompt, 256 new tokens (greedy, EOS disabled so every run makes
all 256). ``--small`` runs tiny shapes on any machine (a smoke test of this script).
Figures are printed last; with ``$OUT`` set they are also written to ``$OUT/gpu.json``.

    python -m bench.gpu            # on the GPU machine
    python -m bench.gpu --small    # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from model.config import Qwen3VLConfig, TextConfig, VisionConfig
from model.decode import generate
from model.qwen3_vl import build

PROMPT, NEW = 512, 256
RESULTS: dict[str, object] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save_results() -> None:
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu.json"), "w") as f:
            json.dump(RESULTS, f, indent=2)


def config(small: bool) -> Qwen3VLConfig:
    if small:
        text = TextConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            mrope_section=(2, 3, 3), rope_theta=5_000_000.0,
        )  # fmt: skip
    else:  # Qwen3-VL-2B text
        text = TextConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            mrope_section=(24, 20, 20), rope_theta=5_000_000.0,
        )  # fmt: skip
    # a one-block vision tower: this benchmark decodes text
    vision = VisionConfig(
        depth=1, hidden_size=64, intermediate_size=128, num_heads=2,
        out_hidden_size=text.hidden_size, deepstack_visual_indexes=(),
    )  # fmt: skip
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


def text_weight_bytes(cfg: Qwen3VLConfig, itemsize: int) -> int:
    """Bytes of text weights read to decode one token: every decoder layer, the final norm
    and the LM head (tied: the embedding matrix, read whole for the logits)."""
    t = cfg.text
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    attn = t.hidden_size * (q + 2 * kv) + q * t.hidden_size + 2 * t.head_dim
    mlp = 3 * t.hidden_size * t.intermediate_size
    layer = attn + mlp + 2 * t.hidden_size
    return itemsize * (t.num_hidden_layers * layer + t.hidden_size + t.vocab_size * t.hidden_size)


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 0)  # one read + one write of every byte
    copy(x).block_until_ready()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        copy(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / float(np.median(times))


def ours(m, ids, telemetry: bool) -> dict:
    steps_seen = []
    on_step = steps_seen.append if telemetry else None
    t0 = time.perf_counter()
    gen = generate(m, ids, max_new_tokens=NEW, telemetry=telemetry, on_step=on_step)
    total = time.perf_counter() - t0
    assert gen.lengths[0] == NEW, gen.lengths
    return {
        "decode_tok_s": gen.steps / gen.decode_seconds,
        "end_to_end_tok_s": NEW / total,
        "ms_per_token": 1e3 * gen.decode_seconds / gen.steps,
        "tokens": gen.tokens[0].tolist(),
    }


def transformers_generate(m, ids, small: bool) -> dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from model.checkpoint import save_pretrained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        save_pretrained(m, d)
        log("saved for transformers")
        hf = Qwen3VLForConditionalGeneration.from_pretrained(
            d, dtype=torch.bfloat16 if not small else torch.float32, attn_implementation="sdpa"
        ).to(device)
    hf.eval()
    x = torch.as_tensor(ids, device=device)
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        hf.generate(x, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        # prefill alone, to separate it from decode
        t0 = time.perf_counter()
        hf.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = hf.generate(x, max_new_tokens=NEW, min_new_tokens=NEW, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
    return {
        "decode_tok_s": (NEW - 1) / max(total - prefill, 1e-9),
        "end_to_end_tok_s": NEW / total,
        "tokens": out[0, ids.shape[1] :].tolist(),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke test anywhere)")
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    dtype = jnp.float32 if args.small else jnp.bfloat16
    cfg = config(args.small)
    RESULTS["device"] = str(jax.devices()[0])
    RESULTS["shapes"] = "small" if args.small else "Qwen3-VL-2B text, bf16"
    log(f"device {RESULTS['device']}; building random model")
    m = random_model(cfg, dtype)
    ids = np.random.default_rng(0).integers(10, cfg.text.vocab_size, (1, PROMPT), np.int32)

    floor_bytes = text_weight_bytes(cfg, jnp.dtype(dtype).itemsize)
    bw = copy_bandwidth(64 << 20 if args.small else 2 << 30)
    RESULTS["weight_bytes_per_token"] = floor_bytes
    RESULTS["copy_bandwidth_GB_s"] = bw / 1e9
    RESULTS["floor_ms_per_token"] = 1e3 * floor_bytes / bw
    RESULTS["floor_tok_s"] = bw / floor_bytes
    log(f"floor {RESULTS['floor_ms_per_token']:.3f} ms/token at {bw / 1e9:.0f} GB/s")
    save_results()

    for name, tel in (("on", True), ("off", False)):
        ours(m, ids, tel)  # compile + warm-up
        log(f"compiled telemetry {name}")
    runs = {"on": [], "off": []}
    for _ in range(3):  # interleaved
        for name, tel in (("on", True), ("off", False)):
            runs[name].append(ours(m, ids, tel))
    for name, rs in runs.items():
        best = max(rs, key=lambda r: r["decode_tok_s"])
        RESULTS[f"ours_telemetry_{name}"] = {k: v for k, v in best.items() if k != "tokens"}
        RESULTS[f"ours_telemetry_{name}"]["decode_tok_s_runs"] = [r["decode_tok_s"] for r in rs]
    on = RESULTS["ours_telemetry_on"]["decode_tok_s"]
    off = RESULTS["ours_telemetry_off"]["decode_tok_s"]
    RESULTS["telemetry_on_over_off"] = on / off
    RESULTS["fraction_of_floor_telemetry_on"] = on / RESULTS["floor_tok_s"]
    RESULTS["fraction_of_floor_telemetry_off"] = off / RESULTS["floor_tok_s"]
    save_results()
    log("ours done")

    if not args.skip_transformers:
        hf = transformers_generate(m, ids, args.small)
        RESULTS["transformers"] = {k: v for k, v in hf.items() if k != "tokens"}
        RESULTS["ours_over_transformers_decode"] = on / hf["decode_tok_s"]
        ours_ids = runs["on"][0]["tokens"]
        same = sum(a == b for a, b in zip(ours_ids, hf["tokens"], strict=False))
        RESULTS["greedy_tokens_equal_to_transformers"] = f"{same}/{NEW}"
        save_results()

    print("\n== GPU decode benchmark ==")
    for k, v in RESULTS.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
