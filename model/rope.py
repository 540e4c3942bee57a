"""Rotary position embeddings: the text decoder's interleaved mRoPE and the ViT's 2D rotary.

Text (mRoPE): every token has a 3-axis position (t, h, w) (``get_rope_index``). Text tokens
use the same value on all axes; image tokens use (start, start + row, start + col) of their
merged patch. Frequency ``j`` of the ``head_dim / 2`` rotary frequencies takes its angle from
axis ``mrope_axis(j)``: Qwen3-VL interleaves the axes (t h w t h w ... t t), as transformers'
``Qwen3VLTextRotaryEmbedding.recomposition_frequencies``.

Vision: each patch rotates by its (row, col) in the patch grid; the first half of the
rotary frequencies use the row, the second half the column.

Host-side helpers (numpy) run once per prompt; ``*_cos_sin`` and ``apply_rotary`` run on the
device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

VISION_ROPE_THETA = 10_000.0  # transformers' default for the Qwen3-VL ViT ("axial" rope)


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """``[dim / 2]`` float32 inverse frequencies ``theta ** (-2i / dim)``."""
    return (1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)).astype(np.float32)


def mrope_axis(mrope_section: tuple[int, int, int], head_dim: int) -> np.ndarray:
    """``[head_dim / 2]`` int32: which position axis (0 t, 1 h, 2 w) drives each frequency."""
    axis = np.zeros(head_dim // 2, np.int32)
    axis[1 : mrope_section[1] * 3 : 3] = 1
    axis[2 : mrope_section[2] * 3 : 3] = 2
    return axis


def text_cos_sin(
    positions: jax.Array, freqs: np.ndarray, axis: np.ndarray
) -> tuple[jax.Array, jax.Array]:
    """The text decoder's mRoPE ``cos, sin``.

    Args:
        positions: ``[3, B, T]`` (t, h, w) of each token.
        freqs: ``[head_dim / 2]`` inverse frequencies (``inv_freq``).
        axis: ``[head_dim / 2]`` the position axis of each frequency (``mrope_axis``).
    Returns:
        ``cos, sin [B, T, head_dim]`` float32.
    """
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(freqs)  # [3, B, T, hd/2]
    angles = jnp.take_along_axis(angles, jnp.asarray(axis)[None, None, None, :], axis=0)[0]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def vision_cos_sin(rows_cols: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """``rows_cols [N, 2]`` patch (row, col) -> ``cos, sin [N, head_dim]`` float32."""
    freqs = jnp.asarray(inv_freq(head_dim // 2, VISION_ROPE_THETA))
    angles = rows_cols[..., None].astype(jnp.float32) * freqs  # [N, 2, hd/4]
    angles = jnp.concatenate([angles[:, 0], angles[:, 1]], axis=-1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x [..., T, heads, head_dim]`` by ``cos, sin [..., T, head_dim]`` (float32);
    returns ``x``'s shape and dtype."""
    cos, sin = cos[..., None, :], sin[..., None, :]
    y = x.astype(jnp.float32) * cos + _rotate_half(x.astype(jnp.float32)) * sin
    return y.astype(x.dtype)


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None,
    *,
    image_token_id: int,
    spatial_merge_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The mRoPE positions of a prompt, as transformers' ``Qwen3VLModel.get_rope_index``.

    A run of text continues counting from the previous position; an image starting at
    position ``s`` takes ``(s + t, s + row, s + col)`` over its merged grid and the text
    after it resumes at ``s + max(rows, cols)``. Raises ``ValueError`` when the runs of
    image tokens do not match the grids.

    Args:
        input_ids: ``[B, T]``.
        image_grid_thw: ``[n_images, 3]`` the patch grids of all images of all rows, in
            order, or ``None``.
    Returns:
        ``positions [3, B, T]`` int32 and ``deltas [B]`` int32: the token at cache index
        ``i >= T`` (a generated one) has position ``i + deltas[b]`` on all three axes.
    """
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    grid_rows = [] if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3).tolist()
    grids = iter(grid_rows)
    positions = np.zeros((3, batch, length), np.int32)
    deltas = np.zeros(batch, np.int32)
    for b in range(batch):
        is_image = input_ids[b] == image_token_id
        pos, i, parts = 0, 0, []
        while i < length:
            j = i
            while j < length and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:
                parts.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
                pos += j - i
            else:
                try:
                    t, h, w = next(grids)
                except StopIteration:
                    raise ValueError("more image-token runs in input_ids than images") from None
                h, w = h // spatial_merge_size, w // spatial_merge_size
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
                grid = np.stack([tt, hh, ww]).reshape(3, -1) + pos
                if grid.shape[1] != j - i:
                    raise ValueError(
                        f"image of merged grid {t}x{h}x{w} needs {grid.shape[1]} image tokens, "
                        f"found a run of {j - i}"
                    )
                parts.append(grid)
                pos += max(h, w)
            i = j
        row = np.concatenate(parts, axis=1)
        positions[:, b] = row
        deltas[b] = row.max() + 1 - length
    return positions, deltas


def vision_rows_cols(image_grid_thw: np.ndarray, spatial_merge_size: int) -> np.ndarray:
    """``[N, 2]`` int32 (row, col) of every patch of the images ``image_grid_thw [n, 3]``,
    in the processor's patch order.

    The processor emits patches block by block: each ``m x m`` merge block's patches are
    consecutive (so the merger can concatenate them), frames one after another.
    """
    m = spatial_merge_size
    out = []
    for t, h, w in np.asarray(image_grid_thw).reshape(-1, 3).tolist():
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows = rows.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], axis=-1), (t, 1)))
    return np.concatenate(out).astype(np.int32)
