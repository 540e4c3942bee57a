"""Several devices: the device mesh and the one table that says how the model, its
activations and its KV cache are split over it (JAX's SPMD: each array carries a
``NamedSharding``, and XLA's partitioner inserts the collectives).

The mesh has two named axes, ``data`` x ``model``:

- ``data`` splits the batch: the rows decoded together (a GRPO group) and the prompts and
  answers of a GRPO update. It moves no weights; only the telemetry's small summaries and
  the sampled tokens cross it.
- ``model`` splits every decoder layer Megatron-style: query heads (``q_proj`` rows,
  ``o_proj`` columns), KV heads, the MLP's intermediate dimension and the vocabulary
  (embedding and LM head rows). A decode step then all-reduces the residual stream twice
  per layer (after ``o_proj`` and after ``down_proj``), and the softmax and argmax reduce
  over the split vocabulary.

The table is ``RULES`` (logical axis -> mesh axis), ``PARAMETERS`` (each parameter's
logical axes), ``CACHE``, ``TELEMETRY`` and ``BATCH`` (the KV cache's, the decode's
telemetry buffers' and a GRPO update's batch's); the compiled programs pin their
activations by logical axes (``constrain``). A mesh axis that does not divide a
dimension leaves it whole: that is how KV heads are replicated when there are fewer of them
than devices on ``model`` (as MaxText and vLLM do); ``check`` refuses meshes that do not
divide the query heads, the MLP or the vocabulary.

The vision tower is replicated: it runs once per prompt, and at Qwen3-VL-8B's size (0.58 B
parameters, 1.15 GB in bfloat16) a copy per device costs less than splitting its 27 blocks
would cost in collectives.

Telemetry stays where the heads live: each decode step keeps the watched row's attention
on the devices that computed it (``watched``: every ``data`` shard keeps its own candidate
row, no device reads another's), the summaries ``[L, H]`` are reduced there, and only they
and the selected head's row cross devices (``select``: a masked sum, a small all-reduce).
"""

from __future__ import annotations

import fnmatch
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.config import Qwen3VLConfig
from model.kv_cache import KVCache

DATA, MODEL = "data", "model"

# logical axis -> mesh axis; an axis not named here is never split
RULES: dict[str, str] = {
    "batch": DATA,  # rows of a batch: decoded samples, a GRPO update's prompts and answers
    "heads": MODEL,  # query heads
    "kv_heads": MODEL,  # KV heads (whole on every device when the axis does not divide them)
    "mlp": MODEL,  # the MLP's intermediate dimension
    "vocab": MODEL,  # the vocabulary: embedding rows, LM head rows, logits
    "watched": DATA,  # the telemetry's candidates of the watched row, one per data shard
}

# parameter path (dotted, ``*`` for a layer index) -> logical axes of its dimensions;
# every other parameter (norms, o_proj's bias, the vision tower) is replicated
PARAMETERS: dict[str, tuple[str | None, ...]] = {
    "language_model.embed_tokens.weight": ("vocab", None),
    "language_model.layers.*.self_attn.q_proj.weight": ("heads", None),
    "language_model.layers.*.self_attn.q_proj.bias": ("heads",),
    "language_model.layers.*.self_attn.k_proj.weight": ("kv_heads", None),
    "language_model.layers.*.self_attn.k_proj.bias": ("kv_heads",),
    "language_model.layers.*.self_attn.v_proj.weight": ("kv_heads", None),
    "language_model.layers.*.self_attn.v_proj.bias": ("kv_heads",),
    "language_model.layers.*.self_attn.o_proj.weight": (None, "heads"),
    "language_model.layers.*.mlp.gate_proj.weight": ("mlp", None),
    "language_model.layers.*.mlp.up_proj.weight": ("mlp", None),
    "language_model.layers.*.mlp.down_proj.weight": (None, "mlp"),
    "lm_head.weight": ("vocab", None),
}

# the KV cache: k [B, Hkv, C, hd], v [B, Hkv, hd, C] per layer, vision [B, C], length []
CACHE = {
    "k": ("batch", "kv_heads", None, None),
    "v": ("batch", "kv_heads", None, None),
    "vision": ("batch", None),
    "length": (),
}


# the decode's telemetry buffers (``model.decode.summaries``): ``n`` steps, ``L`` layers,
# ``D`` candidates of the watched row (``watched``), ``H`` query heads, ``K`` key slots
TELEMETRY = {
    "rows": (None, None, "watched", "heads", None),  # attention weights, scores [n, L, D, H, K]
    "heads": (None, None, "watched", "heads"),  # per head: softmax parts, summaries [n, L, D, H]
    "row": (None, "watched", None),  # the selected head's row [n, D, K]
    "logp": (None, "watched", "vocab"),  # log-probabilities [n, D, V]
    "tokens": (None, None),  # every row's token [n, B]
}


# a GRPO update's batch (``model.rl.policy.Windows`` and its prompts' ``Sequences``) by
# field name: every other field (the images' grid inputs) is replicated
BATCH = {
    "input_ids": ("batch", None),  # [B, T]
    "positions": (None, "batch", None),  # [3, B, T]
    "targets": ("batch", None),
    "mask": ("batch", None),
    "image_slots": ("batch", None),  # [B, K]
    "image_of_row": ("batch",),
    "pixels": ("batch", None, None),  # [images, patches, C*Tp*P*P]
    "prompt_of_row": ("batch",),
    "start": ("batch",),
}


class MeshError(ValueError):
    """A mesh that does not fit the devices or the model; the message is one line."""


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,model=4"`` -> ``{"data": 2, "model": 4}`` (an axis left out is 1)."""
    sizes = {DATA: 1, MODEL: 1}
    for part in text.split(","):
        match = re.fullmatch(r"\s*(data|model)\s*=\s*(\d+)\s*", part)
        if not match or int(match[2]) < 1:
            raise MeshError(f"--mesh {text!r}: expected data=D,model=M with D, M >= 1")
        sizes[match[1]] = int(match[2])
    return sizes


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A ``data x model`` mesh of the first ``data * model`` of ``devices`` (default: every
    device of every process, all of which a run of several processes must use)."""
    devices = jax.devices() if devices is None else list(devices)
    n = data * model
    if n > len(devices) or (n < len(devices) and jax.process_count() > 1):
        raise MeshError(
            f"mesh data={data},model={model} needs {n} devices, {len(devices)} are visible"
        )
    return Mesh(np.asarray(devices[:n]).reshape(data, model), (DATA, MODEL))


def mesh_text(mesh: Mesh) -> str:
    return f"data={mesh.shape[DATA]},model={mesh.shape[MODEL]}"


def check(config: Qwen3VLConfig, mesh: Mesh) -> None:
    """Raise ``MeshError`` naming the first dimension the ``model`` axis does not divide."""
    t, size = config.text, mesh.shape[MODEL]
    for name, value in (
        ("num_attention_heads", t.num_attention_heads),
        ("intermediate_size", t.intermediate_size),
        ("vocab_size", t.vocab_size),
    ):
        if value % size:
            raise MeshError(f"mesh {mesh_text(mesh)}: model={size} does not divide {name} {value}")


def check_batch(batch: int, mesh: Mesh | None, what: str = "the batch") -> None:
    """Raise ``MeshError`` when the ``data`` axis does not divide a ``batch`` of rows."""
    if mesh is not None and batch % mesh.shape[DATA]:
        rows = f"{batch} row{'s' if batch != 1 else ''}"
        raise MeshError(
            f"mesh {mesh_text(mesh)}: data={mesh.shape[DATA]} does not divide {what} ({rows})"
        )


def spec(axes: tuple[str | None, ...], units: tuple[int, ...], sizes) -> PartitionSpec:
    """The ``PartitionSpec`` of logical ``axes`` whose dimensions hold ``units`` each (heads
    for a flattened ``heads x head_dim``), on a mesh of axis ``sizes``: a mesh axis that does
    not divide its units leaves the dimension whole."""
    parts = []
    for axis, n in zip(axes, units, strict=True):
        mesh_axis = RULES.get(axis) if axis else None
        parts.append(mesh_axis if mesh_axis and n % sizes[mesh_axis] == 0 else None)
    return PartitionSpec(*parts)


def parameter_axes(path: tuple) -> tuple[str | None, ...] | None:
    """The logical axes of the parameter at ``path`` (``None``: replicated)."""
    name = ".".join(str(p) for p in path)
    for pattern, axes in PARAMETERS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return axes
    return None


def parameter_sharding(path: tuple, shape, config: Qwen3VLConfig, mesh: Mesh) -> NamedSharding:
    axes = parameter_axes(path)
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    t = config.text
    heads = {"heads": t.num_attention_heads, "kv_heads": t.num_key_value_heads}
    units = tuple(heads.get(a, n) for a, n in zip(axes, shape, strict=True))
    return NamedSharding(mesh, spec(axes, units, mesh.shape))


def placement(config: Qwen3VLConfig, mesh: Mesh):
    """A ``place`` for ``model.checkpoint.load_pretrained``: each device reads only its
    slice of each tensor from the checkpoint files (``jax.make_array_from_callback``)."""
    check(config, mesh)

    def place(path, shape, dtype, read):
        sharding = parameter_sharding(path, shape, config, mesh)
        return jax.make_array_from_callback(shape, sharding, read)

    return place


def load(path, mesh: Mesh, dtype="auto", on_progress=None):
    """``model.checkpoint.load_pretrained`` of ``path`` onto ``mesh``: each device reads only
    its slices from the files, and no host or device ever holds the whole model."""
    from model.checkpoint import load_config, load_pretrained

    place = placement(load_config(path), mesh)
    return load_pretrained(path, dtype, place=place, on_progress=on_progress)


def shard_model(m, mesh: Mesh):
    """``m`` with every parameter placed on ``mesh`` by the table (a new module)."""
    from flax import nnx

    check(m.config, mesh)
    graphdef, state = nnx.split(m)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        sharding = parameter_sharding(path, var.shape, m.config, mesh)
        var.set_value(jax.device_put(var.get_value(), sharding))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def within(mesh: Mesh | None, fn):
    """``fn`` called under ``jax.set_mesh(mesh)``: its compiled programs pin their arrays
    by the table (``constrain``). ``fn`` itself without a mesh."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def mesh_of(arrays) -> Mesh | None:
    """The mesh the arrays are placed on, ``None`` for arrays on one device."""
    for a in jax.tree.leaves(arrays):
        sharding = getattr(a, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


# --- inside the compiled programs (under ``jax.set_mesh``) ---------------------------


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """``x`` pinned to logical ``axes`` on the current mesh; ``x`` as it is without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec(axes, x.shape, mesh.shape))


def replicated(tree):
    """Every array of ``tree`` whole on every device (results the host fetches: every
    process reads its own copy)."""
    return jax.tree.map(lambda x: constrain(x, (None,) * x.ndim), tree)


def constrain_cache(cache: KVCache) -> KVCache:
    def pin(name, buffers):
        return tuple(constrain(b, CACHE[name]) for b in buffers)

    return KVCache(
        k=pin("k", cache.k),
        v=pin("v", cache.v),
        vision=constrain(cache.vision, CACHE["vision"]),
        length=cache.length,
    )


def data_shards() -> int:
    """Devices on the current mesh's ``data`` axis (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.shape[DATA]


def model_shards() -> int:
    """Devices on the current mesh's ``model`` axis (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.shape[MODEL]


def watched(x: jax.Array, row) -> jax.Array:
    """Row ``row`` of ``x [B, ...]`` as ``[D, ...]`` candidates, one per ``data`` shard:
    shard ``d`` takes its own local row ``row mod B/D``, so no device reads another's;
    ``select(..., owner(row, B), axis)`` later keeps the one that holds ``row``."""
    d = data_shards()
    local = x.reshape(d, x.shape[0] // d, *x.shape[1:])
    return jax.lax.dynamic_index_in_dim(local, row % local.shape[1], axis=1, keepdims=False)


def owner(row, batch: int):
    """The ``data`` shard holding row ``row`` of a ``batch``-row batch."""
    return row // (batch // data_shards())


def select(x: jax.Array, index, axis: int) -> jax.Array:
    """Entry ``index`` of ``x`` along ``axis``, as a masked sum (exact: every other term is
    zero). Where ``axis`` is split over devices each adds its part, a small all-reduce of the
    result, instead of gathering ``x``."""
    axis %= x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    mask = (jnp.arange(x.shape[axis]) == index).reshape(shape)
    if x.dtype == jnp.bool_:
        return (x & mask).any(axis)
    return jnp.where(mask, x, jnp.zeros((), x.dtype)).sum(axis, dtype=x.dtype)


# --- placing host values --------------------------------------------------------------


def put(value, axes: tuple[str | None, ...], mesh: Mesh | None) -> jax.Array:
    """The host array ``value`` on ``mesh`` split by logical ``axes`` (every process holds
    the whole ``value`` and places its devices' slices); on the default device without
    a mesh."""
    if mesh is None:
        return jnp.asarray(value)
    value = np.asarray(value)
    sharding = NamedSharding(mesh, spec(axes, value.shape, mesh.shape))
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def put_batch(tree, mesh: Mesh | None):
    """The arrays of a GRPO update's batch on ``mesh``, split by ``BATCH``."""
    if mesh is None:
        return tree

    def place(path, value):
        axes = BATCH.get(getattr(path[-1], "name", None))
        return put(value, axes or (None,) * np.ndim(value), mesh)

    return jax.tree_util.tree_map_with_path(place, tree)


def fetch(x: jax.Array) -> np.ndarray:
    """``x`` whole on the host of every process (a split result of a run of several
    processes is gathered from all of them: every process must call this alike)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=16)
def _zeros_cache(cfg, batch: int, capacity: int, dtype, mesh: Mesh):
    def shardings(name, n):
        return tuple(NamedSharding(mesh, spec(CACHE[name], s, mesh.shape)) for s in n)

    shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
    layers = cfg.num_hidden_layers
    out = KVCache(
        k=shardings("k", [shape] * layers),
        v=shardings("v", [shape] * layers),  # split on the same axes as k
        vision=NamedSharding(mesh, spec(CACHE["vision"], (batch, capacity), mesh.shape)),
        length=NamedSharding(mesh, PartitionSpec()),
    )
    return jax.jit(lambda: KVCache.create(cfg, batch, capacity, dtype), out_shardings=out)


def create_cache(cfg, batch: int, capacity: int, dtype, mesh: Mesh | None) -> KVCache:
    """``KVCache.create``, every buffer made in its shards on ``mesh`` (no device ever holds
    the whole cache)."""
    if mesh is None:
        return KVCache.create(cfg, batch, capacity, dtype)
    return _zeros_cache(cfg, batch, capacity, jnp.dtype(dtype), mesh)()


def zeros(shape, dtype, axes: tuple[str | None, ...], mesh: Mesh | None) -> jax.Array:
    """``jnp.zeros``, made in its shards on ``mesh`` when there is one."""
    if mesh is None:
        return jnp.zeros(shape, dtype)
    return jnp.zeros(shape, dtype, device=NamedSharding(mesh, spec(axes, shape, mesh.shape)))
