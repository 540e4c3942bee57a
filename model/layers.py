"""Building blocks in Hugging Face's parameter layout, and layers stacked for ``lax.scan``.

Every parameter keeps the name and shape transformers gives it (``Linear.weight`` is
``[out, in]``), so a checkpoint tensor is read into it without reshaping.

The vision tower's blocks are created with ``stack(make, n, rngs)``: their parameters carry
a leading ``[n, ...]`` axis (``model.visual.blocks.3.mlp...`` is index 3 of it), and
``scan(stack, body, carry, xs)`` runs them in a single compiled loop (one block compiled,
not ``n``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # transformers' initializer_range


def normal_init(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> jax.Array:
    """``shape`` weights drawn from normal(0, INIT_STD) in float32, cast to ``dtype``."""
    return (INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def _cpu_bfloat16(dtype) -> bool:
    """Whether XLA:CPU handles arrays of ``dtype`` through float32 copies.

    It multiplies bfloat16 weights as they are (XNNPACK, on CPUs with AVX512-BF16) only in a
    product of two rows or more with a float32 result, and slices and gathers bfloat16 only
    through float32. Otherwise it converts the whole array first, and inside a loop, whose
    weights never change, it does so once before the loop and keeps the copy for the loop's
    run: a float32 copy of the decoder, of the embedding table for a token's row, of the
    vision tower's stacked blocks.
    """
    return dtype == jnp.bfloat16 and jax.default_backend() == "cpu"


def project(x: jax.Array, weight: jax.Array) -> jax.Array:
    """``x [..., in] @ weight [out, in].T`` -> ``[..., out]`` in the operands' dtype.

    Where bfloat16 needs it (``_cpu_bfloat16``), the product asks for the float32 result,
    rounded after (as transformers' bfloat16 matmuls are), and a single row (one answer
    decoding) is multiplied as two, the second zero.
    """
    dtype = jnp.result_type(x, weight)
    if not _cpu_bfloat16(dtype):
        return jnp.einsum("...i,oi->...o", x, weight)
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n == 1:
        rows = jnp.pad(rows, ((0, 1), (0, 0)))
    y = jnp.einsum("ri,oi->ro", rows, weight, preferred_element_type=jnp.float32)[:n]
    return y.reshape(*x.shape[:-1], -1).astype(dtype)


@jax.custom_vjp
def _take_bits(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``jnp.take(table, ids, axis=0)`` through ``uint16``, the bits of bfloat16: XLA:CPU
    materialises that view too, but at the table's own size, half the float32 copy (ids out
    of range clip)."""
    bits = jax.lax.bitcast_convert_type(table, jnp.uint16)
    return jax.lax.bitcast_convert_type(jnp.take(bits, ids, axis=0, mode="clip"), table.dtype)


def _take_bits_forward(table, ids):
    return _take_bits(table, ids), (table, ids)


def _take_bits_backward(saved, cotangent):
    table, ids = saved  # the table is saved for its shape: it is alive anyway
    return jnp.zeros_like(table).at[ids].add(cotangent), None


_take_bits.defvjp(_take_bits_forward, _take_bits_backward)


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``table [N, ...]`` at ``ids [...]`` -> ``[..., ...]``: ``jnp.take`` on axis 0, moving
    bfloat16 on a CPU as bits (with the same gradient)."""
    if _cpu_bfloat16(table.dtype):
        return _take_bits(table, ids)
    return jnp.take(table, ids, axis=0)


class Linear(nnx.Module):
    """``y = x @ weight.T + bias`` with ``weight [out, in]``, ``bias [out]``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(normal_init(rngs, (d_out, d_in), dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., in]`` -> ``[..., out]``."""
        y = project(x, self.weight[...])
        return y if self.bias is None else y + self.bias[...]


class Embedding(nnx.Module):
    """Token id -> row of ``weight [num, dim]``."""

    def __init__(self, num: int, dim: int, *, dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(normal_init(rngs, (num, dim), dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        """``ids [...]`` -> ``[..., dim]``."""
        return take_rows(self.weight[...], ids)


class RMSNorm(nnx.Module):
    """``weight * x / rms(x)``, normalised in float32 as transformers does."""

    def __init__(self, dim: int, *, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., dim]`` -> the same shape and dtype."""
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * h.astype(x.dtype)


class LayerNorm(nnx.Module):
    """``(x - mean) / std * weight + bias`` over the last axis, in float32."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., dim]`` -> the same shape and dtype."""
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * self.weight[...].astype(jnp.float32) + self.bias[...]).astype(x.dtype)


def stack(make: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs) -> nnx.Module:
    """``n`` independently initialised copies of ``make(rngs)`` with parameters ``[n, ...]``."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_all(r: nnx.Rngs) -> nnx.Module:
        return make(r)

    return make_all(rngs)


def scan(
    layers: nnx.Module,
    body: Callable,
    carry,
    xs=None,
    *,
    start: int = 0,
    stop: int | None = None,
):
    """Run ``body`` over the stacked ``layers[start:stop]`` in one ``jax.lax.scan``.

    The loop reads each layer out of the stack by its index (``take_rows``) where the stack
    would otherwise move through float32, and scans over the sliced stack elsewhere.

    Args:
        layers: a module made by ``stack``, parameters ``[n, ...]``.
        body: ``body(layer, carry, x) -> (carry, y)``; ``layer`` is one layer's module (its
            parameters sliced out of the stack).
        xs: a pytree with a leading axis of ``stop - start``, or ``None``.
    Returns:
        ``(carry, ys)`` as ``jax.lax.scan``: ``ys`` has a leading axis of ``stop - start``.
    """
    graphdef, state = nnx.split(layers)
    if any(_cpu_bfloat16(a.dtype) for a in jax.tree.leaves(state)):
        stop = jax.tree.leaves(state)[0].shape[0] if stop is None else stop

        def step_by_index(c, inputs):
            index, x = inputs
            layer_state = jax.tree.map(lambda a: take_rows(a, index), state)
            return body(nnx.merge(graphdef, layer_state), c, x)

        return jax.lax.scan(step_by_index, carry, (jnp.arange(start, stop), xs))

    state = jax.tree.map(lambda a: a[start:stop], state)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    return jax.lax.scan(step, carry, (state, xs))
