"""``KVCache``: token writes land at ``length``, values are stored transposed, and ``append``
moves a chunk's tokens into place, also where its block does not fit after ``length``."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from model.config import TextConfig
from model.kv_cache import KVCache

CFG = TextConfig(
    vocab_size=8,
    hidden_size=8,
    intermediate_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=2,
    mrope_section=(1, 0, 0),
)


def _filled(capacity: int, values) -> KVCache:
    """A cache whose token ``i`` has ``k = (x, x + 0.5)``, ``v = -k`` for ``x = values[i]``
    in every layer, and ``length = len(values)``."""
    cache = KVCache.create(CFG, 1, capacity, jnp.float32)
    for i, x in enumerate(values):
        cache = dataclasses.replace(cache, length=jnp.int32(i))
        k = jnp.asarray([x, x + 0.5], jnp.float32).reshape(1, 1, 1, 2)
        for layer in range(CFG.num_hidden_layers):
            cache = cache.write_token(layer, k, -k)
    return dataclasses.replace(cache, length=jnp.int32(len(values)))


def test_write_token_stores_values_transposed():
    cache = _filled(4, [3.0])
    assert cache.k[1].shape == (1, 1, 4, 2) and cache.v[1].shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(np.asarray(cache.k[1])[0, 0, 0], [3.0, 3.5])
    np.testing.assert_array_equal(np.asarray(cache.v[1])[0, 0, :, 0], [-3.0, -3.5])


@pytest.mark.parametrize("length", [2, 7, 9])  # the block of 3 slots fits, ends at C, doesn't
def test_append_puts_the_chunk_after_length(length):
    new = [100.0, 101.0] if length < 9 else [100.0]
    old = np.arange(1.0, length + 1)
    cache = _filled(10, old).append(_filled(3, new))
    assert int(cache.length) == length + len(new)
    expected = np.concatenate([old, new])
    for layer in range(CFG.num_hidden_layers):
        keys = np.asarray(cache.k[layer])[0, 0, : len(expected), 0]
        values = np.asarray(cache.v[layer])[0, 0, 0, : len(expected)]
        np.testing.assert_array_equal(keys, expected)
        np.testing.assert_array_equal(values, -expected)
