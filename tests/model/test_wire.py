import dataclasses
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import telemetry as tm
from model import wire
from tests.dash import events as ev

EVENTS = [
    ev.run_info(),
    tm.PhaseEvent("prefill", True),
    ev.prefill(),
    ev.chunk([ev.decode(i, f"t{i}") for i in range(5)]),
    ev.profile(),
    ev.train(),
    ev.credit(),
    tm.ErrorEvent("RuntimeError: boom", "Traceback ..."),
]


def assert_same(a, b):
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        elif dataclasses.is_dataclass(x):
            assert_same(x, y)
        elif isinstance(x, tuple) and x and dataclasses.is_dataclass(x[0]):
            for u, v in zip(x, y, strict=True):
                assert_same(u, v)
        else:
            assert x == y, f.name


def round_trip(event):
    producer, seq, kind, fields = wire.decode_event(wire.encode_event(7, 42, event))
    assert (producer, seq, kind) == (7, 42, event.kind)
    return wire.event(kind, fields)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_every_event_type_round_trips_with_its_types(event):
    assert_same(event, round_trip(event))


def test_a_chunk_is_one_message_and_its_arrays_are_views_of_it():
    chunk = EVENTS[3]
    frames = wire.encode_event(1, 1, chunk)
    assert len(frames) == 2 and frames[0] == wire.MAGIC + struct.pack(">H", wire.PROTOCOL)
    back = round_trip(chunk)
    assert len(back) == 5 and back.stats.max_weight.shape == (5, ev.LAYERS, ev.HEADS)
    # read-only views of the received bytes: no per-element Python on the way
    assert not back.attn_rows.flags.writeable and not back.stats.entropy.flags.writeable


def test_arrays_travel_as_raw_bytes():
    chunk = EVENTS[3]
    rows = np.random.default_rng(0).random((len(chunk), 4096), dtype=np.float32)
    body = wire.encode_event(1, 1, dataclasses.replace(chunk, attn_rows=rows))[1]
    without = wire.encode_event(1, 1, dataclasses.replace(chunk, attn_rows=None))[1]
    assert len(body) - len(without) <= rows.nbytes + 32  # the bytes, dtype and shape


def fields_of(event):
    return wire.decode_event(wire.encode_event(1, 1, event))[3]


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("prefill", {"token_ids": np.zeros((2, 2), np.int32)}, "prefill.token_ids: expected shape"),
        ("prefill", {"tokens": 5}, "prefill.tokens: expected a list"),
        ("train", {"reward_mean": "high"}, "train.reward_mean: expected float, got str"),
        ("decode", {"stats": {"max_weight": [1.0]}}, "decode.stats: missing field(s)"),
    ],
)
def test_decoded_fields_are_type_and_shape_checked(kind, change, message):
    event = next(e for e in EVENTS if e.kind == kind)
    frames = wire.encode([1, 1, kind, {**fields_of(event), **change}])
    with pytest.raises(wire.WireError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wire.event(*wire.decode_event(frames)[2:])


def test_unknown_types_and_bad_envelopes_are_wire_errors():
    with pytest.raises(wire.WireError, match="unknown event type 'telepathy'"):
        wire.event("telepathy", {})
    for body in ([1, 2, 3], {"x": 1}, [1, 2, 3, 4], [True, 2, "run", {}]):
        with pytest.raises(wire.WireError, match="an event is"):
            wire.decode_event(wire.encode(body))
    with pytest.raises(wire.WireError, match="array of object"):
        wire.decode([wire.header(), msgpack.packb(msgpack.ExtType(1, b"\x02|O\x01" + bytes(8)))])


def test_another_version_is_named():
    frames = [wire.header(version=wire.PROTOCOL + 1), b"whatever it means there"]
    with pytest.raises(wire.VersionMismatch) as info:
        wire.decode(frames)
    assert info.value.theirs == wire.PROTOCOL + 1
    assert f"protocol version {wire.PROTOCOL + 1}, this side speaks {wire.PROTOCOL}" in str(
        info.value
    )


# --- fuzzing: whatever a peer sends, the decoder raises WireError or returns an event -----

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_anything(frames):
    try:
        producer, seq, kind, fields = wire.decode_event(frames)
        return wire.event(kind, fields)
    except wire.WireError:
        return None


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_fuzz_random_frames(frames):
    decode_anything(frames)
    decode_anything([wire.header(), *frames[:1]])


@FUZZ
@given(st.sampled_from(range(len(EVENTS))), st.integers(0, 10**6), st.binary(max_size=4))
def test_fuzz_truncated_and_corrupted_messages(index, where, junk):
    body = wire.encode_event(3, 9, EVENTS[index])[1]
    cut = where % (len(body) + 1)
    decode_anything([wire.header(), body[:cut]])
    decode_anything([wire.header(), body[:cut] + junk + body[cut + len(junk) :]])


scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
plain = st.recursive(
    scalars | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
arrays = st.builds(
    lambda dtype, data, ndim: msgpack.ExtType(
        wire.ARRAY, bytes([len(dtype)]) + dtype + bytes([ndim]) + bytes(8 * ndim) + data
    ),
    st.sampled_from([b"<f4", b"<i4", b"|u1", b"|b1", b">f8", b"<U2", b"|O", b"zz"]),
    st.binary(max_size=16),
    st.integers(0, 3),
)


NAMES = sorted({f.name for cls in tm.EVENT_TYPES.values() for f in dataclasses.fields(cls)})
values = plain | arrays | st.lists(arrays, max_size=3)


@FUZZ
@given(
    st.sampled_from(sorted(tm.EVENT_TYPES)),
    st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), values, max_size=6),
)
def test_fuzz_fields_of_every_event_type(kind, fields):
    event = next((e for e in EVENTS if e.kind == kind), None)
    base = fields_of(event) if event is not None else {}
    for candidate in (fields, {**base, **fields}):
        decode_anything(wire.encode([1, 1, kind, candidate]))
