"""Several processes: joining a run (``jax.distributed``) and the control that every
process obeys alike.

A run of several processes (one per host, or several on one machine) is one SPMD
program: every process dispatches the same compiled programs in the same order, each on
its own devices, and the programs' collectives join them. So every decision that changes
what is dispatched, or when, is taken by process 0 and broadcast to the others
(``multihost_utils.broadcast_one_to_all``) at the chunk boundaries of the decode:

- ``SharedControl.gate`` before each chunk: run, wait (paused), end the answer or stop.
  While process 0 is paused every process asks again every ``POLL`` seconds, so no process
  waits in a collective for longer than that, whatever process 0 waits for.
- ``agree`` (called by ``model.decode.generate`` before the prefill and each chunk): the
  chunk's number of steps (sized by process 0's clock) and the watched
  ``(sample, layer, head)``.
- ``SharedControl.next_prompt``: the next prompt of a run that answers prompts.

Process 0 owns the screen or the publisher and holds the viewer's ``RolloutControl``; the
other processes run the same rollout headless (``HeadlessSink``). A stop on process 0
reaches every process at the next gate, and each returns from its rollout.
"""

from __future__ import annotations

import argparse
import os
import threading

import numpy as np

from model.telemetry import Event, RolloutControl

POLL = 0.1  # seconds between two broadcasts while process 0 waits (paused, or for a prompt)
PROMPT_BYTES = 4096  # the longest prompt a run of several processes passes on (UTF-8)

RUN, WAIT, END = 0, 1, 2  # what a gate decided: run a chunk, ask again, end the answer


class HeadlessSink:
    """The sink of a process other than 0: events are computed alike and dropped (a
    ``model.telemetry.NullSink`` would make the rollout skip the telemetry, so compile and
    run other programs than process 0)."""

    def emit(self, event: Event) -> None:
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mesh`` and the options of a run of several processes."""
    group = parser.add_argument_group("several devices and processes")
    group.add_argument(
        "--mesh",
        metavar="data=D,model=M",
        help="split the batch over D and the model over M devices (default: one device)",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's address, to run as one of several processes (or JAX_COORDINATOR_ADDRESS)",
    )
    group.add_argument(
        "--num-processes", type=int, metavar="N", help="processes of the run (or JAX_NUM_PROCESSES)"
    )
    group.add_argument(
        "--process-id", type=int, metavar="I", help="this process, 0 .. N-1 (or JAX_PROCESS_ID)"
    )


class SetupError(ValueError):
    """Options of ``add_arguments`` that cannot be used; the message is one line."""


def setup(args: argparse.Namespace):
    """Join the run (when ``--coordinator`` or ``JAX_COORDINATOR_ADDRESS`` says there are
    several processes) and make the ``--mesh``; returns the mesh, ``None`` for one device.
    Must run before JAX's first computation. Raises ``SetupError``."""
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    processes = args.num_processes or _env_int("JAX_NUM_PROCESSES")
    process_id = args.process_id if args.process_id is not None else _env_int("JAX_PROCESS_ID")
    if coordinator or processes or args.process_id is not None:
        if not (coordinator and processes and process_id is not None):
            raise SetupError(
                "several processes need --coordinator, --num-processes and --process-id"
            )
        if not 0 <= process_id < processes:
            raise SetupError(f"--process-id {process_id} is not in 0 .. {processes - 1}")
        if processes > 1 and not args.mesh:
            raise SetupError("several processes need a --mesh over their devices")
        initialize(coordinator, processes, process_id)
    if not args.mesh:
        return None
    from model import sharding

    try:
        sizes = sharding.parse_mesh(args.mesh)
        mesh = sharding.make_mesh(sizes[sharding.DATA], sizes[sharding.MODEL])
    except sharding.MeshError as e:
        raise SetupError(str(e)) from None
    return mesh if mesh.size > 1 else None


def requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for a mesh or for several processes."""
    return bool(args.mesh or args.coordinator or args.num_processes or args.process_id is not None)


def leading(rollout_fn):
    """``rollout_fn(sink, control)`` for process 0: with several processes, the viewer's
    control is shared with the others (``SharedControl``)."""
    if not several():
        return rollout_fn
    return lambda sink, control: rollout_fn(sink, SharedControl(control))


def following(rollout_fn) -> None:
    """Run ``rollout_fn`` in a process other than 0: its events dropped, process 0's
    decisions obeyed, until process 0 stops."""
    rollout_fn(HeadlessSink(), SharedControl())


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SetupError(f"{name}={value!r} is not a number") from None


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """``jax.distributed.initialize``. Processes on CPUs talk over gloo, and run one program
    at a time: with two in flight, gloo could pair one program's collective with another's
    (GPUs order them on their streams)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def is_leader() -> bool:
    """Whether this is process 0 (the one with the screen or the publisher)."""
    import jax

    return jax.process_index() == 0


def several() -> bool:
    import jax

    return jax.process_count() > 1


def _broadcast(values: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(values))


def agree(count: int, selection) -> tuple[int, np.ndarray]:
    """Process 0's ``count`` steps and ``selection`` for the next chunk (or the prefill),
    the same on every process."""
    state = _broadcast(np.array([count, *selection], np.int32))
    return int(state[0]), state[1:].astype(np.int32)


class _Waiter:
    """A blocking call of process 0's control, run in a thread so that the broadcasts go on
    while it waits: ``poll(timeout)`` returns ``(True, result)`` once it has returned."""

    def __init__(self, call) -> None:
        self.result = None
        self.done = threading.Event()

        def run() -> None:
            self.result = call()
            self.done.set()

        threading.Thread(target=run, name="control-wait", daemon=True).start()

    def poll(self, timeout: float):
        return self.done.wait(timeout), self.result


class SharedControl(RolloutControl):
    """The rollout's control in a run of several processes: process 0's ``local`` control
    (the viewer's), its decisions broadcast so that every process makes the same calls.

    Every process must call ``gate`` and ``next_prompt`` in the same order (they do: every
    process runs the same rollout). ``paused`` and ``stopped`` are the decisions
    so far, the same on every process; ``selection`` is the viewer's on process 0.
    """

    def __init__(self, local: RolloutControl | None = None) -> None:
        super().__init__()
        self.local = local if local is not None else RolloutControl()
        self.leader = is_leader()

    @property
    def selection(self):
        return self.local.selection if self.leader else self._agreed

    @selection.setter
    def selection(self, value) -> None:
        self._agreed = tuple(value)

    # the viewer's requests go to process 0's control
    def select(self, sample: int, layer: int, head: int) -> None:
        self.local.select(sample, layer, head)

    def set_paused(self, paused: bool) -> None:
        self.local.set_paused(paused)

    def step_once(self) -> None:
        self.local.step_once()

    def stop(self) -> None:
        self.local.stop()

    def submit_prompt(self, text: str) -> None:
        self.local.submit_prompt(text)

    def gate(self) -> bool:
        """Process 0's ``local.gate()``, the same on every process: True to run the next
        chunk, False to end (stop, or a new prompt). Broadcasts every ``POLL`` seconds while
        process 0 waits."""
        waiter = _Waiter(self.local.gate) if self.leader else None
        while True:
            code = WAIT
            if waiter is not None:
                done, ran = waiter.poll(POLL)
                code = WAIT if not done else RUN if ran else END
            local = self.local
            state = np.array([code, local.paused, local.stopped, *local.selection], np.int32)
            code, paused, stopped, *selection = (int(x) for x in _broadcast(state))
            self._paused, self._stopped, self._agreed = bool(paused), bool(stopped), selection
            if code != WAIT:
                return code == RUN

    def next_prompt(self) -> str | None:
        """Process 0's ``local.next_prompt()``, the same on every process (``None`` once
        stopped); at most ``PROMPT_BYTES`` of it."""
        waiter = _Waiter(self.local.next_prompt) if self.leader else None
        while True:
            code, text = WAIT, b""
            if waiter is not None:
                done, prompt = waiter.poll(POLL)
                if done:
                    code = END if prompt is None else RUN
                    text = (prompt or "").encode()[:PROMPT_BYTES]
            code, size = (int(x) for x in _broadcast(np.array([code, len(text)], np.int32)))
            if code == WAIT:
                continue
            if code == END:
                self._stopped = True
                return None
            if size == 0:
                return ""
            payload = np.frombuffer(text.ljust(size, b"\0"), np.uint8)
            return bytes(_broadcast(payload)).decode(errors="replace")
