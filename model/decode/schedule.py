"""The host side of the decode loop: which rows have stopped and the tokens they kept
(EOS bookkeeping), how many steps the next chunk runs, and the pause / single step /
stop protocol of ``RolloutControl``.

A chunk is sized to take about ``CHUNK_SECONDS`` at the measured time per step (one step
until measured, one while paused, at most ``CHUNK``), so a slow model still reaches the
viewer a few tokens at a time. Chunk ``c + 1`` is dispatched before chunk ``c``'s results
are fetched, so the host's work on a chunk (unpacking, its callback) overlaps the device
computing the next; while paused, the last computed chunk is delivered before waiting, so
the viewer sees every step the device has run.

A chunk's time runs from its dispatch, or from the previous chunk's fetch if that came
later, to its own fetch. Time spent compiling in between (``model.compile_clock``) is no
decode time: such a chunk's time is unknown (``None``) and does not size the next chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from model import compile_clock
from model.decode.forward import CHUNK
from model.telemetry import RolloutControl

CHUNK_SECONDS = 0.05  # a chunk is sized to take about this long: a frame at 20 FPS


class Tokens:
    """Every row's new tokens as their steps arrive, each row's kept up to and including
    its EOS: ``out [B, max_new_tokens]`` (the pad id after it) and ``lengths [B]``."""

    def __init__(self, batch: int, max_new_tokens: int, eos: np.ndarray) -> None:
        self.eos = eos
        self.out = np.full((batch, max_new_tokens), eos[0] if len(eos) else 0, np.int32)
        self.lengths = np.zeros(batch, np.int32)
        self.finished = np.zeros(batch, bool)

    def record(self, first: int, new: np.ndarray) -> np.ndarray:
        """Keep the tokens ``new [n, B]`` of steps ``first, first + 1, ...``; returns which
        rows had stopped before each of those steps, ``[n, B]`` (their tokens discarded)."""
        ended = self.finished | np.logical_or.accumulate(np.isin(new, self.eos), axis=0)
        before = np.concatenate([self.finished[None], ended[:-1]])
        np.copyto(self.out[:, first : first + len(new)], new.T, where=~before.T)
        self.lengths += (~before).sum(0, dtype=np.int32)
        self.finished = ended[-1]
        return before


class Schedule:
    """The decode loop's chunks: ``chunks()`` yields each next chunk's proposed size, the
    caller dispatches a chunk (of that size, or of the size all processes agreed on) and hands
    its size, the selection it used and its device results to ``dispatched``.
    ``deliver(first, selection, results, seconds)`` is called for each chunk once its
    results are on the host, in order, with the chunk's first step and time (``None`` when
    it included compiling); it returns the number of steps the chunk ran."""

    def __init__(
        self,
        tokens: Tokens,
        max_new_tokens: int,
        control: RolloutControl | None,
        deliver: Callable[[int, np.ndarray, tuple, float | None], int],
    ) -> None:
        self.tokens = tokens
        self.max_new_tokens = max_new_tokens
        self.control = control
        self.deliver = deliver
        self.step = 1  # the next step to dispatch (step 0's token came from the prefill)
        self.steps_run = 0
        self.step_seconds: float | None = None  # measured time per step
        self.decode_seconds = 0.0  # the measured chunks' time
        self.last = time.perf_counter()  # the previous fetch
        self._compiled = compile_clock.seconds()  # this thread's compile time at that fetch
        self._pending: tuple[int, np.ndarray, tuple, float] | None = None

    def chunks(self) -> Iterator[int]:
        while self.step < self.max_new_tokens and not self.tokens.finished.all():
            if self.control is not None:
                if self.control.paused:
                    self._fetch()
                if not self.control.gate():
                    break
            yield self._size()
        self._fetch()

    def dispatched(self, count: int, selection: np.ndarray, results) -> None:
        """The chunk of ``count`` steps just dispatched with ``selection``, its ``results``
        still on the device: their copies start now, and the previous chunk is fetched while
        the device computes this one."""
        for a in jax.tree.leaves(results):
            a.copy_to_host_async()
        self._fetch()
        self._pending = (self.step, selection, results, time.perf_counter())
        self.step += count

    def _size(self) -> int:
        if (self.control is not None and self.control.paused) or self.step_seconds is None:
            count = 1
        else:
            count = max(int(CHUNK_SECONDS / self.step_seconds), 1)
        return min(count, CHUNK, self.max_new_tokens - self.step)

    def _fetch(self) -> None:
        if self._pending is None:
            return
        first, selection, results, dispatched = self._pending
        self._pending = None
        results = tuple(np.asarray(a) for a in jax.tree.leaves(results))
        now, compiled = time.perf_counter(), compile_clock.seconds()
        seconds = None if compiled > self._compiled else now - max(self.last, dispatched)
        self.last, self._compiled = now, compiled
        n = self.deliver(first, selection, results, seconds)
        self.steps_run += n  # n == 0: dispatched after the last row's EOS, nothing ran
        if n and seconds is not None:
            self.step_seconds = seconds / n
            self.decode_seconds += seconds
