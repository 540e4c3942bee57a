"""What a rollout function is handed: ``emit(event)`` plus keyword conveniences that build
the telemetry events, for training loops that do not build them themselves.

The conveniences take the fields of the event's record (the README's event table,
``model.telemetry.record_fields``) as keywords and build the event with the record codec,
so they type and check values as a recording's are. A value a loop does not have stays
absent (``None``) and the panel shows "—" or "waiting", never an invented number.
Everything passes through ``emit`` of the target (the dropping channel, possibly via a
recorder), so it never waits for the UI.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from model import telemetry as tm


def _check_names(kind: str, fields: dict) -> None:
    unknown = sorted(set(fields) - set(tm.record_fields(kind)))
    if unknown:
        raise TypeError(f"sink.{kind}: unknown field(s) {', '.join(unknown)}")


class EventSink:
    """``rollout_fn(sink, control)`` receives one of these. Safe from any one thread."""

    def __init__(self, target: tm.Sink) -> None:
        self._target = target
        self._last_decode: float | None = None

    def emit(self, event: tm.Event) -> None:
        self._target.emit(event)

    def decode(self, **token) -> None:
        """One sampled token, given as the fields of a ``decode`` record: ``step``,
        ``token_id``, ``token_text``, ``prob``, ``cache_len`` and ``cache_capacity``, and
        any of the optional ones. Without ``elapsed_ms`` the wall time since the previous
        ``decode`` call is used (none for the first one)."""
        _check_names("decode", token)
        now = time.perf_counter()
        if token.get("elapsed_ms") is None and self._last_decode is not None:
            token["elapsed_ms"] = (now - self._last_decode) * 1000.0
        self._last_decode = now
        self.emit(tm.DecodeChunk.from_token_record(tm.to_plain(token)))

    def train(self, **fields) -> None:
        """One policy update: the fields of a ``train`` record (``step``, ``reward_mean``
        and any of the optional metrics)."""
        _check_names("train", fields)
        self.emit(tm.from_fields(tm.TrainEvent, fields))

    def credit(self, tokens: Sequence[str], credits: Sequence[float], **fields) -> None:
        """Per-token credit of one finished episode (and the other ``credit`` fields)."""
        _check_names("credit", fields)
        self.emit(tm.from_fields(tm.CreditEvent, {"tokens": tokens, "credits": credits, **fields}))
