"""Telemetry at long context, 1K to 32K cache slots.

For each cache capacity C (1K, 2K, ... 32K tokens), the embedded model decodes a text-only
prompt (the task's question text, repeated) with ``model.decode.generate(capacity=C)``:

- per-step decode time with telemetry on and off, repetitions interleaved on / off; the
  ratio is tokens/s on over off (target >= 0.95 at every length);
- bytes received by the host per decode step: every device array the decoder copies to the
  host is noted (``bench.transfers.DeviceToHost``). The decoder ships one group of arrays per
  chunk of up to ``CHUNK`` steps, stacked per step (``[CHUNK, ...]``); one chunk's group is
  found by comparing a run of 1 decode step with a run of 2 (the first two chunks are one
  step each), and a step's bytes are the group's over ``CHUNK`` (a full chunk). The script
  asserts that no step ships an array of ``T x T`` or ``L x H x T`` elements (T = C), and
  that the bytes per step grow from the shortest to the longest cache by exactly the
  selected head's ``[T]`` row (4 bytes x dT).

The prompt fills the cache up to ``--max-prompt`` tokens (default 4064; every repetition
prefills again, and a longer prompt makes a long run longer, not a different decode step:
the prefill attends in blocks of queries, so a 32K prompt fits). Beyond it the rest of the
cache is empty slots: a decode step attends over all C slots with a length mask and ships
the selected head's row over all C, so its cost and its bytes are those of a full cache.

    python -m bench.long_context [--steps N] [--reps N] [--max-prompt N] [--lengths 1K,2K,...]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench import embedded, report
from bench.transfers import DeviceToHost, group_bytes, steady_groups
from model.decode import CHUNK, generate

TARGET = 0.95
LENGTHS = "1K,2K,4K,8K,16K,32K"


def prompt_ids(emb: embedded.Embedded, length: int) -> np.ndarray:
    """``[1, length]`` token ids of the task's question text repeated."""
    tokenizer = emb.processor.tokenizer
    ids = tokenizer(emb.prompt + " ", add_special_tokens=False)["input_ids"]
    return np.resize(np.asarray(ids, np.int32), length)[None]


def decode(emb, ids, capacity: int, new_tokens: int, telemetry: bool):
    """(ms per decode step, transfers noted) of one generation."""
    with DeviceToHost() as seen:
        gen = generate(
            emb.model, ids, max_new_tokens=new_tokens, capacity=capacity, telemetry=telemetry
        )
    assert gen.steps == new_tokens - 1
    return gen.decode_seconds / gen.steps * 1e3, seen.transfers


def measure(emb, capacity: int, steps: int, reps: int, max_prompt: int) -> dict:
    length = min(capacity - steps - 1, max_prompt)
    ids = prompt_ids(emb, length)
    out = {"capacity": capacity, "prompt": length}
    for name, telemetry in (("on", True), ("off", False)):
        _, short = decode(emb, ids, capacity, 2, telemetry)  # compiles; 1 decode step
        _, long = decode(emb, ids, capacity, 3, telemetry)  # 2 steps: 2 chunks of 1
        (chunk,) = steady_groups(short, long, 1)
        out[f"shapes_{name}"] = [shape[1:] for shape, _, _ in chunk]  # one step's
        out[f"bytes_{name}"] = group_bytes(chunk) // CHUNK
    times = {"on": [], "off": []}
    for _ in range(reps):
        for name, telemetry in (("on", True), ("off", False)):
            times[name].append(decode(emb, ids, capacity, steps + 1, telemetry)[0])
    out["ms_on"], out["ms_off"] = report.median(times["on"]), report.median(times["off"])
    out["ratios"] = [off / on for on, off in zip(times["on"], times["off"], strict=True)]
    out["ratio"] = report.median(out["ratios"])
    return out


def check_shapes(r: dict, layers: int, heads: int) -> None:
    """No per-step array as big as a ``T x T`` map or all heads' rows ``[L, H, T]``."""
    t = r["capacity"]
    for shape in r["shapes_on"] + r["shapes_off"]:
        size = int(np.prod(shape))
        assert size < min(t * t, layers * heads * t), f"a step ships {shape} at T = {t}"


def parse_length(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=128, help="decode steps per run (128)")
    p.add_argument("--reps", type=int, default=7, help="interleaved on/off runs (7)")
    p.add_argument("--max-prompt", type=int, default=4064, help="longest prompt (4064)")
    p.add_argument("--lengths", default=LENGTHS, help=f"cache capacities ({LENGTHS})")
    args = p.parse_args(argv)
    report.start("long context: telemetry overhead and bytes per decode step, 1K..32K")
    emb = embedded.load()
    text = emb.model.config.text
    layers, heads = text.num_hidden_layers, text.num_attention_heads
    print(f"# model: {emb.label.split(',')[0]}, {layers} layers x {heads} heads", flush=True)

    results = []
    for capacity in (parse_length(x) for x in args.lengths.split(",")):
        r = measure(emb, capacity, args.steps, args.reps, args.max_prompt)
        check_shapes(r, layers, heads)
        results.append(r)
        print(
            f"T={capacity}: prompt {r['prompt']}, {r['ms_on']:.2f} ms/step on, "
            f"{r['ms_off']:.2f} off, on/off tokens/s {r['ratio']:.3f}, "
            f"{r['bytes_on']} B/step on ({r['shapes_on']}), {r['bytes_off']} B/step off",
            flush=True,
        )
    first, last = results[0], results[-1]
    growth = last["bytes_on"] - first["bytes_on"]
    row_growth = 4 * (last["capacity"] - first["capacity"])
    assert growth == row_growth, f"bytes per step grew by {growth}, the [T] row by {row_growth}"
    worst = min(r["ratio"] for r in results)
    lines = [
        (
            "model",
            f"{emb.label.split(',')[0]}, text-only prompt, {args.steps} decode steps, "
            f"{args.reps} interleaved on/off reps per length",
        ),
        (
            "T (slots)",
            "prompt  ms/step on  ms/step off  tok/s on/off (reps)  B/step on  B/step off",
        ),
    ]
    lines += [
        (
            f"{r['capacity']}",
            f"{r['prompt']:6d}  {r['ms_on']:10.2f}  {r['ms_off']:11.2f}  {r['ratio']:12.3f} "
            f"({min(r['ratios']):.2f}-{max(r['ratios']):.2f})  "
            f"{r['bytes_on']:9d}  {r['bytes_off']:10d}",
        )
        for r in results
    ]
    lines += [
        (
            "bytes growth",
            f"{growth} B/step from T={first['capacity']} to {last['capacity']} = 4 B x dT "
            f"{row_growth}: the selected [T] row only (asserted)",
        ),
        ("no T x T, L x H x T", "no decode step ships an array that large (asserted)"),
        (
            "worst on/off",
            f"{worst:.3f} (target >= {TARGET}: {report.verdict(worst >= TARGET)})",
        ),
    ]
    report.figures("long context: telemetry on / off and bytes per step, 1K to 32K slots", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
