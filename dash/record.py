"""Recording and replaying telemetry as JSON Lines.

One record per line: ``{"type": <kind>, "t": <seconds since the recording started>,
...fields}`` (``model.telemetry.records`` plus ``t``); a ``DecodeChunk`` is written as one
``decode`` record per token, and read back as chunks of one token. Replay paces the events by
``t`` divided by ``--speed``; a file without ``t`` (written by another program) is paced
by the decode / prefill events' own ``elapsed_ms``. A decode event waits at
``control.gate()``, so pause and single step work in replay as they do live.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

from model import telemetry as tm

SLEEP_SLICE_S = 0.05  # replay sleeps in slices this long so quitting stays prompt


class ReplayError(ValueError):
    """A recording that cannot be played (one line, naming the line number)."""


class Recorder:
    """A sink that appends every event to a JSON Lines file, then passes it on."""

    def __init__(self, path: str | Path, target: tm.Sink | None = None) -> None:
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._target = target
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def write(self, event: tm.Event) -> None:
        """Append ``event``'s records (a ``DecodeChunk`` one line per token)."""
        t = round(time.monotonic() - self._start, 6)
        lines = [json.dumps({**r, "t": t}, ensure_ascii=False) for r in tm.records(event)]
        with self._lock:
            if not self._file.closed:
                self._file.writelines(line + "\n" for line in lines)

    def emit(self, event: tm.Event) -> None:
        self.write(event)
        if self._target is not None:
            self._target.emit(event)

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclasses.dataclass(frozen=True)
class Recording:
    path: str
    events: tuple[tuple[float | None, tm.Event], ...]  # (t, event)
    skipped: int  # records of an unknown type


def load(path: str | Path) -> Recording:
    """Parse a whole recording; raises ``ReplayError`` naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"--replay {path}: no such file")
    events: list[tuple[float | None, tm.Event]] = []
    skipped = 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    event = tm.from_record(record)
                except json.JSONDecodeError as e:
                    raise ReplayError(
                        f"--replay {path}: line {number}: not JSON ({e.msg})"
                    ) from None
                except tm.UnknownEventType:
                    skipped += 1
                    continue
                except tm.RecordError as e:
                    raise ReplayError(f"--replay {path}: line {number}: {e}") from None
                t = record.get("t")
                events.append((float(t) if isinstance(t, (int, float)) else None, event))
    except UnicodeDecodeError as e:
        raise ReplayError(f"--replay {path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ReplayError(f"--replay {path}: {e.strerror}") from None
    return Recording(str(path), tuple(events), skipped)


def _delay(prev_t: float | None, t: float | None, event: tm.Event) -> float:
    """Seconds between the previous event and this one at speed 1."""
    if t is not None and prev_t is not None:
        return max(0.0, t - prev_t)
    if t is None and isinstance(event, (tm.DecodeChunk, tm.PrefillEvent)):
        ms = event.elapsed_ms
        return max(0.0, ms / 1000.0) if isinstance(ms, (int, float)) else 0.0
    return 0.0


def _sleep(seconds: float, control: tm.RolloutControl) -> bool:
    """Sleep unless stopped; False once stop was requested."""
    end = time.monotonic() + seconds
    while not control.stopped:
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, SLEEP_SLICE_S))
    return False


def replay_rollout(recording: Recording, speed: float = 1.0):
    """A rollout function that plays ``recording`` at ``speed``."""

    def rollout(sink, control: tm.RolloutControl) -> None:
        prev_t = None
        for t, event in recording.events:
            if not _sleep(_delay(prev_t, t, event) / speed, control):
                return
            prev_t = t if t is not None else prev_t
            if isinstance(event, tm.DecodeChunk) and not control.gate():
                return
            sink.emit(event)

    return rollout
