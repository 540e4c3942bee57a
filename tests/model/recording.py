"""A test sink that keeps every event a rollout emits."""


class Recorder:
    def __init__(self, on_event=None):
        self.events, self.on_event = [], on_event

    def emit(self, event):
        self.events.append(event)
        if self.on_event:
            self.on_event(event)

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]
