"""Time JAX spends compiling, so that measured times can leave it out.

JAX reports each trace, lowering and XLA compilation with its duration
(``jax.monitoring``). The listener here adds them up per thread (``seconds``), and calls
the watchers the calling thread set with ``watch`` when a trace ends, that is when a
program is about to be lowered and compiled.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator

import jax

TRACE = "/jax/core/compile/jaxpr_trace_duration"
EVENTS = (TRACE, "/jax/core/compile/jaxpr_to_mlir_module_duration")
EVENTS += ("/jax/core/compile/backend_compile_duration",)

_seconds: dict[int, float] = collections.defaultdict(float)
_watchers: dict[int, list[Callable[[], None]]] = {}


def _listener(event: str, duration: float, **_) -> None:
    if event not in EVENTS:
        return
    thread = threading.get_ident()
    _seconds[thread] += duration
    if event == TRACE:
        for on_compile in _watchers.get(thread, ()):
            on_compile()


jax.monitoring.register_event_duration_secs_listener(_listener)


def seconds() -> float:
    """Seconds this thread has spent tracing, lowering and compiling so far."""
    return _seconds[threading.get_ident()]


@contextlib.contextmanager
def watch(on_compile: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``on_compile()`` whenever this thread starts compiling a program."""
    watchers = _watchers.setdefault(threading.get_ident(), [])
    watchers.append(on_compile)
    try:
        yield
    finally:
        watchers.remove(on_compile)
