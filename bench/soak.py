"""Soak: a scaled-down long run of the live app.

The live dashboard (``dash.app.App``, headless on a pseudo-terminal, ``bench.headless``,
frame pump at 20 FPS) watches the real rollout (``model.rollout.run_inference`` on the
embedded model, ``--new-tokens`` per episode, episode after episode) for ``--minutes`` and at
least ``--events`` events through the channel. Once a second a sampler thread notes the
process's resident memory (``/proc/self/statm``), Python's allocated memory blocks
(``sys.getallocatedblocks``) and the channel's counts; the screen notes when it drew each
frame. Reported: memory at start (after the first episodes, once everything is compiled),
middle and end with its growth per minute over the second half, and the frame pump's
intervals per minute. Not part of ``python -m bench`` unless ``--soak`` is given.

    python -m bench.soak [--minutes M] [--events N] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time

import numpy as np

from bench import embedded, report
from bench.headless import run_app
from dash.sources import EMBEDDED
from model.rollout import run_inference
from model.sampling import GREEDY

WARM_EPISODES = 2  # compile and settle before the "start" memory sample


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class Sampler(threading.Thread):
    """Once a second: (time, RSS bytes, allocated blocks, channel sent, dropped)."""

    def __init__(self, app_holder: list) -> None:
        super().__init__(daemon=True)
        self.app_holder = app_holder
        self.samples: list[tuple[float, int, int, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            sent = dropped = 0
            if self.app_holder and hasattr(self.app_holder[0], "channel"):
                counts = self.app_holder[0].channel.counts()
                sent, dropped = counts.sent, counts.dropped
            self.samples.append(
                (time.monotonic(), rss_bytes(), sys.getallocatedblocks(), sent, dropped)
            )


def soak(emb, minutes: float, events: int, new_tokens: int):
    apps: list = []
    start_marks: dict[str, float] = {}
    episodes = [0]

    def rollout(sink, control, app) -> None:
        apps.append(app)
        begin = time.monotonic()
        try:
            while not control.stopped:
                run_inference(
                    emb.model,
                    emb.processor,
                    prompt=emb.prompt,
                    image=emb.image,
                    sink=sink,
                    control=control,
                    sampling=GREEDY,
                    max_new_tokens=new_tokens,
                    episode=episodes[0],
                    model_name=EMBEDDED.name,
                    random_init=emb.random_init,
                )
                episodes[0] += 1
                if episodes[0] == WARM_EPISODES:
                    start_marks["start"] = time.monotonic()
                elapsed = time.monotonic() - begin
                sent = app.channel.counts().sent
                if elapsed >= minutes * 60 and sent >= events or elapsed >= 2 * minutes * 60:
                    break
        finally:
            app.quit_from_thread()

    sampler = Sampler(apps)
    sampler.start()
    app, frames = run_app(rollout)
    sampler.done.set()
    sampler.join()
    if app.view.error is not None:
        raise RuntimeError(f"the rollout failed: {app.view.error.message}")
    return app, frames, sampler.samples, start_marks["start"], episodes[0]


def frame_minutes(frames: list[float], start: float) -> list[tuple[int, np.ndarray]]:
    """Frame intervals (ms) grouped by the minute (since ``start``) they ended in."""
    times = np.asarray(frames)
    intervals = np.diff(times) * 1e3
    minute = ((times[1:] - start) // 60).astype(int)
    return [(int(m), intervals[minute == m]) for m in np.unique(minute) if m >= 0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.5, help="at least this long (3.5)")
    p.add_argument("--events", type=int, default=100_000, help="at least this many (100k)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens per episode (256)")
    args = p.parse_args(argv)
    report.start("soak: the live dashboard on the real rollout for minutes")
    emb = embedded.load()
    print(f"# model: {emb.label}", flush=True)
    app, frames, samples, start, episodes = soak(emb, args.minutes, args.events, args.new_tokens)

    counts = app.channel.counts()
    kept = [s for s in samples if s[0] >= start]
    t0, end_t = kept[0][0], kept[-1][0]
    middle = min(kept, key=lambda s: abs(s[0] - (t0 + end_t) / 2))
    half = [s for s in kept if s[0] >= middle[0]]
    minutes_half = (half[-1][0] - half[0][0]) / 60
    rss_slope = (half[-1][1] - half[0][1]) / 1e6 / minutes_half
    blocks_slope = (half[-1][2] - half[0][2]) / minutes_half

    def memory(s) -> str:
        return f"RSS {s[1] / 1e6:.1f} MB, {s[2]} Python blocks ({s[0] - t0:.0f} s)"

    lines = [
        ("model", emb.label),
        (
            "run",
            f"{(end_t - samples[0][0]) / 60:.1f} min, {episodes} episodes of {args.new_tokens} "
            f"tokens, {counts.sent} events sent, {counts.received} received, "
            f"{counts.dropped} dropped",
        ),
        ("memory start", memory(kept[0])),
        ("memory middle", memory(middle)),
        ("memory end", memory(kept[-1])),
        (
            "second half growth",
            f"RSS {rss_slope:+.2f} MB/min, Python blocks {blocks_slope:+.0f}/min",
        ),
    ]
    for minute, intervals in frame_minutes(frames, start):
        lines.append(
            (
                f"frame pump minute {minute}",
                f"{len(intervals)} frames = {len(intervals) / intervals.sum() * 1e3:.1f} FPS, "
                f"interval median "
                f"{np.median(intervals):.1f} ms, p99 {np.percentile(intervals, 99):.1f} ms, "
                f"max {intervals.max():.1f} ms",
            )
        )
    report.figures("soak: memory and frame pump over a long live run", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
