import threading
import tracemalloc

import anyio

from dash.channel import DroppingChannel
from model import telemetry as tm
from tests.dash import events as ev

EVENTS = 100_000
EVENT = tm.PhaseEvent("decode", True, 0.0)


def _producer(channel, n=EVENTS):
    def produce():
        for _ in range(n):
            channel.emit(EVENT)

    return threading.Thread(target=produce)


async def _settle(channel):
    """Let the loop run every delivery already scheduled."""
    while channel.counts().in_flight:
        await anyio.sleep(0.001)


def test_producer_finishes_while_the_event_loop_is_frozen():
    async def main():
        channel = DroppingChannel(capacity=64, max_in_flight=32)
        thread = _producer(channel)
        thread.start()
        # Freeze the event loop itself (as a long render would) until the producer is
        # done: if emit ever waited for the loop, this join would time out.
        thread.join(timeout=60)
        assert not thread.is_alive()
        frozen = channel.counts()
        assert frozen.sent == EVENTS
        assert frozen.in_flight == 32  # bounded: the rest were dropped at emit
        assert frozen.dropped == EVENTS - 32
        await _settle(channel)
        received = channel.drain()
        counts = channel.counts()
        assert len(received) == counts.received == 32
        assert counts.sent == counts.received + counts.dropped

    anyio.run(main)


def test_stalled_consumer_keeps_memory_bounded_and_accounting_exact():
    async def main():
        channel = DroppingChannel(capacity=64, max_in_flight=32)
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        thread = _producer(channel)
        thread.start()
        # The loop runs (deliveries happen) but the UI never drains while producing.
        while thread.is_alive():
            counts = channel.counts()
            assert counts.in_flight <= 32 and counts.buffered <= 64
            await anyio.sleep(0.005)
        thread.join()
        await _settle(channel)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak - base < 2_000_000  # 100k queued events would take far more
        received = channel.drain()
        counts = channel.counts()
        assert counts.buffered == 0 and counts.in_flight == 0
        assert len(received) == counts.received <= 64
        assert counts.sent == EVENTS == counts.received + counts.dropped

    anyio.run(main)


def test_draining_consumer_receives_everything_in_order_and_measures_rate():
    async def main():
        channel = DroppingChannel(capacity=1024, max_in_flight=1024)
        events = [tm.PhaseEvent("decode", True, float(i)) for i in range(500)]
        for e in events:
            channel.emit(e)
        await _settle(channel)
        got = channel.drain()
        assert got == events
        await anyio.sleep(0.05)
        channel.drain()
        counts = channel.counts()
        assert counts.sent == counts.received == 500 and counts.dropped == 0
        assert counts.receive_rate > 0

    anyio.run(main)


def test_decode_chunks_count_and_are_bounded_as_their_tokens():
    """Chunks of 10 tokens into bounds of 32 in flight and 64 buffered: at most 3 chunks
    wait to be delivered and 6 in the stream; every count is in tokens; a chunk larger than
    a bound passes only when nothing else is held."""
    chunk = ev.chunk([ev.decode(step) for step in range(10)])

    async def main():
        channel = DroppingChannel(capacity=64, max_in_flight=32)
        for _ in range(100):
            channel.emit(chunk)
        frozen = channel.counts()
        assert (frozen.sent, frozen.in_flight, frozen.dropped) == (1000, 30, 970)
        await _settle(channel)
        for _ in range(3):
            channel.emit(chunk)
        await _settle(channel)
        assert channel.counts().buffered == 60
        channel.emit(chunk)  # 70 tokens would pass the stream's 64: dropped on delivery
        await _settle(channel)
        counts = channel.counts()
        assert (counts.buffered, counts.dropped) == (60, 980)
        received = channel.drain()
        counts = channel.counts()
        assert len(received) == 6 and counts.received == 60 and counts.buffered == 0
        assert counts.sent == 1040 == counts.received + counts.dropped
        big = ev.chunk([ev.decode(step) for step in range(40)])
        channel.emit(big)
        channel.emit(chunk)  # 40 + 10 tokens would pass 32 in flight
        await _settle(channel)
        assert channel.drain() == [big]

    anyio.run(main)
