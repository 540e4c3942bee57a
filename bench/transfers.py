"""Which device arrays a piece of code copies to the host, as the host receives them.

``with DeviceToHost() as seen: ...`` notes every JAX array passed to ``numpy.asarray``,
``numpy.array`` or ``jax.device_get`` inside the block (the calls are wrapped while it runs),
as ``(shape, dtype, nbytes)`` in the order they arrive. A benchmark then knows exactly what a
decode step ships, without looking inside the decoder.

Transfers that arrive in fixed-size groups (one group per decode step after a prefill) are
told apart by ``steady_groups``: two runs of the same code that differ only in the number of
steps, ``n1 < n2``, receive ``(n2 - n1) * c`` more arrays, and the last ``(n2 - n1) * c`` of
the longer run are its last steps' ``c`` arrays each.
"""

from __future__ import annotations

import threading

import jax
import numpy as np

Transfer = tuple[tuple[int, ...], str, int]  # (shape, dtype name, nbytes)

_WRAPPED = ((np, "asarray"), (np, "array"), (jax, "device_get"))


class DeviceToHost:
    """Context manager noting device-to-host copies (see the module docstring)."""

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []
        self._inside = threading.local()  # a wrapped call made by another wrapped call

    def _wrap(self, fn):
        def noting(value, *args, **kwargs):
            if getattr(self._inside, "on", False):
                return fn(value, *args, **kwargs)
            for leaf in jax.tree.leaves(value):
                if isinstance(leaf, jax.Array):
                    self.transfers.append((tuple(leaf.shape), str(leaf.dtype), int(leaf.nbytes)))
            self._inside.on = True
            try:
                return fn(value, *args, **kwargs)
            finally:
                self._inside.on = False

        return noting

    def __enter__(self) -> DeviceToHost:
        self._originals = [getattr(module, name) for module, name in _WRAPPED]
        for (module, name), fn in zip(_WRAPPED, self._originals, strict=True):
            setattr(module, name, self._wrap(fn))
        return self

    def __exit__(self, *exc) -> None:
        for (module, name), fn in zip(_WRAPPED, self._originals, strict=True):
            setattr(module, name, fn)


def steady_groups(short: list[Transfer], long: list[Transfer], extra_steps: int):
    """The per-step groups of transfers at the end of ``long``, a run of ``extra_steps`` more
    steps than ``short``: a list of ``extra_steps`` lists of the same ``c`` transfers."""
    extra = len(long) - len(short)
    if extra_steps < 1 or extra <= 0 or extra % extra_steps:
        raise ValueError(
            f"{extra} more transfers in {extra_steps} more steps: not one fixed group per step"
        )
    per_step = extra // extra_steps
    tail = long[len(long) - extra :]
    groups = [tail[i : i + per_step] for i in range(0, extra, per_step)]
    if any(group != groups[0] for group in groups):
        raise ValueError("the steps did not all transfer the same arrays")
    return groups


def group_bytes(group: list[Transfer]) -> int:
    return int(np.sum([nbytes for _, _, nbytes in group], dtype=np.int64))
