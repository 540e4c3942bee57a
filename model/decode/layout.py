"""The layout of the telemetry a decode chunk sends to the host: one table of columns
(name, dtype, shape) from which both the packing inside the compiled program and the
unpacking on the host are generated.

Each array fetched from the device costs the host a fixed overhead, so the steps of a chunk
leave it as two arrays, ``floats [n, F]`` and ``ints [n, I]``: per step, every float32
column of the table in order, then every int32 column. Shapes name the dimensions of the
run: ``L`` decoder layers, ``H`` query heads, ``B`` batch rows, ``C`` cache slots, ``K``
top alternatives.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from model.sampling import TOP_ALTERNATIVES


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    dtype: np.dtype
    shape: tuple[str | int, ...]  # per step, in dimension names or sizes


F32, I32 = np.dtype(np.float32), np.dtype(np.int32)
COLUMNS = (
    Column("max_weight", F32, ("L", "H")),  # the watched row's attention summaries
    Column("entropy", F32, ("L", "H")),
    Column("vision_mass", F32, ("L", "H")),
    Column("sink_mass", F32, ("L", "H")),
    Column("argmax", I32, ("L", "H")),
    Column("row", F32, ("C",)),  # the selected head's attention over the cache slots
    Column("tokens", I32, ("B",)),  # every row's sampled token
    Column("prob", F32, ()),  # the watched row's token's probability
    Column("top_ids", I32, ("K",)),  # its likeliest alternatives
    Column("top_probs", F32, ("K",)),
    Column("cache_len", I32, ()),  # tokens in the cache after the step's write
    Column("position", I32, (3,)),  # mRoPE (t, h, w) of the step's query
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """``COLUMNS`` at the dimensions of one run: where each column sits in the packed
    ``floats`` / ``ints`` of a step."""

    layers: int
    heads: int
    batch: int
    capacity: int

    def shape(self, column: Column) -> tuple[int, ...]:
        sizes = {"L": self.layers, "H": self.heads, "B": self.batch, "C": self.capacity}
        sizes["K"] = TOP_ALTERNATIVES
        return tuple(sizes[d] if isinstance(d, str) else d for d in column.shape)

    def slices(self) -> dict[str, tuple[np.dtype, slice, tuple[int, ...]]]:
        """Each column's dtype, slice of its packed array and per-step shape."""
        offsets = {F32: 0, I32: 0}
        out = {}
        for column in COLUMNS:
            shape = self.shape(column)
            start = offsets[column.dtype]
            offsets[column.dtype] = start + math.prod(shape)
            out[column.name] = (column.dtype, slice(start, offsets[column.dtype]), shape)
        return out

    def pack(self, values: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(floats [n, F], ints [n, I])`` of ``values``: every column, ``[n, *shape]``
        (inside a compiled program)."""
        parts = {F32: [], I32: []}
        for column in COLUMNS:
            value = values[column.name]
            parts[column.dtype].append(value.reshape(value.shape[0], -1).astype(column.dtype))
        return jnp.concatenate(parts[F32], 1), jnp.concatenate(parts[I32], 1)

    def unpack(self, floats: np.ndarray, ints: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of packed ``floats [n, F]``, ``ints [n, I]``: views ``[n, *shape]``."""
        packed = {F32: floats, I32: ints}
        n = floats.shape[0]
        return {
            name: packed[dtype][:, where].reshape(n, *shape)
            for name, (dtype, where, shape) in self.slices().items()
        }
