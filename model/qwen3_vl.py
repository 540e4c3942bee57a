"""Qwen3-VL: the vision tower, the text decoder and the LM head, as one Flax NNX module.

``Qwen3VL.logits`` is the full-sequence forward (numpy in, numpy out), equal to transformers'
``Qwen3VLForConditionalGeneration`` logits. Its pieces are reused by ``model.decode``:

- ``prepare_prompt``: host-side checks and index arithmetic of one batch of prompts
  (mRoPE positions, where image tokens sit, the vision tower's grid inputs);
- ``encode``: vision tower + token embeddings -> the decoder's input and DeepStack features;
- the decoder itself (``model.text.TextModel``) and ``Qwen3VL.head`` (final logits).

Jitted functions live at module level and take ``(graph, params)`` from ``split``: they
compile once per graph and input shapes and are reused by every call and every model of the
same configuration.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import layers
from model.config import Qwen3VLConfig
from model.rope import get_rope_index, inv_freq, mrope_axis, text_cos_sin
from model.text import TextModel
from model.vision import VisionTower, grid_inputs


class Qwen3VL(nnx.Module):
    """Qwen3-VL for conditional generation. ``dtype`` is the parameter and activation dtype."""

    def __init__(self, config: Qwen3VLConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.visual = VisionTower(config.vision, dtype=dtype, rngs=rngs)
        self.language_model = TextModel(config.text, dtype=dtype, rngs=rngs)
        t = config.text
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else layers.Linear(t.hidden_size, t.vocab_size, bias=False, dtype=dtype, rngs=rngs)
        )

    def cos_sin(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """mRoPE ``cos, sin [B, T, head_dim]`` for ``positions [3, B, T]``."""
        t = self.config.text
        return text_cos_sin(
            positions, inv_freq(t.head_dim, t.rope_theta), mrope_axis(t.mrope_section, t.head_dim)
        )

    def head(self, h: jax.Array) -> jax.Array:
        """Normed hidden state ``[..., D]`` -> float32 logits ``[..., vocab]``."""
        if self.lm_head is None:
            w = self.language_model.embed_tokens.weight[...]
            return layers.project(h, w).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def logits(self, input_ids, pixel_values=None, image_grid_thw=None) -> np.ndarray:
        """Float32 logits ``[B, T, vocab]`` of the full forward of a batch of prompts.

        Args:
            input_ids: ``[B, T]``; the prompt holds ``prod(grid) / merge**2``
                ``<|image_pad|>`` tokens per image.
            pixel_values, image_grid_thw: ``[N, C*Tp*P*P]`` and ``[n_images, 3]`` in
                transformers' processor format, or ``None`` for text only.
        """
        prompt = prepare_prompt(self.config, input_ids, pixel_values, image_grid_thw)
        graph, params = split(self)
        embeds, deepstack, _ = encode(graph, params, prompt)
        return np.asarray(_full_logits(graph, params, embeds, deepstack, prompt.positions))


class Graph:
    """The static part of a model (``nnx`` graph and parameter tree structure), the static
    argument of every jitted function. Interned by ``split``, so the jit cache finds a
    compiled program by identity instead of comparing graphs, which costs every call."""

    def __init__(self, graphdef: nnx.GraphDef, treedef):
        self.graphdef, self.treedef = graphdef, treedef
        self._hash = hash((graphdef, treedef))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (
            isinstance(other, Graph)
            and (self.graphdef, self.treedef) == (other.graphdef, other.treedef)
        )


_GRAPHS: dict[Graph, Graph] = {}


def split(m: Qwen3VL) -> tuple[Graph, list[jax.Array]]:
    """``m`` as its interned ``Graph`` and the flat list of its parameter arrays."""
    graphdef, state = nnx.split(m)
    params, treedef = jax.tree.flatten(state)
    graph = Graph(graphdef, treedef)
    return _GRAPHS.setdefault(graph, graph), params


def merge(graph: Graph, params: list[jax.Array]) -> Qwen3VL:
    """Inverse of ``split`` (inside jitted functions)."""
    return nnx.merge(graph.graphdef, jax.tree.unflatten(graph.treedef, params))


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(graph, params, embeds, deepstack, positions):
    m = merge(graph, params)
    cos, sin = m.cos_sin(positions)
    h, _, _, _ = m.language_model(embeds, cos, sin, deepstack)
    return m.head(h)


# --- prompts --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One batch of prompts, checked, with its host-side index arithmetic done.

    ``input_ids [B, T]`` int32; ``positions [3, B, T]`` int32 mRoPE (t, h, w);
    ``deltas [B]`` int32 (a generated token at cache index ``i`` sits at ``i + delta``);
    ``image_mask [B, T]`` bool marks ``<|image_pad|>`` tokens; ``pixels`` and ``grid`` the
    images (``None`` for text only) and ``vision`` the tower's ``grid_inputs``.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    deltas: np.ndarray
    image_mask: np.ndarray
    pixels: np.ndarray | None
    grid: np.ndarray | None
    vision: dict[str, np.ndarray] | None


def prepare_prompt(config: Qwen3VLConfig, input_ids, pixel_values=None, image_grid_thw=None):
    """Check a batch of prompts against ``config`` and return its ``Prompt``; raises
    ``ValueError`` (one line) for inputs that do not fit the model.

    Args:
        input_ids: ``[B, T]`` integers (``[T]``: one row).
        pixel_values, image_grid_thw: as in ``Qwen3VL.logits``.
    """
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be a non-empty [B, T] integer array, got {ids.shape}")
    if ids.min() < 0 or ids.max() >= config.text.vocab_size:
        raise ValueError(f"input_ids must lie in [0, {config.text.vocab_size})")
    ids = ids.astype(np.int32)
    image_mask = ids == config.image_token_id
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pass pixel_values and image_grid_thw together")
    if pixel_values is None:
        b, t = ids.shape
        positions = np.broadcast_to(np.arange(t, dtype=np.int32), (3, b, t)).copy()
        return Prompt(ids, positions, np.zeros(b, np.int32), image_mask, None, None, None)

    v = config.vision
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    pixels = np.asarray(pixel_values, np.float32)
    width = v.in_channels * v.temporal_patch_size * v.patch_size**2
    m = v.spatial_merge_size
    if pixels.ndim != 2 or pixels.shape[1] != width:
        raise ValueError(f"pixel_values must be [N, {width}], got {pixels.shape}")
    if (grid <= 0).any() or (grid[:, 1:] % m).any():
        raise ValueError(f"image_grid_thw rows must be positive with h, w divisible by {m}")
    if pixels.shape[0] != grid.prod(1).sum():
        raise ValueError(
            f"pixel_values has {pixels.shape[0]} patches, image_grid_thw needs {grid.prod(1).sum()}"
        )
    n_tokens = int(grid.prod(1).sum()) // (m * m)
    if int(image_mask.sum()) != n_tokens:
        raise ValueError(
            f"input_ids hold {int(image_mask.sum())} image tokens, the images need {n_tokens}"
        )
    positions, deltas = get_rope_index(
        ids, grid, image_token_id=config.image_token_id, spatial_merge_size=m
    )
    return Prompt(ids, positions, deltas, image_mask, pixels, grid, grid_inputs(grid, v))


def encode(graph: Graph, params, prompt: Prompt):
    """Run the vision tower and embed ``prompt``.

    Args:
        graph, params: the model, as ``split`` gives it.
    Returns:
        the decoder input ``[B, T, D]``, the DeepStack features ``[k, B, T, D]`` (zero off
        image tokens; ``None`` for text only) and ``norms [2]``: the mean L2 norm of the
        merged image tokens (0 without images) and of the text token embeddings.
    """
    if prompt.pixels is None:
        return _embed_text(graph, params, prompt.input_ids, prompt.image_mask)
    b_idx, t_idx = np.nonzero(prompt.image_mask)
    return _embed_with_images(
        graph,
        params,
        prompt.input_ids,
        prompt.image_mask,
        prompt.pixels,
        prompt.vision,
        b_idx.astype(np.int32),
        t_idx.astype(np.int32),
    )


def _mean_norm(x: jax.Array, where: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(x.astype(jnp.float32), axis=-1)
    return jnp.where(where, norms, 0.0).sum() / jnp.maximum(where.sum(), 1)


@functools.partial(jax.jit, static_argnums=0)
def _embed_text(graph, params, input_ids, image_mask):
    m = merge(graph, params)
    x = m.language_model.embed_tokens(input_ids)
    norms = jnp.stack([jnp.float32(0.0), _mean_norm(x, ~image_mask)])
    return x, None, norms


@functools.partial(jax.jit, static_argnums=0)
def _embed_with_images(graph, params, input_ids, image_mask, pixels, vision, b_idx, t_idx):
    m = merge(graph, params)
    x = m.language_model.embed_tokens(input_ids)
    text_norm = _mean_norm(x, ~image_mask)
    image, deep = m.visual(pixels, **vision)
    image = image.astype(x.dtype)
    x = x.at[b_idx, t_idx].set(image)
    norms = jnp.stack([_mean_norm(image, jnp.ones(image.shape[0], bool)), text_norm])
    if deep is None:
        return x, None, norms
    n_deep = min(deep.shape[0], m.config.text.num_hidden_layers)
    dense = jnp.zeros((n_deep, *x.shape), x.dtype)
    return x, dense.at[:, b_idx, t_idx].set(deep[:n_deep].astype(x.dtype)), norms


def build(config: Qwen3VLConfig, dtype, value_of) -> Qwen3VL:
    """A ``Qwen3VL`` built abstractly (no initialisation compiled or run), then filled.

    Args:
        value_of: ``value_of(path, shape, dtype)``, the array of the parameter at ``path``
            (its ``nnx`` flat-state path), of that shape (numpy, or already on a device).
    """
    abstract = nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        var.set_value(jnp.asarray(value_of(path, var.shape, var.dtype), var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def init_random(config: Qwen3VLConfig, seed: int = 0, dtype=jnp.float32) -> Qwen3VL:
    """A random model as transformers initialises one: weights normal(0, 0.02), biases 0,
    norm scales 1. Drawn with numpy, so it takes no compilation."""
    rng = np.random.default_rng(seed)

    def value_of(path, shape, dtype):
        if path[-1] == "bias":
            return np.zeros(shape, np.float32)
        if "norm" in str(path[-2]):
            return np.ones(shape, np.float32)
        return layers.INIT_STD * rng.standard_normal(shape, np.float32)

    return build(config, dtype, value_of)
