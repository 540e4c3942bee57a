from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import project


def _bfloat16(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(jnp.bfloat16)


@pytest.mark.parametrize("rows", [(1,), (1, 1), (3,), (2, 5)])
def test_project_is_the_float32_product_rounded_once(rows):
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
