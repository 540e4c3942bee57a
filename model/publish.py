"""Publish a run's telemetry over ZeroMQ to viewers that attach and detach at will
(``python -m dash --attach``): a ``model.telemetry`` sink for a headless run.

``Publisher(address)`` binds two sockets (addresses: ``model.endpoint``) and starts one
thread; it runs no UI and the thread never touches JAX.

- data, PUB: ``emit`` sends each event as one message (``model.wire``) with the next
  sequence number, in the rollout's thread. Each viewer has its own queue of at most ``HWM``
  messages; ZeroMQ drops what does not fit, so a slow, stalled or killed viewer never makes
  ``emit`` wait, and the viewer counts the gaps. While no viewer is attached, ``emit``
  encodes and sends nothing: it only keeps the last values.
- control, ROUTER: the control thread answers the viewers' requests and applies the
  controller's to ``control``, the ``RolloutControl`` the rollout gates on, exactly as the
  dashboard does in-process: the rollout sees them at its next chunk.

Requests are maps with an ``"op"`` (``wire.encode``); each is answered to its sender:

| op | fields | answer |
| --- | --- | --- |
| hello | | welcome: producer, source, recorded and the status fields |
| snapshot | | snapshot: producer, seq, events (``[[seq, kind, fields], ...]``) |
| ping | | status: producer, viewer, viewers, controller, selection, paused, seq |
| select | selection (``[sample, layer, head]``) | |
| pause | paused (bool) | |
| step | | |
| prompt | text (a new prompt, ``RolloutControl.submit_prompt``) | |
| take | | |
| bye | | |

(``viewer`` and ``controller`` are numbers: 1, 2, ... in the order viewers attached.)

A change of who is attached, who controls, the selection or pause sends every viewer a
status. A request of a viewer that is not attached (no hello, or forgotten) is answered
``unknown``, one of another protocol version ``version`` (its header names this side's
version), garbage is dropped and counted (``counts``).

Control: the first viewer to attach holds it; ``take`` gives it to the viewer that asks.
Only the controller's select / pause / step / prompt reach ``control`` (the selection clamped
to the run's sizes). A viewer that says bye or is silent for ``VIEWER_TIMEOUT_S`` is forgotten;
control passes to the longest-attached viewer left, and once nobody is attached a paused
rollout resumes: a job nobody watches never waits.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import socket
import threading
import time
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from model import endpoint, wire
from model import telemetry as tm

HWM = 256  # messages queued per viewer before ZeroMQ drops
VIEWER_TIMEOUT_S = 5.0  # a viewer pings twice a second; silent this long, it is forgotten
POLL_MS = 100
LINGER_MS = 500  # on close, how long the last messages may take to leave
TRAIN_KEPT = 256  # updates kept for a late joiner (the dashboard draws the last 256)
TOKENS_KEPT = 256  # decoded tokens kept for a late joiner's generated text


class LastValues:
    """The events a late joiner needs, with their sequence numbers: folded in order they give
    the state that folding every event gave (``dash.state.reduce``), except the attention of
    decode chunks before the latest one, which is not kept. Of an event type not named here
    the last event is kept."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every event kept."""
        self.run: tuple[int, tm.RunInfo] | None = None
        self.prefill: tuple[int, tm.PrefillEvent] | None = None
        self.chunks: collections.deque[tuple[int, tm.DecodeChunk]] = collections.deque()
        self.tokens = 0  # in self.chunks
        self.phases: dict[str, tuple] = {}  # phase -> (its last end, a start after it)
        self.profile: tuple[int, tm.StepProfile] | None = None
        self.train: collections.deque = collections.deque(maxlen=TRAIN_KEPT)
        self.credits: dict[int, tuple[int, tm.CreditEvent]] = {}  # by sample
        self.error: tuple[int, tm.ErrorEvent] | None = None
        self.latest: dict[str, tuple[int, tm.Event]] = {}  # any other kind: its last event

    def add(self, seq: int, event: tm.Event) -> None:
        """Keep ``event``, emitted as number ``seq``, and drop what it makes stale."""
        match event:
            case tm.RunInfo():
                if self.run is None or self.run[1] != event:  # a new run: the rest is gone
                    self.clear()
                    self.run = (seq, event)
            case tm.PrefillEvent():
                self.prefill = (seq, event)
                self._clear_chunks()
            case tm.DecodeChunk():
                self._add_chunk(seq, event)
            case tm.PhaseEvent():
                ended, _ = self.phases.get(event.phase, (None, None))
                item = (seq, event)
                self.phases[event.phase] = (ended, item) if event.active else (item, None)
                if event.active and event.phase == "prefill":  # a new episode
                    self.prefill = None
                    self._clear_chunks()
            case tm.StepProfile():
                self.profile = (seq, event)
            case tm.TrainEvent():
                self.train.append((seq, event))
            case tm.CreditEvent():
                self.credits = {s: c for s, c in self.credits.items() if c[1].step == event.step}
                self.credits[event.sample] = (seq, event)
            case tm.ErrorEvent():
                self.error = (seq, event)
            case _:
                self.latest[event.kind] = (seq, event)

    def _clear_chunks(self) -> None:
        self.chunks.clear()
        self.tokens = 0

    def _add_chunk(self, seq: int, chunk: tm.DecodeChunk) -> None:
        chunks = self.chunks
        if chunks and (chunks[-1][1].episode, chunks[-1][1].sample) != (
            chunk.episode,
            chunk.sample,
        ):
            self._clear_chunks()
        while chunks and chunks[-1][1].first >= chunk.first:  # the steps went back
            self.tokens -= len(chunks.pop()[1])
        if self.prefill is not None and self.prefill[1].episode != chunk.episode:
            self.prefill = None
        if chunks:
            before, previous = chunks[-1]
            chunks[-1] = (before, _tokens_only(previous))
        chunks.append((seq, chunk))
        self.tokens += len(chunk)
        while self.tokens > TOKENS_KEPT and len(chunks) > 1:
            self.tokens -= len(chunks.popleft()[1])

    def events(self) -> list[tuple[int, tm.Event]]:
        """``(seq, event)`` of every value kept, in the order they were emitted."""
        phases = [item for pair in self.phases.values() for item in pair]
        items = [self.run, self.prefill, self.profile, self.error, *phases]
        items += [*self.chunks, *self.train, *self.credits.values(), *self.latest.values()]
        return sorted((item for item in items if item is not None), key=lambda item: item[0])


def _tokens_only(chunk: tm.DecodeChunk) -> tm.DecodeChunk:
    """``chunk`` without what only the latest chunk shows (its alternatives, attention and
    positions)."""
    dropped = ("top_ids", "top_probs", "top_texts", "positions", "stats", "attn_rows")
    return dataclasses.replace(chunk, **dict.fromkeys(dropped))


@dataclasses.dataclass
class _Viewer:
    number: int  # 1, 2, ... in the order viewers attached
    seen: float  # monotonic time of its last request


@dataclasses.dataclass(frozen=True)
class Counts:
    seq: int  # events emitted
    sent: int  # events encoded and handed to ZeroMQ (while a viewer was attached)
    viewers: int  # attached now
    bad_requests: int  # garbage and requests of another protocol version, dropped


class _AllowedKeys:
    """ZAP credentials of ``ThreadAuthenticator``: the viewer public keys that may attach."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class Publisher:
    """A sink publishing every event to attached viewers; ``control`` is what they steer.
    Raises ``endpoint.AddressError``.

    Args:
        address: where to bind (``model.endpoint``); default ``endpoint.default_address()``.
        control: the ``RolloutControl`` the viewers steer (a new one by default).
        allow_remote: needed for a non-loopback address; viewers then authenticate with the
            CURVE keys in ``keys``, a directory (``endpoint.server_keys``).
        source, recorded: shown by the viewers: what runs, and whether the events are a
            recording (the selection cannot reach a device).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        control: tm.RolloutControl | None = None,
        allow_remote: bool = False,
        keys: str | None = None,
        source: str = "",
        recorded: bool = False,
    ) -> None:
        self.endpoints = endpoint.parse(address or endpoint.default_address())
        endpoint.check_bind(self.endpoints, allow_remote)
        self.control = control or tm.RolloutControl()
        self.producer = int.from_bytes(os.urandom(8), "big") >> 1
        self.keys = endpoint.server_keys(keys) if allow_remote else None
        self._about = {"source": source, "recorded": recorded}
        self._ctx = zmq.Context()
        self._auth = None
        try:
            if self.keys is not None:  # the handler must run before anyone can connect
                self._auth = ThreadAuthenticator(self._ctx)
                self._auth.start()
                self._auth.configure_curve_callback("*", _AllowedKeys(self.keys.allowed))
            self._pub = self._socket(zmq.PUB, self.endpoints.data)
            router = self._socket(zmq.ROUTER, self.endpoints.control)
        except zmq.ZMQError as e:
            if self._auth is not None:
                self._auth.stop()
            self._ctx.destroy(linger=0)
            raise endpoint.AddressError(f"{self.endpoints.address}: {e.strerror}") from None
        self._lock = threading.Lock()  # one emit, or one change of who watches
        self._seq = 0
        self._sent = 0
        self._closed = False
        self._watched = False  # a viewer is attached: encode and send
        self._cache = LastValues()
        self._viewers: dict[bytes, _Viewer] = {}  # by routing id (control thread only)
        self._controller: bytes | None = None
        self._numbers = itertools.count(1)
        self._bad_requests = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(router,), name="telemetry-control", daemon=True
        )
        self._thread.start()

    def _socket(self, kind: int, where: str) -> zmq.Socket:
        s = self._ctx.socket(kind)
        s.linger = LINGER_MS
        s.sndhwm = HWM
        s.ipv6 = self.endpoints.ipv6
        if kind == zmq.ROUTER:
            s.router_handover = True  # a viewer reconnecting keeps its routing id
        if self.keys is not None:
            endpoint.secure_server(s, self.keys)
        endpoint.bind(s, where)
        return s

    # --- the rollout's side ---

    def emit(self, event: tm.Event) -> None:
        """Publish ``event`` (any thread; never waits for a viewer)."""
        with self._lock:
            if self._closed:
                return
            self._seq += 1
            self._cache.add(self._seq, event)
            if self._watched:
                self._pub.send_multipart(wire.encode_event(self.producer, self._seq, event))
                self._sent += 1

    def counts(self) -> Counts:
        """The counters so far."""
        return Counts(self._seq, self._sent, len(self._viewers), self._bad_requests)

    def banner(self) -> str:
        """One line: where it listens and the command that attaches."""
        return f"telemetry on {self.endpoints.address} · attach with: {self.attach_command()}"

    def attach_command(self) -> str:
        """The command line that attaches a viewer (a wildcard host named by this host's
        name; with CURVE, the generated viewer's attach key)."""
        address = self.endpoints.address
        for wildcard in ("//*:", "//0.0.0.0:", "//[::]:"):
            address = address.replace(wildcard, f"//{socket.gethostname()}:")
        command = f"python -m dash --attach {address}"
        return command if self.keys is None else f"{command} --key {self.keys.attach_key}"

    def close(self) -> None:
        """Stop the control thread, close the sockets (the last messages get ``LINGER_MS``
        to leave) and remove their files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        self._thread.join()
        self._pub.close()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        for path in self.endpoints.files:  # ZeroMQ leaves the socket files behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the control thread ---

    def _serve(self, router: zmq.Socket) -> None:
        try:
            while not self._closing.is_set():
                if router.poll(POLL_MS):
                    while True:
                        try:
                            identity, *frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._request(router, identity, frames)
                self._forget_silent(router)
        finally:
            router.close()

    def _request(self, router: zmq.Socket, identity: bytes, frames: list[bytes]) -> None:
        try:
            body = wire.decode(frames)
        except wire.VersionMismatch:
            self._bad_requests += 1
            _send(router, identity, {"op": "version"})
            return
        except wire.WireError:
            self._bad_requests += 1
            return
        op = body.get("op") if isinstance(body, dict) else None
        viewer = self._viewers.get(identity)
        if op == "hello":
            if viewer is None:
                self._attach(router, identity)
            _send(router, identity, {**self._status(identity), **self._about, "op": "welcome"})
            return
        if viewer is None:
            _send(router, identity, {"op": "unknown"})
            return
        viewer.seen = time.monotonic()
        match op:
            case "snapshot":
                with self._lock:
                    events, seq = self._cache.events(), self._seq
                items = [[s, e.kind, e] for s, e in events]
                reply = {"op": "snapshot", "producer": self.producer, "seq": seq, "events": items}
                _send(router, identity, reply)
            case "ping":
                _send(router, identity, self._status(identity))
            case "take":
                self._controller = identity
                self._broadcast(router)
            case "bye":
                self._detach(router, identity)
            case "select" | "pause" | "step" | "prompt" if identity != self._controller:
                pass  # only the controller steers
            case "select" if self._select(body.get("selection")):
                self._broadcast(router)
            case "pause" if isinstance(body.get("paused"), bool):
                self.control.set_paused(body["paused"])
                self._broadcast(router)
            case "step":
                self.control.step_once()
            case "prompt" if isinstance(body.get("text"), str):
                self.control.submit_prompt(body["text"])
            case _:
                self._bad_requests += 1

    def _select(self, selection: Any) -> bool:
        """Apply a selection, clamped to the run's sizes; False if it is not three ints or
        the run is not known yet."""
        run = self._cache.run
        if run is None or not (
            isinstance(selection, list) and len(selection) == 3 and all(map(wire.is_int, selection))
        ):
            return False
        sizes = (run[1].batch_size, run[1].num_layers, run[1].num_heads)
        self.control.select(*(min(max(v, 0), n - 1) for v, n in zip(selection, sizes, strict=True)))
        return True

    def _attach(self, router: zmq.Socket, identity: bytes) -> None:
        with self._lock:
            self._viewers[identity] = _Viewer(next(self._numbers), time.monotonic())
            self._watched = True
        if self._controller is None:
            self._controller = identity
        self._broadcast(router, but=identity)

    def _detach(self, router: zmq.Socket, identity: bytes) -> None:
        with self._lock:
            del self._viewers[identity]
            self._watched = bool(self._viewers)
        if self._controller == identity:
            left = sorted(self._viewers, key=lambda i: self._viewers[i].number)
            self._controller = left[0] if left else None
        if not self._viewers:
            self.control.set_paused(False)
        self._broadcast(router)

    def _forget_silent(self, router: zmq.Socket) -> None:
        now = time.monotonic()
        for identity in [i for i, v in self._viewers.items() if now - v.seen > VIEWER_TIMEOUT_S]:
            self._detach(router, identity)

    def _status(self, identity: bytes) -> dict[str, Any]:
        controller = self._viewers.get(self._controller) if self._controller else None
        return {
            "op": "status",
            "producer": self.producer,
            "viewer": self._viewers[identity].number,
            "viewers": len(self._viewers),
            "controller": controller.number if controller else None,
            "selection": list(self.control.selection),
            "paused": self.control.paused,
            "seq": self._seq,
        }

    def _broadcast(self, router: zmq.Socket, but: bytes | None = None) -> None:
        for identity in self._viewers:
            if identity != but:
                _send(router, identity, self._status(identity))


def _send(router: zmq.Socket, identity: bytes, body: dict[str, Any]) -> None:
    """Send to one viewer; dropped if its queue is full or it is gone (never waits)."""
    with contextlib.suppress(zmq.ZMQError):
        router.send_multipart([identity, *wire.encode(body)], zmq.NOBLOCK)
