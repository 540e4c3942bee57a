"""Issue 6, target 5: telemetry at long context, 1K to 32K cache slots.

For each cache capacity C (1K, 2K, ... 32K tokens), the embedded model decodes a text-only
prompt (the task's question text, repeated) that fills the cache (``C - steps - 1`` tokens)
with ``model.decode.generate(capacity=C)``:

- per-step decode time with telemetry on and off, repetitions interleaved on / off (the order
  alternating, so a drift of the machine's load hits both alike); the ratio is tokens/s on
  over off, one per repetition, and its median is the figure (target >= 0.95 at every
  length). Wall time is the target's measure; on a CPU shared with other work it mostly
  measures how much of the CPU the run was given, so the process's CPU time per step (all
  its threads, from the first decode step to the end) is reported beside it;
- bytes received by the host per decode step: every device array the decoder copies to the
  host is noted (``bench.transfers.DeviceToHost``), and the arrays of one step are found by
  comparing a run of 1 decode step with a run of ``--steps``. The script asserts that no
  step ships an array of ``T x T`` or ``L x H x T`` elements (T = C), and that the bytes per
  step grow from the shortest to the longest cache by exactly the selected head's ``[T]`` row
  (4 bytes x dT);
- the prefill's wall time (telemetry on) and the process's peak memory so far.

Every run prefills its prompt (the prefill attends in blocks of queries, so a 32K prompt
takes ~1 GB), so the longest lengths take most of the time: about ``2 + 2 * reps`` prefills
per length.

    python -m bench.long_context [--steps N] [--reps N] [--lengths 1K,2K,...]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from bench import embedded, report
from bench.transfers import DeviceToHost, group_bytes, steady_groups
from model.decode import generate
from model.telemetry import RolloutControl

TARGET = 0.95
LENGTHS = "1K,2K,4K,8K,16K,32K"


def prompt_ids(emb: embedded.Embedded, length: int) -> np.ndarray:
    """``[1, length]`` token ids of the task's question text repeated."""
    tokenizer = emb.processor.tokenizer
    ids = tokenizer(emb.prompt + " ", add_special_tokens=False)["input_ids"]
    return np.resize(np.asarray(ids, np.int32), length)[None]


class DecodeClock(RolloutControl):
    """Notes the process's CPU time when ``generate`` gates its first decode step."""

    start: float | None = None

    def gate(self) -> bool:
        if self.start is None:
            self.start = time.process_time()
        return super().gate()


def decode(emb, ids, capacity: int, new_tokens: int, telemetry: bool) -> dict:
    """One generation: wall and CPU ms per decode step, the transfers noted, and the prefill's
    wall seconds (with telemetry; else None)."""
    prefill, clock = [], DecodeClock()
    with DeviceToHost() as seen:
        gen = generate(
            emb.model, ids, max_new_tokens=new_tokens, capacity=capacity, telemetry=telemetry,
            control=clock, on_prefill=lambda p: prefill.append(p.elapsed_ms / 1e3),
        )  # fmt: skip
    assert gen.steps == new_tokens - 1
    return {
        "wall": gen.decode_seconds / gen.steps * 1e3,
        "cpu": (time.process_time() - clock.start) / gen.steps * 1e3,
        "transfers": seen.transfers,
        "prefill_s": prefill[0] if prefill else None,
    }


def measure(emb, capacity: int, steps: int, reps: int) -> dict:
    length = capacity - steps - 1
    ids = prompt_ids(emb, length)
    modes = (True, False)  # telemetry on, off
    short = {on: decode(emb, ids, capacity, 2, on)["transfers"] for on in modes}  # compiles
    runs = {True: [], False: []}
    for rep in range(reps):
        for on in modes if rep % 2 == 0 else modes[::-1]:
            runs[on].append(decode(emb, ids, capacity, steps + 1, on))

    def median(on: bool, key: str) -> float:
        return report.median([run[key] for run in runs[on]])

    def ratios(key: str) -> list[float]:  # tokens/s on over off, per repetition
        return [off[key] / on[key] for on, off in zip(runs[True], runs[False], strict=True)]

    out = {
        "capacity": capacity,
        "prompt": length,
        "prefill_s": median(True, "prefill_s"),
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "ms_on": median(True, "wall"),
        "ms_off": median(False, "wall"),
        "ratios": ratios("wall"),
        "ratio": report.median(ratios("wall")),
        "cpu_on": median(True, "cpu"),
        "cpu_off": median(False, "cpu"),
        "cpu_ratio": report.median(ratios("cpu")),
    }
    for on, mode in ((True, "on"), (False, "off")):
        arrays = [steady_groups(short[on], run["transfers"], steps - 1)[0] for run in runs[on]]
        assert all(a == arrays[0] for a in arrays), "the runs shipped different arrays per step"
        out[f"shapes_{mode}"] = [shape for shape, _, _ in arrays[0]]
        out[f"bytes_{mode}"] = group_bytes(arrays[0])
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
    p.add_argument("--reps", type=int, default=8, help="interleaved on/off runs (8)")
    p.add_argument("--lengths", default=LENGTHS, help=f"cache capacities ({LENGTHS})")
    args = p.parse_args(argv)
    report.start("long context: telemetry overhead and bytes per decode step, 1K..32K")
    emb = embedded.load()
    text = emb.model.config.text
    layers, heads = text.num_hidden_layers, text.num_attention_heads
    print(f"# model: {emb.label.split(',')[0]}, {layers} layers x {heads} heads", flush=True)

    results = []
    for capacity in (parse_length(x) for x in args.lengths.split(",")):
        r = measure(emb, capacity, args.steps, args.reps)
        check_shapes(r, layers, heads)
        results.append(r)
        print(
            f"T={capacity}: prompt {r['prompt']}, prefill {r['prefill_s']:.1f} s, "
            f"peak RSS {r['peak_gb']:.2f} GB, wall {r['ms_on']:.2f} ms/step on, "
            f"{r['ms_off']:.2f} off, on/off tokens/s {r['ratio']:.3f}; CPU {r['cpu_on']:.2f} "
            f"ms/step on, {r['cpu_off']:.2f} off, on/off {r['cpu_ratio']:.3f}; "
            f"{r['bytes_on']} B/step on ({r['shapes_on']}), {r['bytes_off']} B/step off",
            flush=True,
        )
    first, last = results[0], results[-1]
    growth = last["bytes_on"] - first["bytes_on"]
    row_growth = 4 * (last["capacity"] - first["capacity"])
    assert growth == row_growth, f"bytes per step grew by {growth}, the [T] row by {row_growth}"
    worst = min(r["ratio"] for r in results)
    worst_cpu = min(r["cpu_ratio"] for r in results)
    lines = [
        (
            "model",
            f"{emb.label.split(',')[0]}, text-only prompt filling the cache, {args.steps} "
            f"decode steps, {args.reps} interleaved on/off reps per length",
        ),
        (
            "T (slots)",
            "prompt  prefill s  peak GB | wall ms/step on   off  tok/s on/off (reps) "
            "| CPU ms/step on   off  on/off | B/step on  off",
        ),
    ]
    lines += [
        (
            f"{r['capacity']}",
            f"{r['prompt']:6d}  {r['prefill_s']:9.1f}  {r['peak_gb']:7.2f} | "
            f"{r['ms_on']:14.2f}  {r['ms_off']:5.2f}  {r['ratio']:12.3f} "
            f"({min(r['ratios']):.2f}-{max(r['ratios']):.2f}) | "
            f"{r['cpu_on']:13.2f}  {r['cpu_off']:5.2f}  {r['cpu_ratio']:6.3f} | "
            f"{r['bytes_on']:9d}  {r['bytes_off']:3d}",
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
            f"wall {worst:.3f} (target >= {TARGET}: {report.verdict(worst >= TARGET)}), "
            f"CPU time {worst_cpu:.3f}",
        ),
    ]
    report.figures("long context (issue 6 target 5)", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
