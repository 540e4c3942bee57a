"""The Qwen3-VL vision tower (ViT), as transformers' ``Qwen3VLVisionModel``.

pixel patches ``[N, C*Tp*P*P]`` -> patch embedding (a Conv3d whose stride equals its kernel,
so a matmul over each flattened patch) + learned position embeddings resampled bilinearly to
the image's grid -> ``depth`` pre-norm blocks (LayerNorm, attention with 2D rotary within
each image frame, LayerNorm, tanh-GELU MLP) -> 2x2 merger to the text width.
After each block listed in ``deepstack_visual_indexes`` a deepstack merger also projects the
hidden state; the text decoder adds those features to its first layers.

Patches arrive in the processor's order: image by image, frame by frame, and within a frame
merge block by merge block, so every ``m*m`` consecutive patches form one merged token.
The index arithmetic that depends only on the image grids (``grid_inputs``) runs on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import layers
from model.attention import attention
from model.config import VisionConfig
from model.rope import apply_rotary, vision_cos_sin, vision_rows_cols


class PatchConv(nnx.Module):
    """Conv3d with stride == kernel, applied to pre-cut patches: ``weight [D, C, Tp, P, P]``."""

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        c, t, p = cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size
        self.weight = nnx.Param(layers.normal_init(rngs, (d, c, t, p, p), dtype))
        self.bias = nnx.Param(jnp.zeros((d,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [N, C*Tp*P*P]`` flattened patches -> ``[N, D]``."""
        w = self.weight[...]
        return layers.project(x, w.reshape(w.shape[0], -1)) + self.bias[...]


class PatchEmbed(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.proj = PatchConv(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [N, C*Tp*P*P]`` flattened patches -> ``[N, D]``."""
        return self.proj(x)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.qkv = layers.Linear(d, 3 * d, bias=True, dtype=dtype, rngs=rngs)
        self.proj = layers.Linear(d, d, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask):
        """Self-attention of the patches with 2D rotary: ``x [N, D]``, ``cos, sin [N, hd]``,
        ``mask [N, N]`` (True where a patch may attend) -> ``[N, D]``."""
        n = x.shape[0]
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(n, 3, self.num_heads, -1), 1, 0)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = jnp.swapaxes(k, 0, 1), jnp.swapaxes(v, 0, 1)  # heads-major [heads, N, hd]
        out, _ = attention(q[None], k[None], v[None], mask[None])
        return self.proj(out.reshape(n, -1))


class VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.linear_fc1 = layers.Linear(d, f, bias=True, dtype=dtype, rngs=rngs)
        self.linear_fc2 = layers.Linear(f, d, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., D]`` -> ``[..., D]``."""
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=True))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.norm1 = layers.LayerNorm(cfg.hidden_size, dtype=dtype)
        self.attn = VisionAttention(cfg, dtype=dtype, rngs=rngs)
        self.norm2 = layers.LayerNorm(cfg.hidden_size, dtype=dtype)
        self.mlp = VisionMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask):
        """``x [N, D]`` -> ``[N, D]``; ``cos, sin, mask`` as in ``VisionAttention``."""
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """``m*m`` neighbouring patches -> one token of the text width.

    The main merger normalises each patch before concatenating them; the deepstack mergers
    (``postshuffle``) normalise the concatenation.
    """

    def __init__(self, cfg: VisionConfig, *, postshuffle: bool, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size * cfg.spatial_merge_size**2
        self.width = d
        self.postshuffle = postshuffle
        self.norm = layers.LayerNorm(d if postshuffle else cfg.hidden_size, dtype=dtype)
        self.linear_fc1 = layers.Linear(d, d, bias=True, dtype=dtype, rngs=rngs)
        self.linear_fc2 = layers.Linear(d, cfg.out_hidden_size, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [N, D]`` -> ``[N / m^2, out_hidden_size]``."""
        if self.postshuffle:
            x = self.norm(x.reshape(-1, self.width))
        else:
            x = self.norm(x).reshape(-1, self.width)
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


def grid_inputs(image_grid_thw: np.ndarray, cfg: VisionConfig) -> dict[str, np.ndarray]:
    """Host-side arrays the tower needs for the images of ``image_grid_thw [n, 3]``, ``N``
    patches in all.

    Returns:
        by name: ``pos_index [N, 4]`` int32 and ``pos_weight [N, 4]`` float32, the 4 taps of
        the learned ``side x side`` position table bilinearly resampled (align_corners) to
        each image's ``h x w`` grid, as transformers'
        ``get_vision_interpolation_indices_and_weights``; ``rows_cols [N, 2]`` int32 for
        the rotary; ``frame [N]`` int32, the frame each patch belongs to (attention stays
        inside a frame, transformers' ``cu_seqlens``).
    """
    side = int(cfg.num_position_embeddings**0.5)
    grids = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    rows_cols = vision_rows_cols(grids, cfg.spatial_merge_size)
    sizes = np.repeat(grids[:, 1:], grids.prod(1), axis=0)  # [N, 2] (h, w) of each patch's image
    taps, weights = [], []
    for axis in (0, 1):
        idx = rows_cols[:, axis].astype(np.float32)
        src = idx * np.float32(side - 1) / np.maximum(sizes[:, axis] - 1, 1).astype(np.float32)
        floor = np.floor(src)
        tap = floor.astype(np.int64)[:, None] + np.arange(2)
        weights.append(np.clip(1 - np.abs(src[:, None] - floor[:, None] - np.arange(2)), 0, None))
        taps.append(np.clip(tap, 0, side - 1))
    pos_index = (taps[0][:, :, None] * side + taps[1][:, None, :]).reshape(-1, 4)
    pos_weight = (weights[0][:, :, None] * weights[1][:, None, :]).reshape(-1, 4)
    frame_sizes = np.repeat(grids[:, 1] * grids[:, 2], grids[:, 0])
    frames = np.repeat(np.arange(len(frame_sizes)), frame_sizes)
    return {
        "pos_index": pos_index.astype(np.int32),
        "pos_weight": pos_weight.astype(np.float32),
        "rows_cols": rows_cols,
        "frame": frames.astype(np.int32),
    }


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.deepstack_visual_indexes = tuple(cfg.deepstack_visual_indexes)
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, rngs=rngs)
        self.pos_embed = layers.Embedding(
            cfg.num_position_embeddings, cfg.hidden_size, dtype=dtype, rngs=rngs
        )
        self.blocks = layers.stack(lambda r: VisionBlock(cfg, dtype=dtype, rngs=r), cfg.depth, rngs)
        self.merger = PatchMerger(cfg, postshuffle=False, dtype=dtype, rngs=rngs)
        self.deepstack_merger_list = nnx.List(
            [
                PatchMerger(cfg, postshuffle=True, dtype=dtype, rngs=rngs)
                for _ in self.deepstack_visual_indexes
            ]
        )
        self.depth = cfg.depth

    def __call__(self, pixels, pos_index, pos_weight, rows_cols, frame):
        """The merged image tokens of the patches and their DeepStack features.

        Args:
            pixels: ``[N, C*Tp*P*P]`` the patches, in the processor's order.
            pos_index, pos_weight, rows_cols, frame: the images' ``grid_inputs``.
        Returns:
            the merged tokens ``[N / m^2, out]`` and the DeepStack features
            ``[k, N / m^2, out]`` in block order (``None`` if ``k = 0``).
        """
        x = self.patch_embed(pixels.astype(self.pos_embed.weight[...].dtype))
        pos = (self.pos_embed(pos_index) * pos_weight[..., None].astype(x.dtype)).sum(1)
        x = x + pos
        cos, sin = vision_cos_sin(rows_cols, self.head_dim)
        mask = frame[:, None] == frame[None, :]

        def body(block, h, _):
            return block(h, cos, sin, mask), None

        deepstack, start = [], 0
        for index in sorted(i for i in self.deepstack_visual_indexes if i < self.depth):
            x, _ = layers.scan(self.blocks, body, x, start=start, stop=index + 1)
            merger = self.deepstack_merger_list[self.deepstack_visual_indexes.index(index)]
            deepstack.append(merger(x))
            start = index + 1
        x, _ = layers.scan(self.blocks, body, x, start=start, stop=self.depth)
        return self.merger(x), jnp.stack(deepstack) if deepstack else None
