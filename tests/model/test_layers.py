from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.layers import Linear, project, scan, stack, take_rows


def _bfloat16(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(jnp.bfloat16)


@pytest.mark.parametrize("rows", [(1,), (1, 1), (3,), (2, 5)])
def test_project_is_the_product_rounded_once(rows):
    rng = np.random.default_rng(0)
    x, w = _bfloat16(rng, *rows, 64), _bfloat16(rng, 48, 64)
    got = jax.jit(project)(x, w)
    assert got.shape == (*rows, 48) and got.dtype == jnp.bfloat16
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    # one rounding to bfloat16 (8 significant bits) of a float32 sum: within 2^-8 relative
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=2**-8, atol=1e-3)


def _cpu_multiplies_bfloat16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512_bf16" in cpuinfo.read_text()


@pytest.mark.skipif(
    jax.default_backend() != "cpu" or not _cpu_multiplies_bfloat16(),
    reason="XLA:CPU multiplies bfloat16 natively only on CPUs with AVX512-BF16",
)
def test_a_bfloat16_decode_loop_keeps_no_float32_copy_of_its_weights():
    """One row through 8 bfloat16 layers, 4 steps in a loop, as a decode chunk runs them:
    XLA's temporaries stay under one layer's float32 copy (a plain einsum needs all 8)."""
    weights = [jax.ShapeDtypeStruct((512, 512), jnp.bfloat16) for _ in range(8)]

    def steps(x, weights):
        def step(_, x):
            for w in weights:
                x = jnp.tanh(project(x, w))
            return x

        return jax.lax.fori_loop(0, 4, step, x)

    row = jax.ShapeDtypeStruct((1, 512), jnp.bfloat16)
    compiled = jax.jit(steps).lower(row, weights).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 512 * 512 * 4


def test_take_rows_of_bfloat16_has_jnp_takes_values_and_gradient():
    rng = np.random.default_rng(1)
    table, ids = _bfloat16(rng, 50, 8), jnp.asarray([[3, 49], [0, 3]])
    np.testing.assert_array_equal(take_rows(table, ids), jnp.take(table, ids, axis=0))

    def loss(take, t):
        return jnp.sum(take(t, ids).astype(jnp.float32) * jnp.arange(8.0))

    ours = jax.grad(lambda t: loss(take_rows, t))(table)
    plain = jax.grad(lambda t: loss(lambda t, i: jnp.take(t, i, axis=0), t))(table)
    assert ours.dtype == jnp.bfloat16 and np.asarray(ours, np.float32)[3, 1] == 2.0
    np.testing.assert_array_equal(ours, plain)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's bfloat16 data movement")
def test_a_row_of_a_bfloat16_table_in_a_loop_costs_no_float32_copy_of_the_table():
    """A decode loop embeds each new token: ``jnp.take`` there converts the whole table to
    float32 first and keeps it for the loop; moved as bits it costs a bfloat16 copy."""

    def embed_steps(ids, table):
        def step(i, acc):
            return acc + take_rows(table, ids[i]).astype(jnp.float32)

        return jax.lax.fori_loop(0, 4, step, jnp.zeros((512,), jnp.float32))

    args = jax.ShapeDtypeStruct((4,), jnp.int32), jax.ShapeDtypeStruct((4096, 512), jnp.bfloat16)
    compiled = jax.jit(embed_steps).lower(*args).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 4096 * 512 * 4


class _Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.proj = Linear(8, 8, bias=True, dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.proj(x))


def test_scan_over_bfloat16_layers_equals_a_loop_over_them_in_values_and_gradients():
    blocks = stack(_Block, 4, nnx.Rngs(0))
    graphdef, state = nnx.split(blocks)
    x = _bfloat16(np.random.default_rng(2), 3, 8)

    def scanned(state):
        def body(block, h, _):
            return block(h), None

        h, _ = scan(nnx.merge(graphdef, state), body, x, start=1, stop=4)
        return jnp.sum(h.astype(jnp.float32))

    def looped(state):
        h = x
        for i in range(1, 4):
            h = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))(h)
        return jnp.sum(h.astype(jnp.float32))

    (got, got_grad), (want, want_grad) = (jax.value_and_grad(f)(state) for f in (scanned, looped))
    assert got == want
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.all(np.abs(b[1:]).max(axis=tuple(range(1, b.ndim))) > 0)
        # the two programs round their bfloat16 intermediates at different places
        np.testing.assert_allclose(a, b, rtol=2**-6, atol=2**-6 * np.abs(b).max())
    assert np.all(np.asarray(jax.tree.leaves(got_grad)[0][0], np.float32) == 0)  # layer 0 unused
