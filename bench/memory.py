"""Peak memory of generating with full telemetry, against the weights, at real sizes.

Writes a random-weight checkpoint of real Qwen3-VL shapes with transformers
(``save_pretrained`` in bfloat16: Qwen3-VL-2B's shapes, or with ``--quick`` Qwen3-0.6B's
text shapes and a small vision tower), with the embedded model's tokenizer and image
processor. Then, each in a fresh process whose peak resident memory (``VmHWM``) it reads:

- ours, ``model.load_pretrained`` in the dtype and ``model.decode.generate`` with telemetry
  of a prompt with one image: the first token of a first prompt (cold: compiling
  included), of a second prompt of the same length (warm), then ``--new`` tokens;
- the dashboard, ``python -m dash --model DIR --snapshot`` (the same rollout as on screen);
- transformers' ``from_pretrained(dtype=...)`` and ``generate`` of the same prompt and
  tokens, the anchor.

Target: ours at most 1.25 x the weights in the chosen dtype + the KV cache + 1.5 GB.

    python -m bench.memory [--quick] [--dtypes bfloat16,float32] [--keep DIR]

``--code DIR`` runs ours from another checkout of this project (an earlier commit) for a
before / after comparison with the same checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "tiny-qwen3vl"
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
RUNTIME_GB = 1.5
PROMPTS = ("What colour is the square in the picture?", "Where is the circle in the picture?")
GB = 1e9
DASH_CACHE = 1024  # python -m dash --model's default --cache

SHAPES = {
    "2B": dict(
        text=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        ),
        vision=dict(
            depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
            out_hidden_size=2048, deepstack_visual_indexes=[5, 11, 17],
        ),
    ),
    "0.6B": dict(
        text=dict(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        ),
        vision=dict(
            depth=4, hidden_size=256, intermediate_size=1024, num_heads=4,
            out_hidden_size=1024, deepstack_visual_indexes=[1, 2],
        ),
    ),
}  # fmt: skip

# Run in a fresh process: load, first tokens cold and warm, then a generation with
# telemetry; prints one JSON line with the timings and the peak RSS.
OURS = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, PIL.Image, jax.numpy as jnp
from model import load_pretrained
from model.decode import generate
from model.processor import Processor
path, dtype, new, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
m = load_pretrained(path, getattr(jnp, dtype))
processor = Processor.from_pretrained(path)
loaded = time.perf_counter()
image = PIL.Image.fromarray(np.full((256, 256, 3), (200, 40, 40), np.uint8))
inputs = [processor.prepare(p, [image]) for p in prompts]
def run(x, n):
    start = time.perf_counter()
    gen = generate(m, x["input_ids"], x["pixel_values"], x["image_grid_thw"],
                   max_new_tokens=n, telemetry=True)
    return gen, time.perf_counter() - start
_, cold = run(inputs[0], 1)
_, warm = run(inputs[1], 1)
gen, total = run(inputs[1], new)
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps(dict(
    peak=peak, load_s=loaded - t0, ttft_cold_s=cold, ttft_warm_s=warm,
    decode_tok_s=gen.steps / gen.decode_seconds, prompt=int(inputs[1]["input_ids"].shape[1]),
)))
"""

# The dashboard's own command line in a fresh process, then its peak RSS.
DASH = """
import json, runpy, sys
sys.argv = ["python -m dash", *sys.argv[1:]]
try:
    runpy.run_module("dash", run_name="__main__")
except SystemExit:
    pass
status = open("/proc/self/status").read()
print(json.dumps(dict(peak=int(status.split("VmHWM:")[1].split()[0]) * 1024)))
"""

TRANSFORMERS = """
import json, sys, time
import numpy as np, PIL.Image, torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
path, dtype, new, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
m = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
from model.processor import Processor
processor = Processor.from_pretrained(path)
image = PIL.Image.fromarray(np.full((256, 256, 3), (200, 40, 40), np.uint8))
x = processor.prepare(prompt, [image])
with torch.inference_mode():
    start = time.perf_counter()
    m.generate(input_ids=torch.as_tensor(x["input_ids"]).long(),
               pixel_values=torch.as_tensor(x["pixel_values"]).to(getattr(torch, dtype)),
               image_grid_thw=torch.as_tensor(x["image_grid_thw"]), max_new_tokens=new,
               min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps(dict(peak=peak, generate_s=seconds)))
"""


def write_checkpoint(shape: str, path: Path) -> int:
    """A random bfloat16 checkpoint of ``SHAPES[shape]`` at ``path``; returns its parameter
    count."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    dims = SHAPES[shape]
    tokens = json.loads((ASSETS / "config.json").read_text())  # the tokenizer's special ids
    config = Qwen3VLConfig(
        text_config=dict(**dims["text"], tie_word_embeddings=True),
        vision_config=dict(**dims["vision"], patch_size=16, spatial_merge_size=2),
        tie_word_embeddings=True,
        **{k: v for k, v in tokens.items() if k.endswith("_token_id")},
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    for name in PROCESSOR_FILES:
        shutil.copy(ASSETS / name, path / name)
    return sum(p.numel() for p in model.parameters())


def count_parameters(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(file, "np") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
    return total


def kv_bytes(shape: str, capacity: int, itemsize: int) -> int:
    t = SHAPES[shape]["text"]
    per_token = 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * t["head_dim"]
    return per_token * capacity * itemsize


def run_json(code: str, args: list[str], cwd: Path) -> dict:
    """``code`` in a fresh Python process in ``cwd``; its last output line as JSON."""
    env = dict(os.environ, PYTHONPATH=str(cwd), TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Qwen3-0.6B text shapes (1.3 GB)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--new", type=int, default=32, help="new tokens (32)")
    p.add_argument("--keep", metavar="DIR", help="write (or reuse) the checkpoint here")
    p.add_argument("--code", metavar="DIR", help="run ours from this checkout")
    p.add_argument("--skip", default="", help="comma-separated: dash, transformers")
    args = p.parse_args(argv)
    shape = "0.6B" if args.quick else "2B"
    report.start(f"memory: peak RSS of generate with telemetry, {shape} shapes")
    code = Path(args.code).resolve() if args.code else ROOT
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "checkpoint"
        if not (path / "config.json").is_file():
            params = write_checkpoint(shape, path)
            print(f"# wrote {params / 1e9:.2f} B parameters to {path}", flush=True)
        params = count_parameters(path)
        lines = [("checkpoint", f"{shape} shapes, {params / 1e9:.2f} B parameters, bf16 on disk")]
        skip = set(filter(None, args.skip.split(",")))
        for dtype in args.dtypes.split(","):
            itemsize = 2 if dtype == "bfloat16" else 4
            weights = params * itemsize
            ours = run_json(OURS, [str(path), dtype, str(args.new), *PROMPTS], code)
            capacity = -(-(ours["prompt"] + args.new) // 128) * 128
            kv = kv_bytes(shape, capacity, itemsize)
            target = 1.25 * weights + kv + RUNTIME_GB * GB
            verdict = report.verdict(ours["peak"] <= target)
            lines += [
                (f"{dtype} weights", f"{weights / GB:.2f} GB; KV cache {kv / GB:.3f} GB"),
                (
                    f"{dtype} ours, generate",
                    f"peak {ours['peak'] / GB:.2f} GB = {ours['peak'] / weights:.2f}x the weights"
                    f" (target <= {target / GB:.2f} GB = 1.25x + KV + {RUNTIME_GB} GB: {verdict})",
                ),
                (
                    f"{dtype} ours, times",
                    f"load {ours['load_s']:.1f} s, first token cold {ours['ttft_cold_s']:.1f} s"
                    f" (compiling included), warm {ours['ttft_warm_s']:.2f} s; decode "
                    f"{ours['decode_tok_s']:.2f} tok/s",
                ),
            ]
            has_dtype = "--dtype" in (code / "dash" / "cli.py").read_text()
            if "dash" not in skip and (has_dtype or dtype == "float32"):
                dash_args = ["--model", str(path), "--snapshot", "--steps", str(args.new)]
                dash_args += ["--max-new-tokens", str(args.new)]
                dash_args += ["--dtype", dtype] if has_dtype else []  # else float32
                dash = run_json(DASH, dash_args, code)
                dash_kv = kv_bytes(shape, DASH_CACHE, itemsize)
                dash_target = 1.25 * weights + dash_kv + RUNTIME_GB * GB
                ok = report.verdict(dash["peak"] <= dash_target)
                lines.append(
                    (
                        f"{dtype} ours, python -m dash",
                        f"peak {dash['peak'] / GB:.2f} GB = {dash['peak'] / weights:.2f}x the "
                        f"weights (target <= {dash_target / GB:.2f} GB with its "
                        f"{DASH_CACHE}-slot cache: {ok})",
                    )
                )
            if "transformers" not in skip:
                hf = run_json(TRANSFORMERS, [str(path), dtype, str(args.new), PROMPTS[1]], code)
                lines.append(
                    (
                        f"{dtype} transformers",
                        f"peak {hf['peak'] / GB:.2f} GB = {hf['peak'] / weights:.2f}x the weights"
                        f"; generate {hf['generate_s']:.1f} s for {args.new} tokens",
                    )
                )
    report.figures("memory: peak RSS against the weights", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
