"""The handoff from the rollout thread to the UI: it drops, it never waits.

``emit`` (any thread) appends the event to a pending batch and returns at once: no round
trip to the UI, and normally no system call. On the event loop, the pending batch is
delivered every ``FLUSH_S`` by a timer, at the start of every ``drain``, and as soon as half
of ``max_in_flight`` events are pending (then ``emit`` wakes the loop with
``loop.call_soon_threadsafe``, once per batch). Waking the loop for every event would cost the
UI thread a loop pass per event, and the producer a write to the loop's self-pipe, a system
call that releases the GIL (getting it back can mean waiting for a frame to finish). At most
``max_in_flight`` events may be pending; beyond that (the event loop is busy, e.g. rendering)
the event is dropped. Delivery is ``send_nowait`` of each pending event into a bounded anyio
memory object stream; when the UI has not drained it (``WouldBlock``) the event is dropped.
Both drops are counted, so on the event loop thread at any moment

    sent = received + dropped + in_flight + buffered

and once the producer stopped and the loop delivered everything, sent = received + dropped.
Every count and bound is in events, a ``DecodeChunk`` counting as one per token (what it
stands for, and what it holds in memory): memory is bounded by ``max_in_flight + capacity``
events' worth (or one chunk larger than a bound, taken only when nothing else is held).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time

import anyio

from model import telemetry as tm

RATE_WINDOW_S = 1.0
FLUSH_S = 0.01  # pending events reach the stream at least this often


@dataclasses.dataclass(frozen=True)
class ChannelCounts:
    """Events so far, a ``DecodeChunk`` counting one per token (``size``)."""

    sent: int
    received: int
    dropped: int
    in_flight: int
    buffered: int
    receive_rate: float  # events per second received over the last second


def size(event: tm.Event) -> int:
    """The events ``event`` counts as: a ``DecodeChunk`` one per token, any other one."""
    return len(event) if isinstance(event, tm.DecodeChunk) else 1


class DroppingChannel:
    """A ``Sink`` whose ``emit`` is safe from any thread and never blocks on the UI.
    Create it on the event loop thread (inside ``anyio.run``)."""

    def __init__(self, capacity: int = 1024, max_in_flight: int = 256) -> None:
        self._loop = asyncio.get_running_loop()
        self._send, self._receive = anyio.create_memory_object_stream[tm.Event](capacity)
        self._capacity = capacity
        self._max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        self._pending: list[tm.Event] = []  # emitted, not yet delivered
        self._pending_size = 0  # the events they count as (``size``)
        self._buffered = 0  # the events the stream holds count as (event loop thread)
        self._wake_at = max(1, max_in_flight // 2)  # pending events that wake the loop
        self._scheduled = False  # a wake-up delivery is scheduled
        self._received = 0
        # (time, received so far) at each drain over the last second, for the rate
        self._marks = collections.deque([(time.monotonic(), 0)])
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    # --- producer side (any thread) ---

    def emit(self, event: tm.Event) -> None:
        n = size(event)
        with self._lock:
            self._sent += n
            if self._pending and self._pending_size + n > self._max_in_flight:
                self._dropped += n
                return
            self._pending.append(event)
            self._pending_size += n
            if self._scheduled or self._pending_size < self._wake_at:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop has closed: nobody will read it
            with self._lock:
                self._dropped += self._pending_size
                self._pending.clear()
                self._pending_size = 0
                self._scheduled = False

    # --- consumer side (event loop thread) ---

    def _tick(self) -> None:
        self._deliver()
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _deliver(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._pending_size = 0
            self._scheduled = False
        dropped = 0
        for event in batch:
            n = size(event)
            if self._buffered and self._buffered + n > self._capacity:
                dropped += n  # the UI has not drained what the stream holds
                continue
            try:
                self._send.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                dropped += n
                continue
            self._buffered += n
        with self._lock:
            self._dropped += dropped

    def drain(self) -> list[tm.Event]:
        """Every event emitted, not dropped and not yet received, oldest first (never waits)."""
        self._deliver()
        events: list[tm.Event] = []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except anyio.WouldBlock:
                break
        received = sum(map(size, events))
        self._buffered -= received
        with self._lock:
            self._received += received
        now = time.monotonic()
        self._marks.append((now, self._received))
        while len(self._marks) > 2 and now - self._marks[1][0] >= RATE_WINDOW_S:
            self._marks.popleft()
        return events

    def counts(self) -> ChannelCounts:
        with self._lock:
            sent, received, dropped = self._sent, self._received, self._dropped
            in_flight = self._pending_size
        rate = 0.0
        if len(self._marks) >= 2:
            (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return ChannelCounts(sent, received, dropped, in_flight, self._buffered, rate)

    def close(self) -> None:
        self._timer.cancel()
        self._send.close()
        self._receive.close()
