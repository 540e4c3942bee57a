"""What publishing a run for attached viewers costs it, and how fast a viewer sees it.

In this process, the real rollout (``model.rollout.run_inference``, full telemetry, greedy, the
embedded model) decodes ``--episodes`` episodes per variant, the variants interleaved in every
repetition:

N    its events handed to a sink that drops them: no publisher;
P    the events published by a ``model.publish.Publisher`` that no viewer is attached to;
V20  P with one viewer attached in another process: ``dash.attach`` (the dashboard of
     ``python -m dash --attach``) drawing 160x48 frames at 20 FPS on a pseudo-terminal that
     nobody reads (``bench.headless``);
V5   the same viewer at 5 FPS;
S    P with a stalled viewer attached in another process: it pings, so the producer keeps
     publishing to it, but never reads its data socket.

Decode tokens/s as in ``bench.telemetry_overhead`` (the decode steps after the prefill over
their wall time, from the rollout's decode phase events). Also measured: what ``emit`` costs
per decode chunk and per other event, without and with a viewer; the latency from ``emit`` in
the producer to the viewer's screen (the first frame the viewer drew after the chunk reached
its dashboard's channel; both processes read the same monotonic clock); and, for
``--stall-minutes``, the producer's resident memory while it decodes continuously with the
stalled viewer attached.

Targets: P / N >= 0.98; V20 / P >= 0.92 (V5 reported); S / P >= 0.98; emit to screen p99
<= 100 ms at 20 FPS (the default frame rate).

    python -m bench.attach [--reps N] [--episodes E] [--new-tokens N] [--stall-minutes M]

(``--viewer`` and ``--stalled`` run the viewer processes.)
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bench import report
from model import telemetry as tm

TARGETS = (("P/N", 0.98), ("V20/P", 0.92), ("V5/P", None), ("S/P", 0.98))
LATENCY_P99_MS = 100.0


# --- the producer's side --------------------------------------------------------------


class _Tap:
    """The rollout's sink: times each ``emit`` of ``target`` (wall and the rollout thread's
    CPU), notes when each chunk was emitted, and each episode's decode (from the decode phase
    events)."""

    def __init__(self) -> None:
        self.target: tm.Sink = tm.NullSink()
        self.episodes: list[tuple[int, float]] = []  # (tokens, decode seconds)
        self.emit_ns: dict[str, list[int]] = {"chunk": [], "other": []}
        self.emit_cpu = 0.0  # seconds of the rollout thread's CPU inside emit
        self.emitted: dict[tuple[int, int], float] = {}  # (episode, first) -> monotonic
        self._tokens = 0

    def emit(self, event: tm.Event) -> None:
        if isinstance(event, tm.DecodeChunk):
            self._tokens += len(event)
            self.emitted[(event.episode, event.first)] = time.monotonic()
        elif isinstance(event, tm.PhaseEvent) and event.phase == "decode":
            if event.active:
                self._tokens = 0
            else:
                self.episodes.append((self._tokens, event.elapsed_ms / 1e3))
        start, cpu = time.perf_counter_ns(), time.thread_time()
        self.target.emit(event)
        kind = "chunk" if isinstance(event, tm.DecodeChunk) else "other"
        self.emit_ns[kind].append(time.perf_counter_ns() - start)
        self.emit_cpu += time.thread_time() - cpu

    def measure(self, run_episodes) -> dict:
        """Decode tokens/s of ``run_episodes(self)``, the emit times it took, and the CPU
        share (of one core, over its wall time) of publishing: the rollout thread inside
        ``emit`` and ZeroMQ's I/O thread."""
        self.episodes, self.emit_ns, self.emit_cpu = [], {"chunk": [], "other": []}, 0.0
        wall, io = time.monotonic(), _zmq_io_cpu()
        run_episodes(self)
        wall, io = time.monotonic() - wall, _zmq_io_cpu() - io
        steps = sum(tokens - 1 for tokens, _ in self.episodes)  # the first is the prefill's
        return {
            "tokens_per_s": steps / sum(s for _, s in self.episodes),
            "publish_cpu": (self.emit_cpu + io) / wall,
            **self.emit_ns,
        }


def _zmq_io_cpu() -> float:
    """CPU seconds so far of this process's ZeroMQ I/O threads."""
    seconds = 0.0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                if not f.read().startswith("ZMQbg/IO"):
                    continue
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


class _Viewer:
    """A viewer process (``python -m bench.attach --viewer`` or ``--stalled``) attached to
    ``publisher`` until ``stop``."""

    def __init__(self, publisher, kind: str, *args: str) -> None:
        fd, self.out = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        command = [sys.executable, "-m", "bench.attach", kind, publisher.endpoints.address, *args]
        self.proc = subprocess.Popen([*command, "--out", self.out], stdout=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        if not ready or self.proc.stdout.readline().strip() != b"attached":
            raise RuntimeError(f"the viewer did not attach: {command}")

    def stop(self, publisher) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        while publisher.counts().viewers:  # its bye, or its silence, reached the producer
            time.sleep(0.05)
        with open(self.out) as f:
            result = json.load(f)
        os.unlink(self.out)
        return result


def _latencies(emitted: dict, viewer: dict) -> tuple[list[float], list[float]]:
    """Seconds from emit to the viewer's channel and to its next frame, per chunk."""
    frames = viewer["frames"]
    to_channel, to_screen = [], []
    for episode, first, arrived in viewer["arrivals"]:
        sent = emitted.get((episode, first))
        i = bisect.bisect_left(frames, arrived)
        if sent is None or i == len(frames):
            continue
        to_channel.append(arrived - sent)
        to_screen.append(frames[i] - sent)
    return to_channel, to_screen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions (10)")
    p.add_argument("--episodes", type=int, default=4, help="rollouts per variant (4)")
    p.add_argument("--new-tokens", type=int, default=512, help="tokens per rollout (512)")
    p.add_argument("--stall-minutes", type=float, default=3.0, help="the long stall (3)")
    p.add_argument("--viewer", metavar="ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--stalled", metavar="ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--fps", type=float, default=20.0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.viewer:
        return _viewer(args.viewer, args.fps, args.out)
    if args.stalled:
        return _stalled(args.stalled, args.out)
    return _producer(args)


def _producer(args: argparse.Namespace) -> int:
    from bench import embedded
    from dash.sources import EMBEDDED
    from model.publish import Publisher
    from model.rollout import run_inference
    from model.sampling import GREEDY

    report.start("attach: publishing for viewers in other processes vs not publishing")
    emb = embedded.load()
    print(f"# model: {emb.label}", flush=True)
    directory = tempfile.mkdtemp(prefix="attach-", dir="/tmp")  # a short socket path
    publisher = Publisher(f"ipc://{directory}/p")
    tap = _Tap()
    episode = iter(range(10**9))

    def episodes(count: int):
        def run(sink) -> None:
            for _ in range(count):
                run_inference(
                    emb.model,
                    emb.processor,
                    prompt=emb.prompt,
                    image=emb.image,
                    sink=sink,
                    control=publisher.control,
                    sampling=GREEDY,
                    max_new_tokens=args.new_tokens,
                    episode=next(episode),
                    model_name=EMBEDDED.name,
                    random_init=emb.random_init,
                )

        return run

    def plain() -> dict:
        tap.target = tm.NullSink()
        return tap.measure(episodes(args.episodes))

    def published() -> dict:
        tap.target = publisher
        return tap.measure(episodes(args.episodes))

    def watched(*viewer_args: str) -> dict:
        viewer = _Viewer(publisher, *viewer_args)
        result = published()
        result["viewer"] = viewer.stop(publisher)
        return result

    variants = {
        "N": plain,
        "P": published,
        "V20": lambda: watched("--viewer", "--fps", "20"),
        "V5": lambda: watched("--viewer", "--fps", "5"),
        "S": lambda: watched("--stalled"),
    }
    for run in variants.values():
        run()  # compile, warm up
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for rep in range(args.reps):
        for name, run in variants.items():
            runs[name].append(run())
        print(
            f"rep {rep}: " + "  ".join(f"{k} {runs[k][-1]['tokens_per_s']:.0f}" for k in runs),
            flush=True,
        )

    def rates(name: str) -> list[float]:
        return [r["tokens_per_s"] for r in runs[name]]

    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        per_rep = [x / y for x, y in zip(rates(a), rates(b), strict=True)]
        return report.median(per_rep), per_rep

    shape = f"{args.new_tokens} new tokens x {args.episodes} rollouts per variant"
    lines = [("model", emb.label), ("decode", f"{shape}, {args.reps} interleaved reps")]
    for name in variants:
        lines.append((name, f"{report.median(rates(name)):.0f} tok/s (median)"))
    for pair, target in TARGETS:
        median, per_rep = ratio(*pair.split("/"))
        verdict = f" (target >= {target}: {report.verdict(median >= target)})" if target else ""
        spread = f"per rep {min(per_rep):.3f}-{max(per_rep):.3f}"
        lines.append((f"{pair} median", f"{median:.3f}{verdict}; {spread}"))
    for name in ("P", "V20", "V5", "S"):
        share = report.median([r["publish_cpu"] for r in runs[name]])
        note = "the rollout thread in emit and ZeroMQ's I/O thread, per second of the variant"
        lines.append((f"publishing CPU, {name}", f"{share:.1%} of a core ({note})"))
    for name in ("P", "V20"):
        for kind in ("chunk", "other"):
            us = [t / 1e3 for r in runs[name] for t in r[kind]]
            lines.append((f"emit per {kind}, {name}", _spread(us, "us", f"{len(us)} emits")))
    for name in ("V20", "V5"):
        to_channel, to_screen = [], []
        for r in runs[name]:
            channel, screen = _latencies(tap.emitted, r["viewer"])
            to_channel += channel
            to_screen += screen
        ms = [t * 1e3 for t in to_screen]
        met = report.verdict(report.percentile(ms, 99) <= LATENCY_P99_MS)
        target = f"target p99 <= {LATENCY_P99_MS:.0f}: {met}" if name == "V20" else "no target"
        lines += [
            (f"emit to channel, {name}", _spread([t * 1e3 for t in to_channel], "ms", "")),
            (f"emit to screen, {name}", _spread(ms, "ms", f"{len(ms)} chunks; {target}")),
        ]
        share = report.median([r["viewer"]["cpu"] for r in runs[name]])
        lines.append((f"viewer CPU, {name}", f"{share:.0%} of a core while chunks arrived"))
        lost = sum(r["viewer"]["socket_lost"] for r in runs[name])
        dropped = sum(r["viewer"]["dropped"] for r in runs[name])
        fps = report.median([r["viewer"]["fps"] for r in runs[name]])
        seen = f"socket lost {lost} messages, channel dropped {dropped} tokens in all reps"
        lines.append((f"viewer {name}", f"{fps:.1f} FPS drawn; {seen}"))
    if args.stall_minutes > 0:
        lines += _long_stall(publisher, tap, episodes, args.stall_minutes)
    publisher.close()
    os.rmdir(directory)
    report.figures("attach: publishing for attached viewers", lines)
    return 0


def _long_stall(publisher, tap: _Tap, episodes, minutes: float) -> list[tuple[str, str]]:
    """Rollouts back to back for ``minutes`` with a stalled viewer attached: the producer's
    resident memory (VmRSS) every 15 s and its decode rate per quarter."""
    viewer = _Viewer(publisher, "--stalled")
    tap.target = publisher
    samples: list[tuple[float, float, float]] = []  # (seconds, RSS MB, tok/s)
    start = time.monotonic()
    while time.monotonic() - start < minutes * 60:
        tap.emitted.clear()  # only the latencies of the interleaved reps are kept
        rate = tap.measure(episodes(4))["tokens_per_s"]
        if not samples or time.monotonic() - start - samples[-1][0] >= 15:
            samples.append((time.monotonic() - start, _rss_mb(), rate))
            seconds, rss, _ = samples[-1]
            print(f"stall {seconds:.0f} s: RSS {rss:.1f} MB, {rate:.0f} tok/s", flush=True)
    attached = publisher.counts().viewers
    sent = publisher.counts().sent
    viewer.stop(publisher)
    rss = [m for _, m, _ in samples]
    first, last = samples[0], samples[-1]
    return [
        (
            f"stalled {minutes:g} min",
            f"RSS {first[1]:.1f} MB at {first[0]:.0f} s, {last[1]:.1f} MB at {last[0]:.0f} s, "
            f"max {max(rss):.1f} MB; {first[2]:.0f} then {last[2]:.0f} tok/s; "
            f"the viewer stayed attached: {attached == 1}; {sent} messages sent in all",
        )
    ]


def _spread(values: list[float], unit: str, note: str) -> str:
    median, p99 = report.median(values), report.percentile(values, 99)
    return f"median {median:.1f} {unit}, p99 {p99:.1f} {unit}" + (f" ({note})" if note else "")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


# --- the viewers' side ----------------------------------------------------------------


def _viewer(address: str, fps: float, out: str) -> int:
    """The attached dashboard on a pseudo-terminal until SIGTERM; writes what it saw."""
    import anyio

    from bench.headless import PseudoTerminal
    from dash import app, attach, state

    client = attach.Client(address)
    arrivals: list[tuple[int, int, float]] = []  # (episode, first, monotonic)
    cpu: list[float] = []  # this process's CPU seconds at the first and the last arrival

    def rollout(sink, control) -> None:
        class Tap:
            def emit(self, event) -> None:
                sink.emit(event)
                if isinstance(event, state.Snapshot) and not arrivals:
                    print("attached", flush=True)
                if isinstance(event, tm.DecodeChunk):
                    arrivals.append((event.episode, event.first, time.monotonic()))
                    now = time.process_time()
                    cpu[len(cpu[:1]) :] = [now]  # the first stays, the last is replaced

        client(Tap(), control)

    dashboard = app.App(
        rollout, app.Options(fps=fps), control=attach.RemoteControl(), meters=client.meters
    )
    with PseudoTerminal() as screen:
        anyio.run(dashboard.run, screen, backend="asyncio")
    frames = screen.frame_times
    start, end = (arrivals[0][2], arrivals[-1][2]) if arrivals else (0.0, 0.0)
    drawn = sum(start <= t <= end for t in frames)
    result = {
        "arrivals": arrivals,
        "frames": frames,
        "fps": drawn / (end - start) if end > start else 0.0,  # while chunks arrived
        "cpu": (cpu[-1] - cpu[0]) / (end - start) if end > start else 0.0,
        "socket_lost": client.socket_lost,
        "dropped": dashboard.channel.counts().dropped,
    }
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


def _stalled(address: str, out: str) -> int:
    """Attached and pinging, its data socket never read, until SIGTERM."""
    import zmq

    from model import endpoint, wire

    ends = endpoint.parse(address)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 1
    sub.subscribe(b"")
    sub.connect(ends.data)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(ends.control)
    dealer.send_multipart(wire.encode({"op": "hello"}))
    dealer.poll(10_000)
    print("attached", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.3):
        dealer.send_multipart(wire.encode({"op": "ping"}))
        while dealer.poll(0):
            dealer.recv_multipart()
    dealer.send_multipart(wire.encode({"op": "bye"}))
    dealer.close(linger=1000)
    sub.close(linger=0)
    ctx.term()
    with open(out, "w") as f:
        json.dump(
            {"arrivals": [], "frames": [], "fps": 0, "cpu": 0, "socket_lost": 0, "dropped": 0}, f
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
