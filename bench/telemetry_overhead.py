"""What watching costs the run.

A: the real rollout (``model.rollout.run_inference``, full telemetry) decoding in the live
   dashboard's worker thread while the dashboard (``dash.app.App``, headless on a
   pseudo-terminal, ``bench.headless``) draws a full 160x48 frame at 20 FPS in the main thread.
B: ``model.decode.generate`` with ``telemetry=False``, no dashboard.

Where the difference goes, measured in the same repetitions:
C: ``generate`` with ``telemetry=True`` (computed on the device, copied to the host, unpacked),
   nothing else;
D: the real rollout as in A, its events handed to a sink that drops them: no dashboard;
E: as A, the dashboard drawing 1 frame a second (drained once a second, its channel drops
   what it cannot hold): A / E is what drawing at 20 FPS, and folding every event, costs.

Same embedded model, prompt (with its image) and number of new tokens; repetitions
interleaved A B C D E A B C D E ... in one process. Decode tokens/s counts the decode steps after
the prefill over their wall time (``Generation.decode_seconds``; in A and D the rollout's
decode-end ``PhaseEvent``). Target: median of the per-repetition ratios A / B >= 0.95.

    python -m bench.telemetry_overhead [--reps N] [--episodes E] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import time

from bench import embedded, report
from bench.headless import run_app
from dash import channel
from dash.sources import EMBEDDED
from model import telemetry as tm
from model.decode import generate
from model.rollout import run_inference
from model.sampling import GREEDY

TARGET = 0.95
FPS = 20.0  # the dashboard's frame rate in A


class _Timings:
    """A sink between the rollout and the dashboard noting each episode's decode: its wall
    time (from the decode-end phase event), its decoded tokens and when it ran. With the app's
    event ``loop``, also the UI thread's CPU time at the start and end of each decode."""

    def __init__(self, target: tm.Sink, loop=None) -> None:
        self.target = target
        self.loop = loop
        self.episodes: list[tuple[int, float]] = []  # (decode events, decode seconds)
        self.windows: list[tuple[float, float]] = []  # monotonic (start, end) of each decode
        self.ui_marks: list[tuple[float, float]] = []  # (monotonic, UI thread CPU seconds)
        self._events = 0
        self._start = 0.0

    def _mark_ui(self) -> None:  # on the UI thread
        self.ui_marks.append((time.monotonic(), time.thread_time()))

    def emit(self, event: tm.Event) -> None:
        if isinstance(event, tm.DecodeChunk):
            self._events += channel.size(event)  # the tokens it stands for
        elif isinstance(event, tm.PhaseEvent) and event.phase == "decode":
            if event.active:
                self._events, self._start = 0, time.monotonic()
            else:
                self.episodes.append((self._events, event.elapsed_ms / 1e3))
                self.windows.append((self._start, time.monotonic()))
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self._mark_ui)
        self.target.emit(event)

    def ui_share(self) -> float:
        """CPU seconds of the UI thread per second while the rollouts decoded."""
        starts, ends = self.ui_marks[0::2], self.ui_marks[1::2]
        cpu = sum(e[1] - s[1] for s, e in zip(starts, ends, strict=False))
        wall = sum(e[0] - s[0] for s, e in zip(starts, ends, strict=False))
        return cpu / wall


def with_dashboard(emb: embedded.Embedded, episodes: int, new_tokens: int, fps: float) -> dict:
    """A (E): decode tokens/s of ``episodes`` rollouts inside the live app drawing at ``fps``,
    and the app's frame rate while they decoded."""
    timings: list[_Timings] = []
    dropped: list[int] = []

    def rollout(sink, control, app) -> None:
        tap = _Timings(sink, app.loop)
        timings.append(tap)
        try:
            for episode in range(episodes):
                run_inference(
                    emb.model,
                    emb.processor,
                    prompt=emb.prompt,
                    image=emb.image,
                    sink=tap,
                    control=control,
                    sampling=GREEDY,
                    max_new_tokens=new_tokens,
                    episode=episode,
                    model_name=EMBEDDED.name,
                    random_init=emb.random_init,
                )
        finally:
            # while decoding; quitting drops (and counts) what the last frame did not take
            dropped.append(app.channel.counts().dropped)
            app.quit_from_thread()

    app, frames = run_app(rollout, fps=fps)
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
        "dropped": dropped[0],
        "ui_cpu": tap.ui_share(),
    }


def plain(emb: embedded.Embedded, episodes: int, new_tokens: int, telemetry: bool) -> float:
    """B (``telemetry`` off) and C (on): decode tokens/s of ``episodes`` generations."""
    steps, seconds = 0, 0.0
    inputs = emb.inputs
    for _ in range(episodes):
        gen = generate(
            emb.model,
            inputs["input_ids"],
            inputs["pixel_values"],
            inputs["image_grid_thw"],
            max_new_tokens=new_tokens,
            telemetry=telemetry,
        )
        steps += gen.steps
        seconds += gen.decode_seconds
    return steps / seconds


class _Discard:
    def emit(self, event: tm.Event) -> None:
        pass


def rollout_only(emb: embedded.Embedded, episodes: int, new_tokens: int) -> float:
    """D: decode tokens/s of ``episodes`` real rollouts whose events nobody shows."""
    tap = _Timings(_Discard())
    for episode in range(episodes):
        run_inference(
            emb.model,
            emb.processor,
            prompt=emb.prompt,
            image=emb.image,
            sink=tap,
            control=tm.RolloutControl(),
            sampling=GREEDY,
            max_new_tokens=new_tokens,
            episode=episode,
            model_name=EMBEDDED.name,
            random_init=emb.random_init,
        )
    return sum(events - 1 for events, _ in tap.episodes) / sum(s for _, s in tap.episodes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=12, help="interleaved repetitions (12)")
    p.add_argument("--episodes", type=int, default=2, help="rollouts per repetition (2)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens per rollout (256)")
    args = p.parse_args(argv)
    report.start("telemetry overhead: full telemetry + live dashboard vs telemetry off, no UI")
    emb = embedded.load()
    print(f"# model: {emb.label}", flush=True)

    n, new = args.episodes, args.new_tokens
    variants = {
        "A": lambda: with_dashboard(emb, n, new, FPS),
        "B": lambda: plain(emb, n, new, telemetry=False),
        "C": lambda: plain(emb, n, new, telemetry=True),
        "D": lambda: rollout_only(emb, n, new),
        "E": lambda: with_dashboard(emb, n, new, 1.0)["tokens_per_s"],
    }
    for run in variants.values():
        run()  # compile, warm up
    runs: dict[str, list] = {name: [] for name in variants}
    for rep in range(args.reps):
        for name, run in variants.items():
            runs[name].append(run())
        a = runs["A"][-1]
        print(
            f"rep {rep}: A {a['tokens_per_s']:.0f} tok/s ({a['fps']:.1f} FPS drawn)  "
            + "  ".join(f"{k} {runs[k][-1]:.0f}" for k in "BCDE"),
            flush=True,
        )
    a_rates = [x["tokens_per_s"] for x in runs["A"]]

    def versus_b(name: str) -> str:
        rates = runs[name]
        ratio = report.median([x / y for x, y in zip(rates, runs["B"], strict=True)])
        return f"{report.median(rates):.0f} tok/s, {name}/B {ratio:.3f}"

    ratios = [x / y for x, y in zip(a_rates, runs["B"], strict=True)]
    ratio = report.median(ratios)
    verdict = f"target >= {TARGET}: {report.verdict(ratio >= TARGET)}"
    report.figures(
        "telemetry overhead: decode watched by the dashboard over plain decode",
        [
            ("model", emb.label),
            (
                "decode",
                f"{new} new tokens x {n} rollouts per rep, {args.reps} interleaved reps",
            ),
            (
                "A telemetry + UI",
                f"{report.median(a_rates):.0f} tok/s (median); the dashboard drew "
                f"{report.median([x['fps'] for x in runs['A']]):.1f} FPS at 160x48 using "
                f"{report.median([x['ui_cpu'] for x in runs['A']]):.0%} of a core, "
                f"{sum(x['dropped'] for x in runs['A'])} tokens dropped while decoding",
            ),
            ("B no telemetry", f"{report.median(runs['B']):.0f} tok/s (median)"),
            ("C telemetry only", versus_b("C")),
            ("D rollout, no UI", versus_b("D")),
            ("E as A at 1 FPS", versus_b("E")),
            (
                "A/E median",
                f"{report.median([x / y for x, y in zip(a_rates, runs['E'], strict=True)]):.3f}"
                f" (what drawing {FPS:.0f} frames a second instead of 1, and folding every"
                " event, costs the decode)",
            ),
            ("A/B per rep", " ".join(f"{r:.3f}" for r in ratios)),
            ("A/B median", f"{ratio:.3f} ({verdict})"),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
