"""A test sink that keeps every event a rollout emits: ``sent`` as sent, ``events`` with
each ``DecodeChunk`` replaced by one ``Token`` per token (``on_event`` sees those)."""

import types

from model import telemetry as tm


def tokens(chunk: tm.DecodeChunk) -> list[types.SimpleNamespace]:
    """Each token of ``chunk`` as the fields of its ``decode`` record (numpy values)."""
    return [types.SimpleNamespace(kind="decode", **r) for r in chunk.token_records()]


class Recorder:
    def __init__(self, on_event=None):
        self.sent, self.events, self.on_event = [], [], on_event

    def emit(self, event):
        self.sent.append(event)
        for e in tokens(event) if isinstance(event, tm.DecodeChunk) else [event]:
            self.events.append(e)
            if self.on_event:
                self.on_event(e)

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]

    def tokens(self):
        return [e for e in self.events if getattr(e, "kind", None) == "decode"]
