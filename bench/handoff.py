"""What publishing one event costs the producer.

``dash.channel.DroppingChannel.emit`` is timed call by call from a producer thread while the
channel's event loop (the UI thread, this process's main thread, as in the live app) is

1. idle: it only drains the channel at 20 FPS;
2. busy: it renders full 160x48 dashboard frames back to back (``dash.layout.Dashboard`` on a
   view folded from a real rollout), draining between frames;
3. blocked: a loop callback sleeps 200 ms at a time (the loop runs nothing meanwhile);

and then, with ``tracemalloc`` on, 100k events are sent to a loop that is stalled for the whole
time, to show memory stays within the channel's bound (``CAPACITY`` events) instead of
growing with the events sent; once as chunks of one token (as a loop calling
``sink.decode`` sends them), once as the rollout's ``DecodeChunk``s (one per chunk of decode
steps, up to ``CHUNK`` tokens; the channel counts each as its tokens), a ``CHUNK``-th as
many emits. The events are copies
of a real rollout's (embedded model), fresh arrays each, as a producer makes them.
Target: median emit <= 20 us, and no emit waits for the loop.

    python -m bench.handoff [--events N] [--stalled N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import threading
import time
import tracemalloc

import anyio
import numpy as np

from bench import embedded, report
from dash import state
from dash.app import SWITCH_INTERVAL_S
from dash.channel import CAPACITY, DroppingChannel, size
from dash.layout import Dashboard
from model import telemetry as tm
from model.decode import CHUNK

TARGET_US = 20.0
PACE_S = 0.0005  # the producer's pause between events (a fast decode loop's rate)
BLOCK_S = 0.2


def copy_event(event: tm.DecodeChunk, first: int) -> tm.DecodeChunk:
    """``event`` as a producer would make it anew: fresh arrays, the given first step."""
    fresh = {
        f.name: getattr(event, f.name).copy()
        for f in dataclasses.fields(event)
        if isinstance(getattr(event, f.name), np.ndarray)
    }
    stats = tm.HeadStats(*(np.array(a) for a in dataclasses.astuple(event.stats)))
    return dataclasses.replace(event, **fresh, stats=stats, first=first)


def event_bytes(event) -> int:
    """Bytes of the numpy arrays an event holds (its payload; object headers not counted)."""
    if isinstance(event, np.ndarray):
        return event.nbytes
    if dataclasses.is_dataclass(event):
        return sum(event_bytes(getattr(event, f.name)) for f in dataclasses.fields(event))
    if isinstance(event, tuple | list):
        return sum(event_bytes(x) for x in event)
    return 0


def produce(channel: DroppingChannel, events: list, times: np.ndarray, pace_s: float) -> None:
    """Emit ``len(times)`` fresh copies of ``events`` (cycled), one every ``pace_s``, noting
    each emit's duration in ``times`` (microseconds; allocated by the caller, so a memory
    measurement does not count it)."""
    for i in range(len(times)):
        event = copy_event(events[i % len(events)], i)
        start = time.perf_counter_ns()
        channel.emit(event)
        times[i] = (time.perf_counter_ns() - start) / 1e3
        if pace_s:
            time.sleep(pace_s)


async def _drain_at(channel: DroppingChannel, fps: float, done: threading.Event) -> None:
    while not done.is_set():
        channel.drain()
        await anyio.sleep(1 / fps)


async def _render_continuously(channel, view, done: threading.Event) -> int:
    """Full frames back to back, draining the channel between frames; returns the count."""
    dashboard, frames = Dashboard(), 0
    while not done.is_set():
        channel.drain()
        dashboard.show(state.Frame(view, state.UiState(), state.Meters(elapsed_s=frames)))
        dashboard.render((160, 48))
        frames += 1
        await anyio.sleep(0)
    return frames


async def _block_repeatedly(channel, done: threading.Event) -> None:
    """Block the loop BLOCK_S at a time (a callback that sleeps), draining in between."""
    loop = asyncio.get_running_loop()
    while not done.is_set():
        loop.call_soon(time.sleep, BLOCK_S)
        await anyio.sleep(0.1)
        channel.drain()


async def measure(events: list, view: state.View, count: int) -> dict:
    """Emit times (us) per phase and the busy phase's frame rate."""
    channel = DroppingChannel()
    results: dict = {}

    async def phase(name, ui) -> None:
        done = threading.Event()

        async def producer() -> None:
            results[name] = np.empty(count)
            await anyio.to_thread.run_sync(produce, channel, events, results[name], PACE_S)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ui, done)
            tg.start_soon(producer)

    await phase("idle", lambda done: _drain_at(channel, 20.0, done))
    print(f"idle loop: median emit {np.median(results['idle']):.1f} us", flush=True)
    frames: dict = {}

    async def busy(done) -> None:
        frames["busy"] = await _render_continuously(channel, view, done)

    start = time.monotonic()
    await phase("busy", busy)
    results["busy_fps"] = frames["busy"] / (time.monotonic() - start)
    print(f"rendering loop: median emit {np.median(results['busy']):.1f} us", flush=True)
    await phase("blocked", lambda done: _block_repeatedly(channel, done))
    print(f"blocked loop: median emit {np.median(results['blocked']):.1f} us", flush=True)
    channel.close()

    return results


async def stalled_run(events: list, stalled: int) -> dict:
    """``stalled`` emits of copies of ``events`` to a loop that stays blocked meanwhile (this
    coroutine waits synchronously), with ``tracemalloc`` on; then the loop drains what the
    channel holds. Emit times (us), the peak of memory, the bytes of one token's arrays, the
    channel's bound in tokens and bytes of arrays (``CAPACITY`` of the largest events) and the
    counts."""
    stall = DroppingChannel()
    times = np.empty(stalled)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    worker = threading.Thread(target=produce, args=(stall, events, times, 0.0))
    worker.start()
    worker.join()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stall.drain()
    counts = stall.counts()
    stall.close()
    return {
        "emit_us": times,
        "peak_bytes": peak - base,
        "token_bytes": event_bytes(copy_event(events[-1], 0)) / size(events[-1]),
        "bound_tokens": CAPACITY * max(map(size, events)),
        "bound_bytes": CAPACITY * max(map(event_bytes, events)),
        "counts": counts,
    }


def _stats(times: np.ndarray) -> str:
    return (
        f"median {np.median(times):.1f} us, p99 {np.percentile(times, 99):.1f} us, "
        f"max {times.max():.0f} us ({len(times)} emits)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=5000, help="emits per phase (5000)")
    p.add_argument("--stalled", type=int, default=100_000, help="emits to a stalled loop")
    args = p.parse_args(argv)
    report.start("handoff: DroppingChannel.emit as the producer sees it")
    emb = embedded.load()
    events = embedded.recorded_events(emb)
    view = state.View()
    for event in events:
        view = state.reduce(view, event)
    chunks = [e for e in events if isinstance(e, tm.DecodeChunk)]
    tokens = [tm.from_record(r) for chunk in chunks for r in tm.records(chunk)]
    # the live app runs with its own GIL switch interval (dash.app.SWITCH_INTERVAL_S)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        r = anyio.run(measure, tokens, view, args.events, backend="asyncio")
        stalls = {
            "tokens": anyio.run(stalled_run, tokens, args.stalled, backend="asyncio"),
            "chunks": anyio.run(stalled_run, chunks, args.stalled // CHUNK, backend="asyncio"),
        }
    finally:
        sys.setswitchinterval(switch_interval)

    token_bytes = stalls["tokens"]["token_bytes"]
    median_all = max(float(np.median(r[k])) for k in ("idle", "busy", "blocked"))
    lines = [
        ("events", f"real tokens of {emb.label}, {token_bytes:.0f} B of arrays each"),
        ("loop idle (20 FPS drain)", _stats(r["idle"])),
        (f"loop rendering ({r['busy_fps']:.0f} FPS)", _stats(r["busy"])),
        (f"loop blocked {BLOCK_S * 1e3:.0f} ms of every 300", _stats(r["blocked"])),
    ]
    for name, stall in stalls.items():
        counts, per_token = stall["counts"], stall["token_bytes"]
        lines += [
            (f"stalled loop, {name}", _stats(stall["emit_us"])),
            (
                "  memory",
                f"tracemalloc peak {stall['peak_bytes'] / 1e6:.2f} MB; channel bound "
                f"{CAPACITY} events = {stall['bound_tokens']} tokens = "
                f"{stall['bound_bytes'] / 1e6:.2f} MB of arrays; "
                f"unbounded would hold {counts.sent * per_token / 1e6:.0f} MB",
            ),
            (
                "  counts (tokens)",
                f"sent {counts.sent}, received {counts.received}, dropped {counts.dropped}",
            ),
        ]
    lines.append(
        (
            "median emit (worst phase)",
            f"{median_all:.1f} us (target <= {TARGET_US:.0f}: "
            f"{report.verdict(median_all <= TARGET_US)})",
        )
    )
    report.figures("handoff: what one emit costs the producer", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
