"""The Qwen3 text decoder of Qwen3-VL.

Pre-norm decoder layers: RMSNorm -> grouped-query attention (per-head RMSNorm on q and k,
then mRoPE) -> residual -> RMSNorm -> SwiGLU MLP -> residual. DeepStack: the visual
features of the ViT's deepstack mergers are added to the image-token positions of the hidden
state after each of the first ``len(deepstack_visual_indexes)`` layers.

Attention is split into ``qkv`` (projections, norms, rotary), the pure attention of
``model.attention`` and ``finish`` (output projection, residual, MLP), so the
full-sequence forward here (causal, in blocks of queries) and the cached decode step
(``model.decode``) share every projection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from model import layers
from model.attention import causal_attention
from model.config import TextConfig
from model.rope import apply_rotary


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        d, hd = cfg.hidden_size, cfg.head_dim
        bias = cfg.attention_bias
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = hd
        self.q_proj = layers.Linear(d, self.num_heads * hd, bias=bias, dtype=dtype, rngs=rngs)
        self.k_proj = layers.Linear(d, self.num_kv_heads * hd, bias=bias, dtype=dtype, rngs=rngs)
        self.v_proj = layers.Linear(d, self.num_kv_heads * hd, bias=bias, dtype=dtype, rngs=rngs)
        self.o_proj = layers.Linear(self.num_heads * hd, d, bias=bias, dtype=dtype, rngs=rngs)
        self.q_norm = layers.RMSNorm(hd, eps=cfg.rms_norm_eps, dtype=dtype)
        self.k_norm = layers.RMSNorm(hd, eps=cfg.rms_norm_eps, dtype=dtype)

    def projections(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x [B, T, D]`` -> ``q [B, T, Hq, hd]``, ``k, v [B, T, Hkv, hd]`` as projected."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        return q, k, self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)

    def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``projections``, q and k normalised per head (not yet rotated)."""
        q, k, v = self.projections(x)
        return self.q_norm(q), self.k_norm(k), v

    def qkv(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``project``, then q and k rotated by ``cos, sin [B, T, head_dim]`` (mRoPE).

        Returns:
            ``q [B, T, Hq, hd]`` and, heads-major as the KV cache stores them,
            ``k, v [B, Hkv, T, hd]``.
        """
        q, k, v = self.project(x)
        k = apply_rotary(k, cos, sin)
        return apply_rotary(q, cos, sin), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)


class MLP(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = layers.Linear(d, f, bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = layers.Linear(d, f, bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = layers.Linear(f, d, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """SwiGLU: ``x [..., D]`` -> ``[..., D]``."""
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        eps = cfg.rms_norm_eps
        self.input_layernorm = layers.RMSNorm(cfg.hidden_size, eps=eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, eps=eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """q, k, v of the residual stream ``x [B, T, D]`` (see ``Attention.qkv``)."""
        return self.self_attn.qkv(self.input_layernorm(x), cos, sin)

    def finish(self, x: jax.Array, attn_out: jax.Array) -> jax.Array:
        """The residual stream ``x [B, T, D]`` after this layer, given its attention's
        output ``attn_out [B, T, Hq, hd]``."""
        b, t = attn_out.shape[:2]
        x = x + self.self_attn.o_proj(attn_out.reshape(b, t, -1))
        return x + self.mlp(self.post_attention_layernorm(x))

    def __call__(self, x, cos, sin, observe=None, observed=None):
        """Full-sequence causal layer over the residual stream ``x [B, T, D]``.

        Args:
            cos, sin: ``[B, T, head_dim]`` its mRoPE.
            observe, observed: fold the attention weights, as in
                ``model.attention.causal_attention``.
        Returns:
            ``x [B, T, D]``, ``k, v [B, Hkv, T, hd]`` and the final ``observed``.
        """
        q, k, v = self.qkv(x, cos, sin)
        out, observed = causal_attention(q, k, v, observe, observed)
        return self.finish(x, out), k, v, observed


# observe(carry, layer_index, start, probs [B, Hq, Tb, Tw]) -> carry: reduces the attention
# weights of queries start .. start + Tb - 1 over keys 0 .. Tw - 1 while they exist
Observer = Callable[[object, int, jax.Array, jax.Array], object]


class TextModel(nnx.Module):
    """The decoder. Its layers are separate modules, each with its own parameters: the
    prefill runs them one after the other, and so does every decode step, over the same
    arrays (a stacked ``[L, ...]`` copy would have to be sliced, that is copied, for every
    layer of every decode step)."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.embed_tokens = layers.Embedding(cfg.vocab_size, d, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        deepstack: jax.Array | None = None,
        observe: Observer | None = None,
        observed=None,
    ):
        """Full-sequence causal forward of the embedded prompt.

        Args:
            x: ``[B, T, D]`` the embedded prompt; ``cos, sin [B, T, head_dim]`` its mRoPE.
            deepstack: ``[k, B, T, D]`` (zeros outside image tokens), added after layers
                ``0 .. k-1``.
            observe: folds each layer's attention weights, block of queries by block, into
                ``observed``.
        Returns:
            the normed hidden state ``[B, T, D]``, every layer's keys and values ``L x [B,
            Hkv, T, hd]`` (lists) and the final ``observed``.
        """
        keys, values = [], []
        for index, layer in enumerate(self.layers):
            layer_observe = None
            if observe is not None:
                layer_observe = functools.partial(_observe_layer, observe, index)
            x, k, v, observed = layer(x, cos, sin, layer_observe, observed)
            if deepstack is not None and index < deepstack.shape[0]:
                x = x + deepstack[index].astype(x.dtype)
            keys.append(k)
            values.append(v)
        return self.norm(x), keys, values, observed


def _observe_layer(observe: Observer, index: int, carry, start, probs):
    return observe(carry, index, start, probs)
