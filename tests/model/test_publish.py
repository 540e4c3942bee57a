"""model.publish with real ZeroMQ sockets, talked to by a viewer written out by hand here."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import time

import pytest
import zmq

from model import endpoint, publish, wire
from model import telemetry as tm
from tests.dash import events as ev


@pytest.fixture
def short_dir():
    """A directory with a short path (a Unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="q3", dir="/tmp") as d:
        yield d


@pytest.fixture
def publisher(short_dir):
    with publish.Publisher(f"ipc://{short_dir}/p") as p:
        yield p


def free_port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 (the data and control sockets)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


class Viewer:
    """The control socket of a viewer, by hand."""

    def __init__(self, ctx: zmq.Context, where: publish.Publisher | str, key=None) -> None:
        control = where if isinstance(where, str) else where.endpoints.control
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        if key is not None:
            endpoint.secure_viewer(self.dealer, key)
        self.dealer.connect(control)

    def send(self, body) -> None:
        self.dealer.send_multipart(wire.encode(body))

    def ask(self, body, timeout: float = 3.0) -> dict:
        self.send(body)
        return self.answer(timeout)

    def answer(self, timeout: float = 3.0) -> dict:
        if not self.dealer.poll(int(timeout * 1000)):
            raise AssertionError("no answer")
        return wire.decode(self.dealer.recv_multipart())

    def latest_status(self, timeout: float = 0.3) -> dict:
        """The last status among the answers that arrive within ``timeout``."""
        status, end = None, time.monotonic() + timeout
        while time.monotonic() < end:
            if self.dealer.poll(50):
                body = wire.decode(self.dealer.recv_multipart())
                status = body if body.get("op") == "status" else status
        return status


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_ipc_socket_files_are_private(short_dir):
    with publish.Publisher(f"ipc://{short_dir}/p") as p:
        for path in p.endpoints.files:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not os.path.exists(f"{short_dir}/p")


def test_the_default_address_is_in_a_private_directory(monkeypatch, short_dir):
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    address = endpoint.default_address()
    assert address.startswith(f"ipc://{short_dir}/")
    assert stat.S_IMODE(os.stat(os.path.dirname(address[6:])).st_mode) == 0o700


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("tcp://0.0.0.0:5555", "not a loopback address: binding it needs --allow-remote"),
        ("tcp://*:5555", "not a loopback address"),
        ("udp://x", "expected tcp://HOST:PORT or ipc://PATH"),
        ("tcp://127.0.0.1:65535", "the port must be 1-65534"),
        ("ipc:///" + "x" * 120, "socket path longer than"),
    ],
)
def test_bad_or_open_addresses_are_refused(address, message):
    with pytest.raises(endpoint.AddressError, match=message):
        publish.Publisher(address)


def test_a_port_in_use_is_one_line():
    address = f"tcp://127.0.0.1:{free_port_pair()}"
    in_use = pytest.raises(endpoint.AddressError, match=f"{address}: Address already in use")
    with publish.Publisher(address), in_use:
        publish.Publisher(address)


def test_loopback_addresses_need_no_key():
    assert endpoint.parse("tcp://127.0.0.1:5555").loopback
    assert endpoint.parse("tcp://localhost:5555").loopback
    assert endpoint.parse("tcp://[::1]:5555").ipv6
    assert endpoint.parse("tcp://[::1]:5555").control == "tcp://[::1]:5556"


def test_nothing_is_encoded_until_a_viewer_attaches(publisher, ctx):
    for i in range(50):
        publisher.emit(ev.decode(i))
    assert publisher.counts().sent == 0 and publisher.counts().seq == 50
    viewer = Viewer(ctx, publisher)
    assert viewer.ask({"op": "hello"})["op"] == "welcome"
    publisher.emit(ev.decode(50))
    assert publisher.counts().sent == 1


def test_welcome_snapshot_and_status(publisher, ctx):
    for e in [*ev.episode_events(steps=4), ev.train(step=1), ev.credit(step=1)]:
        publisher.emit(e)
    viewer = Viewer(ctx, publisher)
    welcome = viewer.ask({"op": "hello"})
    assert welcome["producer"] == publisher.producer
    assert (welcome["viewer"], welcome["viewers"], welcome["controller"]) == (1, 1, 1)
    snapshot = viewer.ask({"op": "snapshot"})
    kinds = [kind for _, kind, _ in snapshot["events"]]
    # the prefill phase's start is superseded by its end
    assert kinds == ["run", "prefill", "phase", "phase", *["decode"] * 4, "train", "credit"]
    assert snapshot["seq"] == publisher.counts().seq
    seqs = [seq for seq, _, _ in snapshot["events"]]
    assert seqs == sorted(seqs)
    prefill = wire.event("prefill", snapshot["events"][1][2])
    assert prefill.images[0].pixels.shape == (16, 16, 3)
    status = viewer.ask({"op": "ping"})
    assert status["op"] == "status" and status["selection"] == [0, 0, 0]


def test_last_values_are_bounded():
    cache = publish.LastValues()
    cache.add(1, ev.run_info())
    cache.add(2, ev.prefill())
    for i in range(300):
        cache.add(3 + i, ev.decode(i))
    for k in range(300):
        cache.add(400 + k, ev.train(step=k))
    cache.add(800, ev.credit(step=7, sample=0))
    cache.add(801, ev.credit(step=8, sample=1))
    events = [e for _, e in cache.events()]
    chunks = [e for e in events if isinstance(e, tm.DecodeChunk)]
    assert sum(map(len, chunks)) == publish.TOKENS_KEPT and chunks[-1].first == 299
    assert chunks[-1].attn_rows is not None and all(c.attn_rows is None for c in chunks[:-1])
    trains = [e for e in events if isinstance(e, tm.TrainEvent)]
    assert len(trains) == publish.TRAIN_KEPT and trains[-1].step == 299
    assert [e.step for e in events if isinstance(e, tm.CreditEvent)] == [8]
    cache.add(900, ev.run_info(model_name="another"))  # a new run: nothing of the old one
    assert [e for _, e in cache.events()] == [ev.run_info(model_name="another")]


def test_only_the_controller_steers_and_control_passes_on(publisher, ctx):
    publisher.emit(ev.run_info())
    first, second = Viewer(ctx, publisher), Viewer(ctx, publisher)
    first.ask({"op": "hello"})
    assert second.ask({"op": "hello"})["controller"] == 1
    control = publisher.control
    second.send({"op": "select", "selection": [1, 2, 3]})
    second.send({"op": "pause", "paused": True})
    assert second.ask({"op": "ping"})["selection"] == [0, 0, 0] and not control.paused
    first.send({"op": "select", "selection": [99, 5, -4]})  # clamped to the run's sizes
    first.send({"op": "pause", "paused": True})
    assert second.latest_status()["selection"] == [ev.run_info().batch_size - 1, 5, 0]
    assert control.selection == (3, 5, 0) and control.paused
    second.send({"op": "prompt", "text": "not the controller's"})
    first.send({"op": "prompt", "text": "What is left of the circle?"})
    first.send({"op": "step"})
    time.sleep(0.2)
    assert control.next_prompt() == "What is left of the circle?"
    done = threading.Event()
    threading.Thread(target=lambda: done.set() if control.gate() else None).start()
    assert done.wait(2)  # the one step granted
    second.send({"op": "take"})
    assert first.latest_status()["controller"] == 2
    second.send({"op": "bye"})
    assert first.latest_status()["controller"] == 1
    assert control.paused
    first.send({"op": "bye"})
    time.sleep(0.3)
    assert not control.paused  # nobody watches: the run goes on
    assert publisher.counts().viewers == 0
    publisher.emit(ev.decode(1))
    assert publisher.counts().sent == 0


def test_a_silent_viewer_is_forgotten(publisher, ctx, monkeypatch):
    monkeypatch.setattr(publish, "VIEWER_TIMEOUT_S", 0.3)
    viewer = Viewer(ctx, publisher)
    viewer.ask({"op": "hello"})
    publisher.control.set_paused(True)
    time.sleep(0.6)
    assert publisher.counts().viewers == 0 and not publisher.control.paused
    assert viewer.ask({"op": "ping"})["op"] == "unknown"


def test_garbage_and_other_versions_are_dropped_and_counted(publisher, ctx):
    viewer = Viewer(ctx, publisher)
    viewer.dealer.send_multipart([b"hello"])
    viewer.dealer.send_multipart([wire.header(), b"\xc1"])  # 0xc1: never valid msgpack
    viewer.dealer.send_multipart([*wire.encode({"op": "hello"})[:1], b"\x92"])  # truncated
    viewer.dealer.send_multipart([wire.header(version=wire.PROTOCOL + 1), b"\x80"])
    assert viewer.dealer.poll(3000)
    head, body = viewer.dealer.recv_multipart()
    assert head == wire.header() and wire.decode([head, body]) == {"op": "version"}
    assert viewer.ask({"op": "ping"})["op"] == "unknown"  # not attached yet
    assert viewer.ask({"op": "hello"})["op"] == "welcome"
    viewer.send({"op": "teleport"})
    assert viewer.ask({"op": "ping"})["op"] == "status"
    assert publisher.counts().bad_requests == 5


def test_curve_keys_are_private_and_refuse_other_viewers(short_dir, ctx):
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    with publish.Publisher(address, allow_remote=True, keys=f"{short_dir}/keys") as p:
        for name in ("server.secret", "viewer.key", "viewers.allowed"):
            assert stat.S_IMODE(os.stat(f"{short_dir}/keys/{name}").st_mode) == 0o600
        command = p.attach_command()
        assert command.startswith(f"python -m dash --attach {address} --key ")
        key = endpoint.viewer_key(command.split()[-1])
        assert Viewer(ctx, p, key).ask({"op": "hello"})["op"] == "welcome"
        other = endpoint.viewer_key(endpoint.attach_key(key.server_public, zmq.curve_keypair()[1]))
        with pytest.raises(AssertionError, match="no answer"):
            Viewer(ctx, p, other).ask({"op": "hello"}, timeout=1.0)
        with pytest.raises(AssertionError, match="no answer"):
            Viewer(ctx, p).ask({"op": "hello"}, timeout=0.5)  # no key at all
    with publish.Publisher(address, allow_remote=True, keys=f"{short_dir}/keys") as again:
        assert again.attach_command() == command  # the keys are kept
