"""Issue 6, target 1: what watching costs the run.

A: the real rollout (``model.rollout.run_inference``, full telemetry) decoding in the live
   dashboard's worker thread while the dashboard (``dash.app.App``, headless on a
   pseudo-terminal, ``bench.headless``) draws a full 160x48 frame at 20 FPS in the main thread.
B: ``model.decode.generate`` with ``telemetry=False``, no dashboard.

Same embedded model, prompt (with its image) and number of new tokens; repetitions
interleaved A B A B ... in one process. Decode tokens/s counts the decode steps after the
prefill over their wall time (``Generation.decode_seconds``; in A the rollout's decode-end
``PhaseEvent``). Target: median of the per-repetition ratios A / B >= 0.95.

    python -m bench.telemetry_overhead [--reps N] [--episodes E] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import time

from bench import embedded, report
from bench.headless import run_app
from dash.sources import EMBEDDED
from model import telemetry as tm
from model.decode import generate
from model.rollout import run_inference
from model.sampling import GREEDY

TARGET = 0.95


class _Timings:
    """A sink between the rollout and the dashboard noting each episode's decode: its wall
    time (from the decode-end phase event), its DecodeEvents and when it ran."""

    def __init__(self, target: tm.Sink) -> None:
        self.target = target
        self.episodes: list[tuple[int, float]] = []  # (decode events, decode seconds)
        self.windows: list[tuple[float, float]] = []  # monotonic (start, end) of each decode
        self._events = 0
        self._start = 0.0

    def emit(self, event: tm.Event) -> None:
        if isinstance(event, tm.DecodeEvent):
            self._events += 1
        elif isinstance(event, tm.PhaseEvent) and event.phase == "decode":
            if event.active:
                self._events, self._start = 0, time.monotonic()
            else:
                self.episodes.append((self._events, event.elapsed_ms / 1e3))
                self.windows.append((self._start, time.monotonic()))
        self.target.emit(event)


def with_dashboard(emb: embedded.Embedded, episodes: int, new_tokens: int) -> dict:
    """A: decode tokens/s of ``episodes`` rollouts inside the live app, and the app's
    frame rate while they decoded."""
    timings: list[_Timings] = []

    def rollout(sink, control, app) -> None:
        tap = _Timings(sink)
        timings.append(tap)
        try:
            for episode in range(episodes):
                run_inference(
                    emb.model, emb.processor, prompt=emb.prompt, image=emb.image, sink=tap,
                    control=control, sampling=GREEDY, max_new_tokens=new_tokens,
                    episode=episode, model_name=EMBEDDED.name, random_init=emb.random_init,
                )  # fmt: skip
        finally:
            app.quit_from_thread()

    app, frames = run_app(rollout)
    if app.view.error is not None:
        raise RuntimeError(f"the rollout failed: {app.view.error.message}")
    tap = timings[0]
    for events, _ in tap.episodes:
        assert events == new_tokens, f"{events} decode events, expected {new_tokens}"
    steps = sum(events - 1 for events, _ in tap.episodes)  # the first token is the prefill's
    seconds = sum(s for _, s in tap.episodes)
    drawn = sum(sum(a <= t <= b for t in frames) for a, b in tap.windows)
    window_s = sum(b - a for a, b in tap.windows)
    return {
        "tokens_per_s": steps / seconds,
        "fps": drawn / window_s,
        "dropped": app.channel.counts().dropped,
    }


def without_telemetry(emb: embedded.Embedded, episodes: int, new_tokens: int) -> float:
    """B: decode tokens/s of ``episodes`` plain generations, telemetry off, no dashboard."""
    steps, seconds = 0, 0.0
    inputs = emb.inputs
    for _ in range(episodes):
        gen = generate(
            emb.model, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
            max_new_tokens=new_tokens, telemetry=False,
        )  # fmt: skip
        steps += gen.steps
        seconds += gen.decode_seconds
    return steps / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10, help="A/B pairs (default 10)")
    p.add_argument("--episodes", type=int, default=3, help="rollouts per repetition (3)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens per rollout (256)")
    args = p.parse_args(argv)
    report.start("telemetry overhead: full telemetry + live dashboard vs telemetry off, no UI")
    emb = embedded.load()
    print(f"# model: {emb.label}", flush=True)

    with_dashboard(emb, 1, args.new_tokens)  # compile both variants, warm up
    without_telemetry(emb, 1, args.new_tokens)
    a, b = [], []
    for rep in range(args.reps):
        a.append(with_dashboard(emb, args.episodes, args.new_tokens))
        b.append(without_telemetry(emb, args.episodes, args.new_tokens))
        print(
            f"rep {rep}: A {a[-1]['tokens_per_s']:.0f} tok/s ({a[-1]['fps']:.1f} FPS drawn)"
            f"  B {b[-1]:.0f} tok/s  A/B {a[-1]['tokens_per_s'] / b[-1]:.3f}",
            flush=True,
        )
    ratios = [x["tokens_per_s"] / y for x, y in zip(a, b, strict=True)]
    ratio = report.median(ratios)
    report.figures(
        "telemetry overhead (issue 6 target 1)",
        [
            ("model", emb.label),
            (
                "decode",
                f"{args.new_tokens} new tokens x {args.episodes} rollouts per rep, "
                f"{args.reps} interleaved A/B reps",
            ),  # fmt: skip
            (
                "A telemetry + UI",
                f"{report.median([x['tokens_per_s'] for x in a]):.0f} tok/s "
                f"(median), dashboard drew "
                f"{report.median([x['fps'] for x in a]):.1f} FPS at 160x48, "
                f"{sum(x['dropped'] for x in a)} events dropped",
            ),  # fmt: skip
            ("B no telemetry", f"{report.median(b):.0f} tok/s (median)"),
            ("A/B per rep", " ".join(f"{r:.3f}" for r in ratios)),
            ("A/B median", f"{ratio:.3f} (target >= {TARGET}: {report.verdict(ratio >= TARGET)})"),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
