"""The preallocated key/value cache of the text decoder.

One buffer per layer, ``k[layer] [B, kv_heads, capacity, head_dim]`` and, transposed,
``v[layer] [B, kv_heads, head_dim, capacity]``, holds the rotated keys and the values of every
token seen so far; ``vision [B, capacity]`` marks the image-token positions (for the
vision-mass telemetry). Separate per-layer buffers let the compiled decode update each in
place and read it without slicing a stacked array (which XLA would copy every step). The
values are stored transposed because the decode's weighted sum reads them that way: XLA on
CPU would otherwise transpose every layer's value buffer at every step. All rows of a batch
advance together, so one ``length`` (tokens written, the next write position) serves every
row and every layer; a row that stopped at EOS keeps decoding tokens that the caller discards.

The decode (``model.decode``) keeps a second, small ``KVCache`` per chunk of steps: each step
writes there, and ``append`` moves the chunk's tokens into the main cache once at its end.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model.config import TextConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: tuple[jax.Array, ...]  # L x [B, Hkv, C, hd]
    v: tuple[jax.Array, ...]  # L x [B, Hkv, hd, C]
    vision: jax.Array  # [B, C] bool
    length: jax.Array  # [] int32

    @classmethod
    def create(cls, cfg: TextConfig, batch: int, capacity: int, dtype) -> KVCache:
        """An empty cache of ``capacity`` slots per row for ``batch`` rows: zero buffers
        ``k L x [B, Hkv, C, hd]``, ``v L x [B, Hkv, hd, C]`` of ``dtype``, length 0."""
        shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
        layers = range(cfg.num_hidden_layers)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in layers),
            v=tuple(jnp.zeros(_transposed(shape), dtype) for _ in layers),
            vision=jnp.zeros((batch, capacity), bool),
            length=jnp.zeros((), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        """``C``, the slots per row."""
        return self.vision.shape[1]

    def write_prompt(self, k, v, vision: jax.Array, length) -> KVCache:
        """This cache with a prompt stored at positions ``[0, T)``.

        Args:
            k, v: ``L x [B, Hkv, T, hd]`` each (``v`` as attention makes it; it is stored
                transposed).
            vision: ``[B, T]`` bool, True at image tokens.
            length: how many of the ``T`` tokens are real (the rest is padding); the
                cache's new ``length``.
        """

        def write(buffers, new):
            start = (0, 0, 0, 0)
            return tuple(
                jax.lax.dynamic_update_slice(b, n.astype(b.dtype), start)
                for b, n in zip(buffers, new, strict=True)
            )

        return KVCache(
            k=write(self.k, k),
            v=write(self.v, [jnp.swapaxes(layer, -1, -2) for layer in v]),
            vision=jax.lax.dynamic_update_slice(self.vision, vision, (0, 0)),
            length=jnp.asarray(length, jnp.int32),
        )

    def write_token(self, layer: int, k: jax.Array, v: jax.Array) -> KVCache:
        """Store one token's ``k, v [B, Hkv, 1, hd]`` of ``layer`` at position ``length``
        (``length`` is not advanced: every layer writes at the same position)."""
        keys, values = self.k[layer], self.v[layer]
        return self.with_layer(
            layer,
            jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, 0, self.length, 0)),
            jax.lax.dynamic_update_slice(
                values, jnp.swapaxes(v, -1, -2).astype(values.dtype), (0, 0, 0, self.length)
            ),
        )

    def with_layer(self, layer: int, k: jax.Array, v: jax.Array) -> KVCache:
        """This cache with ``layer``'s buffers replaced by ``k [B, Hkv, C, hd]``, ``v [B, Hkv,
        hd, C]`` (written elsewhere, e.g. by ``model.attention_kernel``)."""
        ks, vs = list(self.k), list(self.v)
        ks[layer], vs[layer] = k, v
        return dataclasses.replace(self, k=tuple(ks), v=tuple(vs))

    def append(self, recent: KVCache) -> KVCache:
        """Store the first ``recent.length`` tokens of ``recent`` (a cache of at most
        ``capacity`` slots) at positions ``[length, length + recent.length)``, which must fit.

        All of ``recent``'s slots are written as one block; near the end of the cache the
        block starts earlier (where it fits) and keeps the tokens already there.
        """
        n = recent.capacity
        start = jnp.minimum(self.length, self.capacity - n)
        shift = self.length - start  # recent's slot j goes to position start + shift + j
        keep = jnp.arange(n) < shift

        def put(buffer, new, axis):
            old = jax.lax.dynamic_slice_in_dim(buffer, start, n, axis)
            moved = jnp.roll(new.astype(buffer.dtype), shift, axis)
            block = jnp.where(keep.reshape((n,) + (1,) * (buffer.ndim - 1 - axis)), old, moved)
            return jax.lax.dynamic_update_slice_in_dim(buffer, block, start, axis)

        return dataclasses.replace(
            self,
            k=tuple(put(b, r, 2) for b, r in zip(self.k, recent.k, strict=True)),
            v=tuple(put(b, r, 3) for b, r in zip(self.v, recent.v, strict=True)),
            length=self.length + recent.length,
        )


def _transposed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-2], shape[-1], shape[-2])
