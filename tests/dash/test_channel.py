import threading
import tracemalloc

import anyio

from dash.channel import DroppingChannel
from model import telemetry as tm
from tests.dash import events as ev

EVENTS = 100_000
EVENT = tm.PhaseEvent(phase="decode", active=True, elapsed_ms=0.0)


def _producer(channel, n=EVENTS):
    def produce():
        for _ in range(n):
            channel.emit(EVENT)

    return threading.Thread(target=produce)


def _balanced(counts) -> bool:
    return counts.sent == counts.received + counts.dropped + counts.buffered


def test_producer_finishes_while_the_event_loop_is_frozen():
    async def main():
        channel = DroppingChannel(capacity=32)
        thread = _producer(channel)
        thread.start()
        # Freeze the event loop itself (as a long render would) until the producer is
        # done: if emit ever waited for the loop, this join would time out.
        thread.join(timeout=60)
        assert not thread.is_alive()
        frozen = channel.counts()
        assert frozen.sent == EVENTS
        assert frozen.buffered == 32  # bounded: the rest were dropped at emit
        assert frozen.dropped == EVENTS - 32
        received = channel.drain()
        counts = channel.counts()
        assert len(received) == counts.received == 32
        assert counts.sent == counts.received + counts.dropped

    anyio.run(main)


def test_stalled_consumer_keeps_memory_bounded_and_accounting_exact():
    async def main():
        channel = DroppingChannel(capacity=64)
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        thread = _producer(channel)
        thread.start()
        # The loop runs but the UI never drains while producing.
        while thread.is_alive():
            counts = channel.counts()
            assert counts.buffered <= 64 and _balanced(counts)
            await anyio.sleep(0.005)
        thread.join()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak - base < 2_000_000  # 100k queued events would take far more
        received = channel.drain()
        counts = channel.counts()
        assert counts.buffered == 0
        assert len(received) == counts.received == 64
        assert counts.sent == EVENTS == counts.received + counts.dropped

    anyio.run(main)


def test_draining_consumer_receives_everything_in_order_and_measures_rate():
    async def main():
        channel = DroppingChannel(capacity=1024)
        events = [
            tm.PhaseEvent(phase="decode", active=True, elapsed_ms=float(i)) for i in range(500)
        ]
        for e in events:
            channel.emit(e)
        assert channel.counts().buffered == 500
        got = channel.drain()
        assert got == events
        await anyio.sleep(0.05)
        channel.drain()
        counts = channel.counts()
        assert counts.sent == counts.received == 500 and counts.dropped == 0
        assert counts.receive_rate > 0

    anyio.run(main)


def test_producer_threads_and_a_draining_loop_keep_order_and_exact_counts():
    """4 threads emit 20k numbered events each while the loop drains every millisecond:
    what arrives is each thread's events in its order, and the counts balance throughout."""
    threads, per_thread = 4, 20_000
    channel = DroppingChannel(capacity=64)

    def produce(phase: str) -> None:
        for i in range(per_thread):
            channel.emit(tm.PhaseEvent(phase=phase, active=True, elapsed_ms=float(i)))

    workers = [threading.Thread(target=produce, args=(str(t),)) for t in range(threads)]

    async def main() -> list:
        received = []
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            received += channel.drain()
            assert _balanced(channel.counts())
            await anyio.sleep(0.001)
        for worker in workers:
            worker.join()
        return received + channel.drain()

    received = anyio.run(main)
    counts = channel.counts()
    assert counts.sent == threads * per_thread == counts.received + counts.dropped
    assert counts.received == len(received) > 0
    for t in range(threads):
        numbers = [e.elapsed_ms for e in received if e.phase == str(t)]
        assert numbers == sorted(set(numbers))


def test_decode_chunks_count_as_their_tokens():
    """Chunks of 10 tokens into a stream of 4 events: 4 chunks are held, 40 tokens, and
    every count is in tokens; a chunk of any size takes one place."""
    chunk = ev.chunk([ev.decode(step) for step in range(10)])
    channel = DroppingChannel(capacity=4)
    for _ in range(10):
        channel.emit(chunk)
    counts = channel.counts()
    assert (counts.sent, counts.buffered, counts.dropped) == (100, 40, 60)
    channel.emit(EVENT)  # full: one more dropped
    counts = channel.counts()
    assert (counts.sent, counts.buffered, counts.dropped) == (101, 40, 61)
    received = channel.drain()
    counts = channel.counts()
    assert received == [chunk] * 4 and counts.received == 40 and counts.buffered == 0
    assert counts.sent == 101 == counts.received + counts.dropped
    big = ev.chunk([ev.decode(step) for step in range(40)])
    channel.emit(big)
    channel.emit(EVENT)
    assert channel.counts().buffered == 41
    assert channel.drain() == [big, EVENT]
    counts = channel.counts()
    assert counts.sent == 142 == counts.received + counts.dropped


def test_close_drops_what_is_buffered_and_every_later_emit():
    chunk = ev.chunk([ev.decode(step) for step in range(10)])
    channel = DroppingChannel(capacity=8)
    channel.emit(EVENT)
    channel.emit(chunk)
    channel.close()
    channel.emit(chunk)  # no error: the producer may outlive the UI
    counts = channel.counts()
    assert (counts.sent, counts.received, counts.dropped, counts.buffered) == (21, 0, 21, 0)
