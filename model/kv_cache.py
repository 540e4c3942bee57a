"""The preallocated key/value cache of the text decoder.

``k, v [layers, B, capacity, kv_heads, head_dim]`` hold the rotated keys and the values of
every token seen so far; ``vision [B, capacity]`` marks the image-token positions (for the
vision-mass telemetry). All rows of a batch advance together, so one ``length`` (tokens
written, the next write position) serves every row and every layer; a row that stopped at
EOS keeps decoding tokens that the caller discards.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model.config import TextConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array  # [L, B, C, Hkv, hd]
    v: jax.Array  # [L, B, C, Hkv, hd]
    vision: jax.Array  # [B, C] bool
    length: jax.Array  # [] int32

    @classmethod
    def create(cls, cfg: TextConfig, batch: int, capacity: int, dtype) -> KVCache:
        shape = (cfg.num_hidden_layers, batch, capacity, cfg.num_key_value_heads, cfg.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            vision=jnp.zeros((batch, capacity), bool),
            length=jnp.zeros((), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def write_prompt(self, k: jax.Array, v: jax.Array, vision: jax.Array, length) -> KVCache:
        """Store a prompt's ``k, v [L, B, T, Hkv, hd]`` and ``vision [B, T]`` at positions
        ``[0, T)``; ``length <= T`` tokens of it are real (the rest is padding)."""
        start = (0, 0, 0, 0, 0)
        return KVCache(
            k=jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), start),
            v=jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), start),
            vision=jax.lax.dynamic_update_slice(self.vision, vision, (0, 0)),
            length=jnp.asarray(length, jnp.int32),
        )


def bytes_per_token(cfg: TextConfig, dtype) -> int:
    """Cache bytes one token takes over all layers (keys and values)."""
    itemsize = jnp.dtype(dtype).itemsize
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * itemsize
