"""The preallocated key/value cache of the text decoder.

One buffer per layer, ``k[layer], v[layer] [B, kv_heads, capacity, head_dim]``, holds the
rotated keys and the values of every token seen so far; ``vision [B, capacity]`` marks the
image-token positions (for the vision-mass telemetry). Separate per-layer buffers let the
compiled decode step update each in place and read it without slicing a stacked array
(which XLA would copy every step). All rows of a batch advance together, so one ``length``
(tokens written, the next write position) serves every row and every layer; a row that
stopped at EOS keeps decoding tokens that the caller discards.
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
    v: tuple[jax.Array, ...]  # L x [B, Hkv, C, hd]
    vision: jax.Array  # [B, C] bool
    length: jax.Array  # [] int32

    @classmethod
    def create(cls, cfg: TextConfig, batch: int, capacity: int, dtype) -> KVCache:
        shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
        layers = range(cfg.num_hidden_layers)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in layers),
            v=tuple(jnp.zeros(shape, dtype) for _ in layers),
            vision=jnp.zeros((batch, capacity), bool),
            length=jnp.zeros((), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.vision.shape[1]

    def write_prompt(self, k: jax.Array, v: jax.Array, vision: jax.Array, length) -> KVCache:
        """Store a prompt's ``k, v [L, B, Hkv, T, hd]`` and ``vision [B, T]`` at positions
        ``[0, T)``; ``length <= T`` tokens of it are real (the rest is padding)."""

        def write(buffers, new):
            start = (0, 0, 0, 0)
            return tuple(
                jax.lax.dynamic_update_slice(b, n.astype(b.dtype), start)
                for b, n in zip(buffers, new, strict=True)
            )

        return KVCache(
            k=write(self.k, k),
            v=write(self.v, v),
            vision=jax.lax.dynamic_update_slice(self.vision, vision, (0, 0)),
            length=jnp.asarray(length, jnp.int32),
        )

    def write_token(self, layer: int, k: jax.Array, v: jax.Array) -> KVCache:
        """Store one token's ``k, v [B, Hkv, 1, hd]`` of ``layer`` at position ``length``."""
        start = (0, 0, self.length, 0)
        ks, vs = list(self.k), list(self.v)
        ks[layer] = jax.lax.dynamic_update_slice(ks[layer], k.astype(ks[layer].dtype), start)
        vs[layer] = jax.lax.dynamic_update_slice(vs[layer], v.astype(vs[layer].dtype), start)
        return dataclasses.replace(self, k=tuple(ks), v=tuple(vs))
