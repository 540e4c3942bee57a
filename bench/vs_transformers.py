"""Our decode against transformers' ``generate`` on this CPU.

Both run the embedded checkpoint (``assets/tiny-qwen3vl``; while no trained one is shipped,
the random initialisation written to a temporary directory with ``save_pretrained``) on the
visual task's prompt with its image, greedy, for exactly ``--new-tokens`` new tokens:

- ours: ``model.decode.generate`` in JAX with telemetry on (every step's attention summaries,
  selected row, top-5 and probability computed on the device and handed to ``on_chunk``);
- transformers: ``Qwen3VLForConditionalGeneration.from_pretrained(dir)`` in torch float32 on
  the CPU, ``generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)`` with no EOS
  configured, so nothing stops it early or edits its logits; once with as many torch threads
  as cores and once with one thread (on a busy machine torch's thread pool can be many times
  slower than one thread), and the faster of the two is the one compared against.

Decode tokens/s counts the steps after the first new token over their wall time (ours:
``Generation.decode_seconds``; transformers: a logits processor notes the time each token's
logits are ready). End to end is new tokens over the whole call (vision tower and prefill
included). Repetitions alternate ours / transformers. The greedy ids are compared.
Target: ours >= 10x the faster transformers in decode tokens/s.

    python -m bench.vs_transformers [--reps N] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, Qwen3VLForConditionalGeneration

import model
from bench import embedded, report
from model.decode import generate

TARGET = 10.0


class _TokenClock(LogitsProcessor):
    """Notes ``time.perf_counter()`` each time a new token's logits are ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def ours(emb: embedded.Embedded, new_tokens: int) -> dict:
    inputs = emb.inputs
    chunks = []
    start = time.perf_counter()
    gen = generate(
        emb.model,
        inputs["input_ids"],
        inputs["pixel_values"],
        inputs["image_grid_thw"],
        max_new_tokens=new_tokens,
        telemetry=True,
        on_chunk=chunks.append,
        token_texts=emb.processor.token_texts,
    )
    seconds = time.perf_counter() - start
    assert sum(len(c.token_ids) for c in chunks) == new_tokens and gen.steps == new_tokens - 1
    return {
        "decode": gen.steps / gen.decode_seconds,
        "end_to_end": new_tokens / seconds,
        "ids": gen.tokens[0],
    }


def theirs(hf, emb: embedded.Embedded, new_tokens: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    inputs = emb.inputs
    ids = inputs["input_ids"].astype(np.int64)
    clock = _TokenClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
            pixel_values=torch.tensor(inputs["pixel_values"]),
            image_grid_thw=torch.tensor(inputs["image_grid_thw"]),
            mm_token_type_ids=torch.tensor((ids == emb.processor.image_token_id).astype(np.int64)),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            logits_processor=LogitsProcessorList([clock]),
        )
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1] :].numpy()
    assert len(new) == new_tokens == len(clock.times)
    return {
        "decode": (new_tokens - 1) / (clock.times[-1] - clock.times[0]),
        "end_to_end": new_tokens / seconds,
        "ids": new,
    }


def load_transformers(emb: embedded.Embedded, tmp: str):
    """transformers' model of the same weights, and a note saying where they came from."""
    path = emb.checkpoint_dir
    note = f"checkpoint {path}"
    if path is None:
        path = Path(tmp) / "random-init"
        model.save_pretrained(emb.model, path)
        note = f"random init written with save_pretrained to {path}"
    hf = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # run the full length, logits untouched
    hf.generation_config.pad_token_id = emb.processor.tokenizer.pad_token_id
    return hf, note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions (5)")
    p.add_argument("--new-tokens", type=int, default=256, help="new tokens per run (256)")
    args = p.parse_args(argv)
    report.start("our JAX decode (telemetry on) vs transformers generate, torch CPU")
    emb = embedded.load()
    threads = sorted({os.cpu_count() or 1, 1}, reverse=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf, note = load_transformers(emb, tmp)
        print(f"# model: {emb.label}; transformers loads the {note}", flush=True)
        ours(emb, args.new_tokens)  # compile, warm up
        for n in threads:
            theirs(hf, emb, args.new_tokens, n)
        a, b = [], {n: [] for n in threads}
        for rep in range(args.reps):
            a.append(ours(emb, args.new_tokens))
            for n in threads:
                b[n].append(theirs(hf, emb, args.new_tokens, n))
            tf = ", ".join(f"{b[n][-1]['decode']:.1f} ({n} thr)" for n in threads)
            print(f"rep {rep}: decode tok/s ours {a[-1]['decode']:.0f}, transformers {tf}")

    def median(runs, key):
        return report.median([r[key] for r in runs])

    def ratio_of(key):
        return report.median([x[key] / y[key] for x, y in zip(a, b[best], strict=True)])

    best = max(threads, key=lambda n: median(b[n], "decode"))
    ratio, e2e = ratio_of("decode"), ratio_of("end_to_end")
    ids, ref = a[-1]["ids"], b[best][-1]["ids"]
    agree = np.array_equal(ids, ref)
    same_prefix = int(np.argmin(np.append(ids == ref, False)))
    run = (
        f"greedy, {args.new_tokens} new tokens, batch 1, {args.reps} alternating reps, "
        f"torch {torch.__version__}"
    )
    verdict = f"target >= {TARGET:.0f}x: {report.verdict(ratio >= TARGET)}"
    theirs_lines = [
        (
            f"transformers {n} thread{'s' if n > 1 else ''}",
            f"{median(b[n], 'decode'):.1f} tok/s decode, {median(b[n], 'end_to_end'):.1f} tok/s "
            "end to end",
        )
        for n in threads
    ]
    report.figures(
        "ours vs transformers: decode tokens/s",
        [
            ("model", f"{emb.label}; transformers: {note}"),
            ("run", run),
            (
                "ours (telemetry on)",
                f"{median(a, 'decode'):.0f} tok/s decode, {median(a, 'end_to_end'):.0f} tok/s "
                "end to end",
            ),
            *theirs_lines,
            ("greedy ids agree", f"{agree} (first {same_prefix} of {args.new_tokens} equal)"),
            (f"end-to-end ratio vs {best} thr", f"{e2e:.1f}x"),
            (f"decode ratio vs {best} thr", f"{ratio:.1f}x ({verdict})"),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
