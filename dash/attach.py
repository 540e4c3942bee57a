"""``python -m dash --attach ADDRESS``: the dashboard of a run published elsewhere
(``python -m dash --serve``, ``python -m model rl --serve``, ``dash.serve``; the producer's
side is ``model.publish``).

The dashboard runs as it does locally (``dash.app``). Its rollout function is a ``Client``:
in the dashboard's worker thread it receives the producer's events (``model.wire``) and
emits them into the dashboard's channel. Its control is a ``RemoteControl``: the keys that
steer a rollout go to the producer.

- Attaching, and after every reconnection: hello, then a snapshot of the run's last values
  (``model.publish.LastValues``), which replaces the view (``state.Snapshot``), then every
  event numbered after the snapshot. A gap in the sequence numbers is messages dropped by
  the producer's queue for this viewer: counted, "socket lost" in the header. A gap right
  after a snapshot means the subscription was not in place yet: the client asks once more.
- Control: one viewer holds it (the first to attach, or the last to press ``c``). Its
  selection, pause and single step go to the producer, which applies them at its next
  chunk. The other viewers follow it: they show its selection and pause (their own
  navigation keys snap back; the metric, help and traceback stay theirs). The header says
  who controls.
- Faults: the connection closing (the producer died or restarted) shows "disconnected,
  waiting for ADDRESS" until a producer answers a hello (a restarted one has a new id and
  sends a new snapshot). No answer to pings for ``SILENCE_S`` over an open connection (a
  producer busy or hung) says so and keeps waiting for it. A refused key, a failed
  handshake or another protocol version is one line in the header instead. Messages that
  do not decode are dropped and counted ("bad").
- Quitting says bye; the producer runs on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import queue
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from dash import app, state
from model import endpoint, wire
from model import telemetry as tm

PING_S = 0.5
SILENCE_S = 3.0  # no answer this long: the producer is busy or hung
HELLO_S = 1.0  # an unanswered hello is sent again this often
POLL_MS = 20  # the longest a key waits before it is sent
HWM = 256  # messages this viewer's socket holds before the producer's side drops
BATCH = 256  # messages taken from the data socket before the control socket is served
PENDING_KEPT = 1024  # events held while a snapshot is on its way
BYE_LINGER_MS = 200
MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


class RemoteControl(tm.RolloutControl):
    """The dashboard's control in an attached viewer. While this viewer holds control, the
    selection, pause, single step and new prompts are sent to the producer (the selection
    and pause also kept here); otherwise nothing is sent, and ``selection`` / ``paused``
    are the producer's (the dashboard shows them, ``App._show``)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.in_control = False

    def select(self, sample: int, layer: int, head: int) -> None:
        if self.in_control:
            super().select(sample, layer, head)
            self.requests.put({"op": "select", "selection": [sample, layer, head]})

    def set_paused(self, paused: bool) -> None:
        if self.in_control:
            super().set_paused(paused)
            self.requests.put({"op": "pause", "paused": paused})

    def step_once(self) -> None:
        if self.in_control:
            self.requests.put({"op": "step"})

    def submit_prompt(self, text: str) -> None:
        if self.in_control:
            self.requests.put({"op": "prompt", "text": text})

    def take_control(self) -> None:
        self.requests.put({"op": "take"})

    def follow(self, selection: tuple[int, int, int], paused: bool, in_control: bool) -> None:
        """The producer's state from a status: shown unless this viewer already held control
        (a viewer that just got it starts from the producer's)."""
        if not (in_control and self.in_control):
            super().select(*selection)
            super().set_paused(paused)
        self.in_control = in_control


@dataclasses.dataclass(frozen=True)
class _Attached:
    """What the producer said of itself and of this viewer."""

    producer: int
    viewer: int = 0  # this viewer's number
    viewers: int = 0
    controller: int | None = None


class Client:
    """The rollout function of an attached dashboard: ``client(sink, control)`` runs until
    ``control`` is stopped. ``meters()`` gives the header its link fields (any thread)."""

    def __init__(self, address: str, key: endpoint.ViewerKey | None = None) -> None:
        self.endpoints = endpoint.parse(address)
        self.address = address
        self.key = key
        self.attached: _Attached | None = None
        self.about: dict[str, Any] = {}  # the last producer's source and replay flag
        self.problem: str | None = None  # a refusal or version mismatch, until it clears
        self.was_attached = False
        self.socket_lost = 0
        self.bad = 0
        self._synced = False  # a snapshot was folded: events follow on from last_seq
        self._awaiting = False  # a snapshot was asked for; events wait in _pending
        self._pending: collections.deque = collections.deque(maxlen=PENDING_KEPT)
        self._last_seq = 0
        self._fresh = False  # no event folded since the snapshot
        self._asked_again = False
        self._last_reply = self._last_ping = self._last_hello = -1e9

    def meters(self) -> dict[str, Any]:
        attached, problem = self.attached, self.problem
        fields = {"socket_lost": self.socket_lost, "bad_messages": self.bad, **self.about}
        if problem is not None:
            return {**fields, "link": problem, "link_ok": False}
        if attached is None:
            waiting = f"waiting for {self.address}"
            text = f"disconnected, {waiting}" if self.was_attached else waiting
            return {**fields, "link": text, "link_ok": False}
        if attached.controller == attached.viewer:
            who = "you control"
        elif attached.controller is None:
            who = "nobody controls (c takes control)"
        else:
            who = f"viewer {attached.controller} controls (c takes control)"
        text = f"viewer {attached.viewer} of {attached.viewers} · {who}"
        silent = time.monotonic() - self._last_reply
        if silent > SILENCE_S:
            text = f"no answer from {self.address} for {silent:.0f} s · {text}"
        return {**fields, "link": text, "link_ok": silent <= SILENCE_S}

    # --- the loop ---

    def __call__(self, sink, control: RemoteControl) -> None:
        self.sink, self.control = sink, control
        ctx = zmq.Context()
        try:
            self.sub = self._socket(ctx, zmq.SUB)
            self.sub.subscribe(b"")
            self.dealer = self._socket(ctx, zmq.DEALER)
            self.dealer.immediate = True  # no queueing for a producer that is not there
            self.dealer.routing_id = b"v" + os.urandom(7)  # the same after a reconnection
            monitor = self.dealer.get_monitor_socket(MONITORED)
            self.sub.connect(self.endpoints.data)
            self.dealer.connect(self.endpoints.control)
            poller = zmq.Poller()
            for s in (self.sub, self.dealer, monitor):
                poller.register(s, zmq.POLLIN)
            while not control.stopped:
                ready = dict(poller.poll(POLL_MS))
                if monitor in ready:
                    self._connection_events(monitor)
                if self.dealer in ready:
                    self._receive(self.dealer, self._reply)
                if self.sub in ready:
                    self._receive(self.sub, self._data)
                self._send_requests()
                self._timers()
            self.dealer.linger = BYE_LINGER_MS
            self._send({"op": "bye"})
            self.dealer.disable_monitor()
        finally:
            ctx.destroy()

    def _socket(self, ctx: zmq.Context, kind: int) -> zmq.Socket:
        s = ctx.socket(kind)
        s.linger = 0
        s.rcvhwm = HWM
        s.ipv6 = self.endpoints.ipv6
        if self.key is not None:
            endpoint.secure_viewer(s, self.key)
        return s

    def _receive(self, s: zmq.Socket, handle) -> None:
        for _ in range(BATCH):
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(frames)

    def _send(self, body: dict[str, Any]) -> None:
        with contextlib.suppress(zmq.Again):  # not connected: the timers try again
            self.dealer.send_multipart(wire.encode(body), zmq.NOBLOCK)

    def _send_requests(self) -> None:
        while True:
            try:
                request = self.control.requests.get_nowait()
            except queue.Empty:
                return
            if self.attached is not None:
                self._send(request)

    def _timers(self) -> None:
        now = time.monotonic()
        if self.attached is None:
            if now - self._last_hello >= HELLO_S:
                self._last_hello = now
                self._send({"op": "hello"})
        elif now - self._last_ping >= PING_S:
            self._last_ping = now
            self._send({"op": "ping"})

    def _lost(self) -> None:
        """The producer is gone: wait for one to answer a hello."""
        self.attached = None
        self._synced = self._awaiting = False
        self._pending.clear()
        self.control.in_control = False
        self._last_hello = -1e9

    def _connection_events(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.problem = None
                self._last_hello = -1e9  # say hello now
            elif kind == zmq.EVENT_DISCONNECTED:
                if self.attached is not None:
                    self._lost()
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.problem = f"refused by {self.address}: it does not accept this viewer's key"
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.problem = f"handshake with {self.address} failed: --key is not this producer's"
            elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                need = "needs a --key" if self.key is None else "takes no --key"
                self.problem = f"refused by {self.address}: it {need}"
            else:
                self.problem = f"handshake with {self.address} failed (ZeroMQ error {value})"

    # --- what arrives ---

    def _reply(self, frames: list[bytes]) -> None:
        try:
            body = wire.decode(frames)
        except wire.VersionMismatch as e:
            self._mismatch(e.theirs)
            return
        except wire.WireError:
            self.bad += 1
            return
        op = body.get("op") if isinstance(body, dict) else None
        self._last_reply = time.monotonic()
        try:
            match op:
                case "welcome":
                    self._welcome(body)
                case "status" if self.attached is not None:
                    self._status(body)
                case "snapshot" if self._awaiting:
                    self._snapshot(body)
                case "unknown":  # the producer forgot this viewer: attach again
                    self._lost()
                case "status" | "snapshot":
                    pass
                case _:
                    self.bad += 1
        except (KeyError, TypeError, ValueError):  # a field missing or of the wrong type
            self.bad += 1

    def _mismatch(self, theirs: int) -> None:
        self.problem = (
            f"{self.address} speaks protocol version {theirs}, this viewer version"
            f" {wire.PROTOCOL}: run both sides from the same release"
        )

    def _welcome(self, body: dict) -> None:
        source, recorded = body["source"], body["recorded"]
        if not (isinstance(source, str) and isinstance(recorded, bool)):
            raise TypeError("welcome")
        self.attached = _Attached(_int(body["producer"]))
        self.about = {"source": source, "replay": recorded}
        self.problem = None
        self.was_attached = True
        self._asked_again = False
        self._status(body)
        self._ask_snapshot()

    def _ask_snapshot(self) -> None:
        self._awaiting, self._synced = True, False
        self._pending.clear()
        self._send({"op": "snapshot"})

    def _status(self, body: dict) -> None:
        viewer, viewers = _int(body["viewer"]), _int(body["viewers"])
        controller = body["controller"]
        selection, paused = body["selection"], body["paused"]
        if controller is not None:
            controller = _int(controller)
        if not (isinstance(paused, bool) and isinstance(selection, list) and len(selection) == 3):
            raise TypeError("status")
        selection = tuple(_int(v) for v in selection)
        self.attached = dataclasses.replace(
            self.attached, viewer=viewer, viewers=viewers, controller=controller
        )
        self.control.follow(selection, paused, controller == viewer)

    def _snapshot(self, body: dict) -> None:
        if _int(body["producer"]) != self.attached.producer:
            return
        events = []
        for item in body["events"]:
            try:
                _, kind, fields = item
                events.append(wire.event(kind, fields))
            except (wire.WireError, TypeError, ValueError):
                self.bad += 1
        self.sink.emit(state.Snapshot(tuple(events)))
        self._last_seq = _int(body["seq"])
        self._awaiting, self._synced, self._fresh = False, True, True
        pending = list(self._pending)
        self._pending.clear()
        for seq, kind, fields in pending:
            self._event(seq, kind, fields)

    def _data(self, frames: list[bytes]) -> None:
        try:
            producer, seq, kind, fields = wire.decode_event(frames)
        except wire.VersionMismatch as e:
            self._mismatch(e.theirs)
            return
        except wire.WireError:
            self.bad += 1
            return
        attached = self.attached
        if attached is None or producer != attached.producer:
            if attached is not None and self._synced:  # another producer at this address
                self._lost()
            return
        if self._awaiting:
            self._pending.append((seq, kind, fields))
        elif self._synced:
            self._event(seq, kind, fields)

    def _event(self, seq: int, kind: str, fields: Any) -> None:
        if seq <= self._last_seq:
            return  # in the snapshot already
        gap = seq - self._last_seq - 1
        if gap and self._fresh and not self._asked_again:
            self._asked_again = True  # subscribed after the snapshot was taken: once more
            self._ask_snapshot()
            self._pending.append((seq, kind, fields))
            return
        self._fresh = False
        self.socket_lost += gap
        self._last_seq = seq
        try:
            event = wire.event(kind, fields)
        except wire.WireError:
            self.bad += 1
            return
        self.sink.emit(event)


def _int(x: Any) -> int:
    if not wire.is_int(x):
        raise TypeError("expected an int")
    return x


def run(
    address: str, key: endpoint.ViewerKey | None = None, options: app.Options | None = None
) -> int:
    """The dashboard of the producer at ``address`` until the user quits; the exit code."""
    client = Client(address, key)
    options = options or app.Options()
    return app.run(client, options, control=RemoteControl(), meters=client.meters)
