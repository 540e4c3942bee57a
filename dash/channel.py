"""The handoff from the rollout thread to the UI: it drops, it never waits.

One buffer: a bounded anyio memory object stream of at most ``capacity`` events. ``emit``
(any thread) puts the event in with ``send_nowait`` and returns; when the stream is full (the
UI has not drained it: it is rendering, blocked, or gone) the event is dropped. The frame pump
calls ``drain``, which takes everything out with ``receive_nowait``. No task ever awaits the
stream's ``send`` or ``receive``, so it never has waiting tasks and both calls only touch its
deque: no call into the event loop, no system call. A lock makes each call one step with its
counts, so from any thread at any moment

    sent = received + dropped + buffered

and once drained, sent = received + dropped. Counts are in tokens (``size``: a
``DecodeChunk`` counts as its tokens, any other event as one); the bound is in events, so
memory is bounded by ``capacity`` events, a chunk being at most ``model.decode.CHUNK`` tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import anyio

from model import telemetry as tm

RATE_WINDOW_S = 1.0

# The pump drains once a frame (50 ms at 20 FPS). A rollout sends about one chunk a frame plus
# a few phase events; a loop that sends an event per token, some 2000 a second: 256 events
# hold a few frames of either, and a UI stalled longer drops instead of holding more.
CAPACITY = 256


@dataclasses.dataclass(frozen=True)
class ChannelCounts:
    """Events so far, a ``DecodeChunk`` counting one per token (``size``)."""

    sent: int
    received: int
    dropped: int
    buffered: int  # in the stream, not yet received
    receive_rate: float  # events per second received over the last second


def size(event: tm.Event) -> int:
    """The events ``event`` counts as: a ``DecodeChunk`` one per token, any other one."""
    return len(event) if isinstance(event, tm.DecodeChunk) else 1


class DroppingChannel:
    """A ``Sink`` whose ``emit`` is safe from any thread and never waits for the UI; the UI
    takes the events with ``drain``."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[tm.Event](capacity)
        self._lock = threading.Lock()  # held for one send or one drain, never across a wait
        self._sent = 0
        self._received = 0
        self._dropped = 0
        self._buffered = 0
        # (time, received so far) at each drain over the last second, for the rate
        self._marks = collections.deque([(time.monotonic(), 0)])

    def emit(self, event: tm.Event) -> None:
        n = size(event)
        with self._lock:
            self._sent += n
            try:
                self._send.send_nowait(event)
            except (anyio.WouldBlock, anyio.ClosedResourceError):  # full, or closed
                self._dropped += n
                return
            self._buffered += n

    def drain(self) -> list[tm.Event]:
        """Every event emitted, not dropped and not yet received, oldest first (never waits)."""
        with self._lock:
            events, tokens = self._take()
            self._received += tokens
            received = self._received
        now = time.monotonic()
        self._marks.append((now, received))
        while len(self._marks) > 2 and now - self._marks[1][0] >= RATE_WINDOW_S:
            self._marks.popleft()
        return events

    def _take(self) -> tuple[list[tm.Event], int]:
        """Everything the stream holds, oldest first, and its tokens (with the lock held)."""
        events: list[tm.Event] = []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except anyio.WouldBlock:
                break
        tokens = sum(map(size, events))
        self._buffered -= tokens
        return events, tokens

    def counts(self) -> ChannelCounts:
        with self._lock:
            counts = (self._sent, self._received, self._dropped, self._buffered)
        rate = 0.0
        if len(self._marks) >= 2:
            (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return ChannelCounts(*counts, rate)

    def close(self) -> None:
        """Drop what is still buffered; a later ``emit`` is dropped too."""
        with self._lock:
            self._dropped += self._take()[1]
            self._send.close()
            self._receive.close()
