"""A test sink that keeps every event a rollout emits: ``sent`` as sent, ``events`` with
each ``DecodeChunk`` replaced by its ``DecodeEvent``s (``on_event`` sees those)."""

from model import telemetry as tm


class Recorder:
    def __init__(self, on_event=None):
        self.sent, self.events, self.on_event = [], [], on_event

    def emit(self, event):
        self.sent.append(event)
        for e in tm.per_token([event]):
            self.events.append(e)
            if self.on_event:
                self.on_event(e)

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]
