"""Watching a headless job: producers in their own processes (``dash.serve`` around the test
rollout, ``python -m dash --serve``), viewers attached over real ZeroMQ sockets (ipc and
loopback TCP), in this process without a screen (``dash.attach.Client``) or in a
pseudo-terminal (``python -m dash --attach``)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq

from dash import attach, cli, state
from model import endpoint, publish, wire
from model import telemetry as tm
from tests.dash import events as ev
from tests.dash.test_e2e import LIVE, ROOT, Terminal
from tests.model.test_publish import free_port_pair
from tests.model.test_wire import assert_same


@pytest.fixture
def address():
    """An ipc address with a short path (a Unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="q3", dir="/tmp") as d:
        yield f"ipc://{d}/s"


class Producer:
    """``python ARGS`` publishing; ``line`` is the one line it printed."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        self.line = self.proc.stdout.readline() if ready else ""
        if not self.line.startswith("telemetry on "):
            self.stop()
            raise AssertionError(f"no address line: {self.line!r} {self.proc.stderr.read()}")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


def live(address: str, *args: str) -> Producer:
    return Producer(LIVE, "--serve", address, *args)


class Watcher:
    """An attached viewer without a screen: ``dash.attach.Client`` in a thread, its events
    folded as the dashboard folds them."""

    def __init__(self, address: str, key: endpoint.ViewerKey | None = None) -> None:
        self.client = attach.Client(address, key)
        self.control = attach.RemoteControl()
        self.events: list = []
        self._view, self._folded = state.View(), 0
        self.thread = threading.Thread(target=self.client, args=(self, self.control))
        self.thread.start()

    def emit(self, event) -> None:  # the client's sink
        self.events.append(event)

    @property
    def view(self) -> state.View:
        new = self.events[self._folded :]
        self._folded += len(new)
        self._view = state.reduce_all(self._view, new)
        return self._view

    @property
    def link(self) -> str:
        return self.client.meters()["link"]

    def wait(self, predicate, timeout: float = 10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if value := predicate(self):
                return value
            time.sleep(0.02)
        raise AssertionError(f"condition never met; link: {self.client.meters()}")

    def step(self) -> int:
        decode = self.view.decode
        return -1 if decode is None else decode.last_step

    def close(self) -> None:
        self.control.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_a_late_viewer_sees_the_current_state_at_once(address):
    producer = live(address, "--rate", "100", "--train-every", "10")
    try:
        time.sleep(1.0)  # the run is well under way before anyone looks
        watcher = Watcher(address)
        snapshot = watcher.wait(lambda w: next(iter(w.events), None), timeout=5)
        assert isinstance(snapshot, state.Snapshot)
        view = state.reduce(state.View(), snapshot)
        assert view.run == ev.run_info()
        assert view.prefill is not None and view.prefill.images[0].pixels.shape == (16, 16, 3)
        assert len(view.reward_history) >= 5 and view.train.step == len(view.reward_history)
        assert view.credits[0].step == view.train.step
        assert view.decode.first >= 30 and len(view.generated) > 30
        assert watcher.client.meters()["link"] == "viewer 1 of 1 · you control"
        watcher.wait(lambda w: w.step() > view.decode.first + 10)  # and it goes on live
        assert watcher.client.socket_lost == 0
        watcher.close()
    finally:
        producer.stop()


def test_a_snapshot_folds_to_the_state_of_every_event():
    stream = [*ev.episode_events(steps=0)]
    for episode in range(2):
        stream += [tm.PhaseEvent("prefill", True), ev.prefill(episode=episode)]
        stream += [tm.PhaseEvent("prefill", False, 40.0), tm.PhaseEvent("decode", True)]
        stream += [ev.decode(i, f"e{episode}t{i}", episode=episode) for i in range(300)]
        stream += [tm.PhaseEvent("decode", False, 900.0), ev.profile()]
        stream += [ev.train(step=episode), ev.credit(step=episode, sample=1)]
        stream += [tm.PhaseEvent("update", True)]
    cache = publish.LastValues()
    for seq, event in enumerate(stream, start=1):
        cache.add(seq, event)
    snapshot = state.Snapshot(tuple(e for _, e in cache.events()))
    everything = state.reduce_all(state.View(), stream)
    joined = state.reduce(state.reduce(state.View(), ev.run_info(model_name="old")), snapshot)
    for field in dataclasses.fields(state.View):
        if field.name != "decode_count":  # KV writes seen, which a late joiner did not see
            assert getattr(joined, field.name) == getattr(everything, field.name), field.name


def test_a_viewer_shows_the_producers_selection_within_the_run():
    view = state.reduce(state.View(), ev.run_info())  # batch 4, 8 layers, 8 heads
    ui = state.follow(state.UiState(window=3), (2, 6, 5), True, view)
    assert (ui.selection, ui.paused, ui.layer_top) == ((2, 6, 5), True, 4)
    assert state.follow(ui, (2, 6, 5), True, view) is ui
    assert state.follow(ui, (9, 99, -1), False, view).selection == (3, 7, 0)


def test_the_header_says_who_controls_and_counts_both_kinds_of_loss():
    from dash.panels.header import Header

    link = "viewer 2 of 3 · viewer 1 controls (c takes control)"
    meters = state.Meters(dropped=7, link=link, socket_lost=5, bad_messages=2)
    (_, notices), runs = ev.render(Header(), (160, 2), ev.frame([ev.run_info()], meters))
    assert f"● {link}" in notices and ev.attr_of(runs, link) == "header"
    assert notices.rstrip().endswith("socket lost 5 · bad 2 · dropped 7 · received 0/s")
    lost = state.Meters(link="disconnected, waiting for ipc:///x", link_ok=False)
    _, runs = ev.render(Header(), (160, 2), ev.frame([], lost))
    assert ev.attr_of(runs, "disconnected, waiting for ipc:///x") == "header_warn"


def test_detach_reattach_and_a_killed_viewer_leave_the_producer_running(address):
    producer = live(address, "--rate", "100")
    try:
        first = Watcher(address)
        first.wait(lambda w: w.step() > 20)
        first.close()
        killed = Terminal("-m", "dash", "--attach", address)
        killed.wait_for("viewer 2 of 1 · you control")
        killed.child.kill(signal.SIGKILL)
        killed.child.close()
        second = Watcher(address)
        second.wait(lambda w: w.step() > 0)
        start, begun = second.step(), time.monotonic()
        second.wait(lambda w: w.step() >= start + 50)  # 0.5 s at 100 steps a second
        assert time.monotonic() - begun < 3.0 and producer.proc.poll() is None
        assert second.client.socket_lost == 0
        second.close()
    finally:
        producer.stop()


def test_a_restarted_producer_is_picked_up_without_restarting_the_viewer(address):
    producer = live(address, "--rate", "100", "--train-every", "10")
    watcher = Watcher(address)
    try:
        watcher.wait(lambda w: w.view.train is not None and w.view.train.step >= 2)
        producer.stop(signal.SIGKILL)
        watcher.wait(lambda w: w.link == f"disconnected, waiting for {address}")
        assert watcher.client.meters()["link_ok"] is False
        snapshots = sum(isinstance(e, state.Snapshot) for e in watcher.events)
        producer = live(address, "--rate", "100")
        watcher.wait(lambda w: sum(isinstance(e, state.Snapshot) for e in w.events) > snapshots)
        assert watcher.view.train is None  # the new run's state, not the old one's
        watcher.wait(lambda w: w.step() > 5 and w.link == "viewer 1 of 1 · you control")
    finally:
        watcher.close()
        producer.stop()


def test_a_hung_producer_is_waited_for(address, monkeypatch):
    monkeypatch.setattr(attach, "SILENCE_S", 0.5)
    producer = live(address, "--rate", "100")
    watcher = Watcher(address)
    try:
        watcher.wait(lambda w: w.step() > 5)
        producer.proc.send_signal(signal.SIGSTOP)  # the connection stays open
        watcher.wait(lambda w: w.link.startswith(f"no answer from {address} for "))
        assert watcher.client.meters()["link_ok"] is False
        stopped_at = watcher.step()
        producer.proc.send_signal(signal.SIGCONT)
        watcher.wait(lambda w: w.link == "viewer 1 of 1 · you control" and w.step() > stopped_at)
        assert sum(isinstance(e, state.Snapshot) for e in watcher.events) == 1  # no resync
    finally:
        watcher.close()
        producer.stop()


def test_two_viewers_one_controls_the_other_follows(address):
    producer = live(address, "--rate", "100")
    a = Watcher(address)
    try:
        a.wait(lambda w: w.link == "viewer 1 of 1 · you control")
        b = Watcher(address)
        b.wait(lambda w: w.link == "viewer 2 of 2 · viewer 1 controls (c takes control)")
        b.control.select(0, 4, 4)  # not in control: not sent, the producer's stays
        a.control.select(1, 2, 3)
        for w in (a, b):
            w.wait(lambda w: selection_of(w.view.decode) == (1, 2, 3))
        b.wait(lambda w: w.control.selection == (1, 2, 3))  # b shows the controller's choice
        b.control.take_control()
        b.wait(lambda w: w.link == "viewer 2 of 2 · you control")
        a.wait(lambda w: w.link == "viewer 1 of 2 · viewer 2 controls (c takes control)")
        b.control.set_paused(True)
        a.wait(lambda w: w.control.paused)
        time.sleep(0.3)
        paused_at = a.step()
        time.sleep(0.5)
        assert a.step() == paused_at and b.step() == paused_at
        b.control.step_once()
        a.wait(lambda w: w.step() == paused_at + 1)
        b.close()  # the controller leaves: control passes back, and nobody else paused it
        a.wait(lambda w: w.link == "viewer 1 of 1 · you control")
        assert a.control.paused  # the producer stays paused for the viewer left
    finally:
        a.close()
        producer.stop()
    assert a.client.socket_lost == 0 and a.client.bad == 0


def selection_of(decode: tm.DecodeChunk | None):
    return None if decode is None else (decode.sample, decode.layer, decode.head)


def test_a_stalled_viewer_costs_the_producer_nothing(address):
    """A viewer that stays attached (it pings) but never reads its data socket: the
    producer's queue for it fills to its high-water mark, then ZeroMQ drops; the producer
    (decoding as fast as it can) keeps its memory and its rate."""
    producer = live(address, "--rate", "1000000")
    ctx = zmq.Context()
    attached = threading.Event()
    pinger = threading.Thread(target=keep_attached, args=(ctx, address, attached))
    pinger.start()
    try:
        status = producer_status(ctx, address)

        def rate(seconds: float = 1.5) -> float:
            start, t0 = status(), time.monotonic()
            time.sleep(seconds)
            return (status() - start) / (time.monotonic() - t0)

        before = rate(1.0)
        stalled = ctx.socket(zmq.SUB)
        stalled.rcvhwm = 1
        stalled.subscribe(b"")
        stalled.connect(endpoint.parse(address).data)  # and never read
        time.sleep(1.0)  # the queue fills up
        rss_full = producer.rss_mb()
        during = rate(2.0)
        rss_later = producer.rss_mb()
        # unbounded, the producer would hold every message sent meanwhile (tens of MB)
        assert rss_later - rss_full < 2.0, (rss_full, rss_later, status())
        assert during > 0.7 * before, (before, during)
        stalled.close(linger=0)
    finally:
        attached.set()
        pinger.join()
        producer.stop()
        ctx.destroy(linger=0)


def producer_status(ctx: zmq.Context, address: str):
    """A function giving the producer's event count (``seq``) from a status."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint.parse(address).control)

    def ask(body):
        dealer.send_multipart(wire.encode(body))
        assert dealer.poll(3000)
        return wire.decode(dealer.recv_multipart())

    ask({"op": "hello"})
    return lambda: ask({"op": "ping"})["seq"]


def keep_attached(ctx: zmq.Context, address: str, done: threading.Event) -> None:
    """A viewer's control side: attached and pinging until ``done``."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint.parse(address).control)
    dealer.send_multipart(wire.encode({"op": "hello"}))
    while not done.wait(0.3):
        dealer.send_multipart(wire.encode({"op": "ping"}))
        while dealer.poll(0):
            dealer.recv_multipart()
    dealer.close()


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "run.jsonl"
    events = [*ev.episode_events(steps=0), *(ev.decode(i, f"r{i}") for i in range(150))]
    events += [ev.train(step=1), ev.credit(step=1)]
    lines = [json.dumps({**ev.record(e), "t": 0.01 * i}) for i, e in enumerate(events)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_curve_a_viewer_without_the_right_key_is_refused(tmp_path, recording):
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    keys = ["--allow-remote", "--keys", str(tmp_path / "k")]
    slowly = ["--replay", str(recording), "--speed", "0.5"]
    producer = Producer("-m", "dash", "--serve", address, *keys, *slowly)
    watchers = []
    try:
        match = re.search(r"attach with: python -m dash --attach (\S+) --key (\w+)", producer.line)
        assert match and match[1] == address
        key = endpoint.viewer_key(match[2])
        other_viewer = endpoint.attach_key(key.server_public, zmq.curve_keypair()[1])
        other_server = endpoint.attach_key(zmq.curve_keypair()[0], key.secret)
        cases = [
            (key, "viewer 1 of 1 · you control"),
            (endpoint.viewer_key(other_viewer), f"refused by {address}: it does not accept"),
            (None, f"refused by {address}: it needs a --key"),
            (endpoint.viewer_key(other_server), f"handshake with {address} failed: --key is"),
        ]
        watchers = [Watcher(address, k) for k, _ in cases]
        for watcher, (_, line) in zip(watchers, cases, strict=True):
            watcher.wait(lambda w, line=line: w.link.startswith(line))
        watchers[0].wait(lambda w: w.step() >= 0)
        assert all(not w.events for w in watchers[1:])
    finally:
        for watcher in watchers:
            watcher.close()
        producer.stop()


def test_another_protocol_version_is_named_in_one_line(address):
    code = (
        "import runpy, sys; import model.wire as wire; wire.PROTOCOL = 99;"
        f" sys.argv = [{LIVE!r}, '--serve', {address!r}];"
        f" runpy.run_path({LIVE!r}, run_name='__main__')"
    )
    producer = Producer("-c", code)
    watcher = Watcher(address)
    try:
        watcher.wait(lambda w: "protocol version" in w.link)
        assert watcher.link == (
            f"{address} speaks protocol version 99, this viewer version {wire.PROTOCOL}:"
            " run both sides from the same release"
        )
        assert not watcher.events
    finally:
        watcher.close()
        producer.stop()


def test_garbage_from_the_producer_is_dropped_and_counted(address):
    """A producer written out by hand that sends garbage between valid events."""
    ctx = zmq.Context()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    for s, where in ((pub, "data"), (router, "control")):
        s.linger = 0
        s.bind(getattr(endpoint.parse(address), where))
    watcher = Watcher(address)
    try:
        identity, *_ = router.recv_multipart()  # hello
        welcome = {
            **dict(op="welcome", producer=5, source="", recorded=False, viewer=1, viewers=1),
            **dict(controller=1, selection=[0, 0, 0], paused=False, seq=0),
        }
        router.send_multipart([identity, *wire.encode(welcome)])
        router.recv_multipart()  # the snapshot request
        snapshot = {
            "op": "snapshot",
            "producer": 5,
            "seq": 1,
            "events": [[1, "run", ev.run_info()]],
        }
        router.send_multipart([identity, *wire.encode(snapshot)])
        pub.send_multipart(wire.encode_event(5, 2, ev.decode(0)))
        watcher.wait(lambda w: w.step() == 0)
        seq = 2
        for step in range(1, 4):
            pub.send_multipart([b"junk"])
            pub.send_multipart([wire.header(), b"\xc1"])  # never valid msgpack
            pub.send_multipart([wire.header(), b"\x94\x05"])  # truncated
            pub.send_multipart(wire.encode([5, seq + 1, "decode", {"first": "x"}]))
            pub.send_multipart(wire.encode([5, seq + 2, "telepathy", {}]))
            seq += 4  # seq + 3 is lost on the way
            pub.send_multipart(wire.encode_event(5, seq, ev.decode(step)))
        watcher.wait(lambda w: w.step() == 3)
        assert (watcher.client.bad, watcher.client.socket_lost) == (15, 3)
    finally:
        watcher.close()
        ctx.destroy(linger=0)


def test_recorded_on_the_serving_side_replays_in_a_viewer_as_locally(address, tmp_path):
    path = tmp_path / "served.jsonl"
    producer = live(address, "--rate", "200", "--train-every", "20", "--record", str(path))
    time.sleep(1.0)
    assert producer.stop() == 128 + signal.SIGTERM
    from dash import record

    recording = record.load(path)
    assert len(recording.events) > 100
    replayed = Producer("-m", "dash", "--serve", address, "--replay", str(path), "--speed", "2")
    assert replayed.line.startswith(f"telemetry on {address}")
    watcher = Watcher(address)
    try:
        local = state.reduce_all(state.View(), [e for _, e in recording.events])
        watcher.wait(lambda w: w.step() == local.decode.last_step)
        assert replayed.proc.wait(timeout=10) == 0
        view = watcher.view
        assert watcher.client.meters()["source"] == "replay served.jsonl ×2"
        assert watcher.client.meters()["replay"] is True
        assert (view.run, view.generated) == (local.run, local.generated)
        assert view.reward_history == local.reward_history
        for name in ("prefill", "decode", "train"):
            assert_same(getattr(view, name), getattr(local, name))
        assert view.credits.keys() == local.credits.keys()
        for sample, credit in local.credits.items():
            assert_same(view.credits[sample], credit)
    finally:
        watcher.close()
        replayed.stop()


def test_attach_in_a_terminal_navigates_and_pauses_the_remote_producer(address):
    producer = live(address, "--rate", "40")
    term = Terminal("-m", "dash", "--attach", address)
    try:
        term.wait_for(r"Tok\[\d+\]")
        assert "viewer 1 of 1 · you control" in term.text and "socket lost 0" in term.text
        for key, layer, head in [("l", 0, 1), ("j", 1, 1), ("l", 1, 2)]:
            term.press(key)
            term.wait_for(rf"HEAD DETAIL L{layer} H{head} ")
        term.wait_until(lambda text: "showing L" not in text)  # the producer sent that row
        term.press("p")
        term.wait_for("PAUSED")
        time.sleep(0.4)
        paused_at = term.token_step()
        term.read(0.6)
        assert term.token_step() == paused_at
        term.press("s")
        term.wait_for(rf"│Tok\[{paused_at + 1}\]")
        term.press("p")
        term.wait_until(lambda text: Terminal.step_in(text) > paused_at + 5)
        term.press("q")
        assert term.exit_code() == 0
        term.assert_terminal_restored()
        watcher = Watcher(address)  # the producer runs on
        step = watcher.wait(lambda w: w.step() if w.step() > 0 else None)
        watcher.wait(lambda w: w.step() > step + 5)
        watcher.close()
    finally:
        term.child.terminate(force=True)
        producer.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attach", "udp://x"], "--attach udp://x: expected tcp://HOST:PORT or ipc://PATH"),
        (["--attach", "ipc:///tmp/x", "--key", "abc"], "--key: expected the 128 hex digits"),
        (["--serve", "tcp://0.0.0.0:5555", "--replay", "REC"], "needs --allow-remote"),
        (["--serve", "--snapshot"], "--serve runs headless"),
        (["--attach", "--model", "x"], "--attach shows a --serve run"),
        (["--key", "abc"], "--key is for --attach"),
        (["--allow-remote"], "--allow-remote and --keys are for --serve"),
    ],
)
def test_bad_serve_and_attach_options_give_one_line(args, message, recording, capsys):
    args = [str(recording) if a == "REC" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_serving_needs_no_terminal_and_exits_when_the_run_ends(address, recording):
    producer = Producer(
        "-m", "dash", "--serve", address, "--replay", str(recording), "--speed", "20"
    )
    assert producer.line == (
        f"telemetry on {address} · attach with: python -m dash --attach {address}\n"
    )
    assert producer.proc.wait(timeout=20) == 0
    assert not Path(address.removeprefix("ipc://")).exists()
    producer.stop()
