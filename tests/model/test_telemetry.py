import dataclasses
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from model import telemetry as tm
from tests.dash import events as ev


def _round_trip(record: dict):
    return tm.from_record(json.loads(json.dumps(record)))


def test_a_chunk_is_written_as_one_decode_record_per_token_and_read_back():
    tokens = [dataclasses.replace(ev.decode(s, f"t{s}"), done=s == 4) for s in range(2, 5)]
    tokens[0] = dataclasses.replace(tokens[0], token_texts=("\x1b[31mred",))
    chunk = ev.chunk(tokens)
    records = tm.records(chunk)
    assert [r["type"] for r in records] == ["decode"] * 3
    assert [r["step"] for r in records] == [2, 3, 4]
    assert [r["done"] for r in records] == [False, False, True]
    assert [len(r["attn_row"]) for r in records] == [r["cache_len"] for r in records]
    assert tuple(records[0]) == ("type", *tm.record_fields("decode"))
    back = [_round_trip(r) for r in records]
    for got, want in zip(back, tokens, strict=True):
        assert isinstance(got, tm.DecodeChunk) and len(got) == 1
        assert got.token_texts == want.token_texts and got.first == want.first
        assert got.top_texts == want.top_texts and got.done == want.done
        np.testing.assert_array_equal(got.positions, want.positions)
        np.testing.assert_array_equal(got.attn_row(), want.attn_row())
        np.testing.assert_array_equal(got.stats.argmax, want.stats.argmax)
        assert got.stats.argmax.dtype == np.int32 and got.stats.argmax.shape == (1, 8, 8)
        assert tm.records(got) == tm.records(want)


def test_first_tokens_of_a_chunk():
    chunk = ev.chunk([dataclasses.replace(ev.decode(s), done=s == 3) for s in range(4)])
    two = chunk.first_tokens(2)
    assert len(two) == 2 and not two.done and two.last_step == 1
    assert two.stats.max_weight.shape[0] == 2 and two.top_texts == chunk.top_texts[:2]
    assert chunk.first_tokens(9) is chunk


def test_prefill_event_with_image_round_trips():
    img = tm.ImageInfo(
        span=(3, 19), grid_thw=(1, 8, 8), merge_size=2, pixels=np.zeros((4, 4, 3), np.uint8)
    )
    event = dataclasses.replace(ev.prefill(), images=(img,))
    (record,) = tm.records(event)
    back = _round_trip(record)
    assert back.images[0].span == (3, 19)
    assert back.images[0].pixels.dtype == np.uint8
    assert back.stats.max_weight.shape == (ev.LAYERS, ev.HEADS)


def test_optional_fields_default_to_none_and_required_ones_are_named():
    train = tm.from_record({"type": "train", "step": 1, "reward_mean": 0.5})
    assert train.kl is None and train.rewards is None
    with pytest.raises(tm.RecordError, match="missing field.*reward_mean"):
        tm.from_record({"type": "train", "step": 1})
    token = tm.from_record(
        {
            "type": "decode",
            "step": 0,
            "token_id": 1,
            "token_text": "a",
            "prob": 1.0,
            "cache_len": 1,
            "cache_capacity": 4,
        }
    )
    assert token.stats is None and token.attn_rows is None and token.elapsed_ms is None
    with pytest.raises(tm.RecordError, match="decode: missing field.*token_id"):
        tm.from_record({"type": "decode", "step": 0})


def test_values_of_the_wrong_type_or_shape_are_refused():
    (record,) = tm.records(ev.decode(0))
    bad = [
        {"prob": "high"},
        {"step": 1.5},
        {"done": 1},
        {"position": [1, 2]},
        {"attn_row": [[0.5]]},
        {"top_texts": "abc"},
        {"stats": {**record["stats"], "argmax": [1, 2]}},
        {"token_id": None},
    ]
    for change in bad:
        with pytest.raises(tm.RecordError):
            _round_trip({**record, **change})
    with pytest.raises(tm.RecordError, match="sampling"):
        tm.from_record({**tm.records(ev.run_info())[0], "sampling": {"t": "hot"}})


def test_unknown_type_and_missing_field():
    with pytest.raises(tm.UnknownEventType):
        tm.from_record({"type": "telepathy"})
    with pytest.raises(tm.RecordError, match="missing field"):
        tm.from_record({"type": "phase", "phase": "decode"})
    with pytest.raises(tm.RecordError):
        tm.from_record(["not", "a", "dict"])
    with pytest.raises(tm.UnknownEventType):
        tm.from_record({"type": ["decode"]})


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


def _readme_event_table() -> dict[str, dict[str, bool]]:
    """The README's event table: row name -> {field: optional}."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Event format (JSON Lines)")[1].split("\n### ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("`type`", "---"):
            continue
        cell = re.sub(r"\([^()]*\)", "", cells[1])  # explanations, e.g. the allowed values
        names = list(re.finditer(r"`(\w+)`", cell))
        ends = [m.start() for m in names[1:]] + [len(cell)]
        rows[cells[0].strip("`")] = {
            m[1]: "?" in cell[m.end() : e] for m, e in zip(names, ends, strict=True)
        }
    return rows


def test_readme_event_table_is_the_dataclasses():
    def fields(cls, names):
        return {
            name: not tm._required(f)
            for name, f in zip(names, dataclasses.fields(cls), strict=True)
        }

    want = {kind: fields(cls, tm.record_fields(kind)) for kind, cls in tm.EVENT_TYPES.items()}
    for name, cls in (("image", tm.ImageInfo), ("stats", tm.HeadStats)):
        want[name] = fields(cls, [f.name for f in dataclasses.fields(cls)])
    table = _readme_event_table()
    assert table.keys() == want.keys()
    for kind in want:
        assert table[kind] == want[kind], kind


def test_readme_example_lines_are_events():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Event format (JSON Lines)")[1].split("\n### ")[0]
    example = section.split("Example (shortened):")[1].split("```")[1]
    lines = [line for line in example.splitlines() if line.strip()]
    assert [type(tm.from_record(json.loads(line))) for line in lines] == [
        tm.RunInfo,
        tm.PhaseEvent,
        tm.TrainEvent,
    ]
