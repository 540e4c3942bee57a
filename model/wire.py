"""The wire format of published telemetry (``model.publish`` to ``python -m dash --attach``).

Every message is two ZeroMQ frames, ``[header, body]``:

- ``header``: ``MAGIC`` and the protocol version (2 bytes, big-endian). Every version keeps
  this frame as it is, so each side can always name the other's version.
- ``body``: one msgpack value. Arrays are msgpack extension type ``ARRAY``: the dtype string
  (1 length byte), the number of axes (1 byte), each axis as 8 bytes little-endian, then the
  raw bytes in C order. Every other value is plain msgpack (tuples as arrays, dataclasses as
  maps of their fields).

An event (the data socket) is ``[producer, seq, kind, fields]``: the producer's random id,
its sequence number (1, 2, ... per producer: a gap is a message lost on the way), the event
type (``model.telemetry.EVENT_TYPES``) and the dataclass's fields by name. A ``DecodeChunk``
is one message, its arrays stacked per token. Requests and replies (the control socket) are
maps with an ``"op"``; ``model.publish`` lists them.

The codec is derived from the event dataclasses as the JSON record codec is: encoding walks
their fields, and decoding builds them with the record codec's typing
(``telemetry._from_plain``), so a decoded event's values have the declared types, dtypes and
axes. Arrays cross without per-element Python: ``tobytes`` on one side, ``frombuffer`` (a
read-only view of the message) on the other.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import numpy as np

from model import telemetry as tm

MAGIC = b"q3vd"
PROTOCOL = 1
ARRAY = 1  # msgpack extension type of an array
ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats: nothing else decodes


class WireError(ValueError):
    """A message that is not valid in this protocol: garbage, truncated, or a field of the
    wrong type or shape. The receiver drops and counts it."""


class VersionMismatch(WireError):
    """A message of another protocol version."""

    def __init__(self, theirs: int) -> None:
        super().__init__(f"protocol version {theirs}, this side speaks {PROTOCOL}")
        self.theirs = theirs


def header(version: int | None = None) -> bytes:
    """A message's first frame: ``MAGIC`` and ``version`` (default ``PROTOCOL``)."""
    return MAGIC + struct.pack(">H", PROTOCOL if version is None else version)


def encode(body: Any) -> list[bytes]:
    """The frames of a message with ``body`` (events, arrays and dataclasses inside it are
    encoded as above)."""
    return [header(), msgpack.packb(body, default=_default)]


def encode_event(producer: int, seq: int, event: tm.Event) -> list[bytes]:
    """The frames of an event message, ``[producer, seq, kind, fields]``."""
    return encode([producer, seq, event.kind, event])


def _default(value: Any) -> Any:
    """msgpack's hook for the values it does not know."""
    if isinstance(value, np.ndarray):
        shape = struct.pack(f"<B{value.ndim}Q", value.ndim, *value.shape)
        dtype = value.dtype.str.encode()
        return msgpack.ExtType(ARRAY, bytes([len(dtype)]) + dtype + shape + value.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"cannot encode {type(value).__name__}")


def _array(code: int, data: bytes) -> np.ndarray:
    """msgpack's hook for an extension value: an array viewing ``data``."""
    if code != ARRAY:
        raise WireError(f"unknown extension type {code}")
    try:
        n = data[0]
        dtype = np.dtype(data[1 : 1 + n].decode("ascii"))
        ndim = data[1 + n]
        start = 2 + n + 8 * ndim
        shape = struct.unpack_from(f"<{ndim}Q", data, 2 + n)
    except (IndexError, UnicodeDecodeError, TypeError, ValueError, struct.error):
        raise WireError("malformed array") from None
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject:
        raise WireError(f"array of {dtype} is not allowed")
    if len(data) - start != int(np.prod(shape, dtype=object)) * dtype.itemsize:
        raise WireError(f"array of shape {list(shape)} {dtype} has {len(data) - start} bytes")
    return np.frombuffer(data, dtype, offset=start).reshape(shape)


def decode(frames: list[bytes]) -> Any:
    """The body of a message. Raises ``VersionMismatch`` or ``WireError``."""
    if len(frames) != 2:
        raise WireError(f"{len(frames)} frames, expected 2")
    head, body = frames
    if len(head) != len(MAGIC) + 2 or not head.startswith(MAGIC):
        raise WireError("not a message of this protocol")
    (version,) = struct.unpack(">H", head[len(MAGIC) :])
    if version != PROTOCOL:
        raise VersionMismatch(version)
    try:
        return msgpack.unpackb(body, ext_hook=_array)
    except WireError:
        raise
    except (ValueError, TypeError) as e:  # msgpack's errors are ValueErrors
        raise WireError(f"undecodable body ({type(e).__name__})") from None


def decode_event(frames: list[bytes]) -> tuple[int, int, str, dict]:
    """``(producer, seq, kind, fields)`` of an event message; ``event(kind, fields)`` types
    the fields. Raises ``VersionMismatch`` or ``WireError``."""
    body = decode(frames)
    if not (isinstance(body, list) and len(body) == 4):
        raise WireError("an event is [producer, seq, kind, fields]")
    producer, seq, kind, fields = body
    if not (is_int(producer) and is_int(seq) and isinstance(kind, str)):
        raise WireError("an event is [producer, seq, kind, fields]")
    return producer, seq, kind, fields


def event(kind: str, fields: Any) -> tm.Event:
    """The event of type ``kind`` from its decoded fields, typed and checked as a recorded
    event's are. Raises ``WireError``."""
    cls = tm.EVENT_TYPES.get(kind)
    if cls is None:
        raise WireError(f"unknown event type {kind!r}")
    try:
        with np.errstate(all="ignore"):  # a peer's values cast to the declared dtypes
            return tm._from_plain(cls, fields, kind)
    except tm.RecordError as e:
        raise WireError(str(e)) from None


def is_int(x: Any) -> bool:
    """Whether ``x`` is an int and not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)
