import dataclasses
import json
import threading

import numpy as np
import pytest

from model import telemetry as tm
from tests.dash import events as ev


def _stats(layers=2, heads=4):
    rng = np.random.default_rng(0)
    f = lambda: rng.random((layers, heads), dtype=np.float32)  # noqa: E731
    return tm.HeadStats(f(), f(), f(), f(), rng.integers(0, 9, (layers, heads), dtype=np.int32))


def test_decode_event_round_trips_through_json():
    ev = tm.DecodeEvent(
        episode=1, sample=0, step=3, token_id=7, token_text="\x1b[31mred", prob=0.5,
        top_ids=np.array([7, 8], np.int32), top_probs=np.array([0.5, 0.2], np.float32),
        top_texts=("a", "b"), cache_len=12, cache_capacity=64, position=(10, 10, 10),
        stats=_stats(), layer=1, head=2, attn_row=np.linspace(0, 1, 12, dtype=np.float32),
        elapsed_ms=1.5, done=False,
    )  # fmt: skip
    back = tm.from_record(json.loads(json.dumps(tm.to_record(ev))))
    assert isinstance(back, tm.DecodeEvent)
    assert back.token_text == ev.token_text
    assert back.position == (10, 10, 10)
    np.testing.assert_array_equal(back.attn_row, ev.attn_row)
    np.testing.assert_array_equal(back.stats.argmax, ev.stats.argmax)
    assert back.stats.argmax.dtype == np.int32


def test_prefill_event_with_image_round_trips():
    img = tm.ImageInfo(span=(3, 19), grid_thw=(1, 8, 8), merge_size=2,
                       pixels=np.zeros((4, 4, 3), np.uint8))  # fmt: skip
    ev = tm.PrefillEvent(
        episode=0, sample=0, tokens=("a", "b"), token_ids=np.array([1, 2], np.int32),
        positions=np.zeros((3, 2), np.int32), images=(img,), vision_norm=1.0, text_norm=2.0,
        stats=_stats(), layer=0, head=0, attn_map=np.eye(2, dtype=np.float32), cache_len=2,
        cache_capacity=8, elapsed_ms=3.0,
    )  # fmt: skip
    back = tm.from_record(json.loads(json.dumps(tm.to_record(ev))))
    assert back.images[0].span == (3, 19)
    assert back.images[0].pixels.dtype == np.uint8


def test_unknown_type_and_missing_field():
    with pytest.raises(tm.UnknownEventType):
        tm.from_record({"type": "telepathy"})
    with pytest.raises(tm.RecordError, match="missing field"):
        tm.from_record({"type": "phase", "phase": "decode"})
    with pytest.raises(tm.RecordError):
        tm.from_record(["not", "a", "dict"])


def test_control_pause_step_stop():
    c = tm.RolloutControl()
    assert c.gate()
    c.set_paused(True)
    passed = []
    t = threading.Thread(target=lambda: passed.append(c.gate()))
    t.start()
    t.join(0.05)
    assert t.is_alive()  # paused: the rollout waits
    c.step_once()
    t.join(1)
    assert passed == [True]
    c.stop()
    assert c.gate() is False


def test_decode_chunk_holds_its_decode_events():
    """A chunk's tokens stacked (rows of different lengths, the last token done) come back
    as the very events, field by field; ``per_token`` expands chunks in place."""
    events = [dataclasses.replace(ev.decode(s, f"t{s}"), done=s == 4) for s in range(2, 5)]
    chunk = ev.chunk(events)
    assert len(chunk) == 3 and list(chunk.steps()) == [2, 3, 4]
    assert [tm.to_record(e) for e in chunk.events()] == [tm.to_record(e) for e in events]
    assert tm.to_record(chunk.last_event()) == tm.to_record(events[-1])
    run = ev.run_info()
    expanded = tm.per_token([run, chunk, events[0]])
    assert expanded[0] is run and expanded[-1] is events[0]
    assert [e.step for e in expanded[1:-1]] == [2, 3, 4]
