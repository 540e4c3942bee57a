import json
import threading
import time

import numpy as np
import pytest

from dash import record
from model import telemetry as tm
from tests.dash import events as ev


class ListSink:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def test_recorder_writes_every_event_with_time_and_passes_it_on(tmp_path):
    path = tmp_path / "out.jsonl"
    inner = ListSink()
    rec = record.Recorder(path, inner)
    events = ev.episode_events(steps=2)
    for e in events:
        rec.emit(e)
    rec.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == [e.kind for e in events]
    assert all(isinstance(line["t"], float) for line in lines)
    assert inner.events == events
    loaded = record.load(path)
    assert len(loaded.events) == len(events) and loaded.skipped == 0
    np.testing.assert_array_equal(loaded.events[-1][1].attn_row(), events[-1].attn_row())


def test_recorder_writes_a_decode_chunk_as_one_record_per_token(tmp_path):
    path = tmp_path / "out.jsonl"
    inner = ListSink()
    rec = record.Recorder(path, inner)
    tokens = [ev.decode(step) for step in range(3)]
    chunk = ev.chunk(tokens)
    rec.emit(chunk)
    rec.close()
    assert inner.events == [chunk]  # passed on as it came
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2] and {line["type"] for line in lines} == {
        "decode"
    }
    loaded = [e for _, e in record.load(path).events]
    assert [ev.record(e) for e in loaded] == [ev.record(e) for e in tokens]


def test_load_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(ev.record(ev.run_info()))
    path.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(record.ReplayError, match=r"line 4: not JSON"):
        record.load(path)
    path.write_text(f'{good}\n{{"type": "phase", "phase": "decode"}}\n')
    with pytest.raises(record.ReplayError, match=r"line 2: PhaseEvent: missing field"):
        record.load(path)
    with pytest.raises(record.ReplayError, match="no such file"):
        record.load(tmp_path / "missing.jsonl")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(record.ReplayError, match="not UTF-8"):
        record.load(path)


def test_unknown_types_are_skipped_and_counted(tmp_path):
    path = tmp_path / "x.jsonl"
    good = json.dumps(ev.record(ev.run_info()))
    path.write_text(f'{good}\n{{"type": "telepathy"}}\n{{"type": "hologram", "x": 1}}\n')
    loaded = record.load(path)
    assert loaded.skipped == 2 and len(loaded.events) == 1


def _recording(n=5, dt=None):
    items = [(None if dt is None else i * dt, e) for i, e in enumerate(ev.episode_events(n))]
    return record.Recording("mem", tuple(items), 0)


def test_replay_honours_time_speed_pause_and_stop():
    rec = _recording(3, dt=0.05)  # 8 events over 0.35 s
    sink, control = ListSink(), tm.RolloutControl()
    t0 = time.monotonic()
    record.replay_rollout(rec, speed=2.0)(sink, control)
    assert 0.15 <= time.monotonic() - t0 < 1.0
    assert sink.events == [e for _, e in rec.events]

    sink, control = ListSink(), tm.RolloutControl()
    control.set_paused(True)
    thread = threading.Thread(target=record.replay_rollout(rec, speed=100.0), args=(sink, control))
    thread.start()
    time.sleep(0.2)
    assert not any(isinstance(e, tm.DecodeChunk) for e in sink.events)  # waits at the gate
    control.step_once()
    time.sleep(0.2)
    assert sum(isinstance(e, tm.DecodeChunk) for e in sink.events) == 1
    control.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_replay_without_times_uses_elapsed_ms():
    rec = _recording(2)  # prefill 42 ms, two decodes of 4 ms
    sink, control = ListSink(), tm.RolloutControl()
    t0 = time.monotonic()
    record.replay_rollout(rec)(sink, control)
    assert 0.045 <= time.monotonic() - t0 < 0.5
