"""Hugging Face checkpoint directories <-> ``Qwen3VL``, without torch.

A directory holds ``config.json`` and one ``model.safetensors`` or several shards listed in
``model.safetensors.index.json``. Tensor names are transformers 5.x's
(``model.language_model.layers.0.self_attn.q_proj.weight``, ``model.visual.blocks.0...``,
``lm_head.weight``); the older spelling (``model.layers...``, ``visual...``) is accepted.
Our parameters carry the same names and shapes; only the vision tower's blocks are stacked
``[depth, ...]`` (``visual.blocks``).

Loading streams: every parameter is read from the files (positioned reads, no memory map:
``model.safetensors_file``) into its final array, one at a time, so the host holds at most
one tensor besides the model. Each array
is placed by ``place(path, shape, dtype, read)`` (one device by default; ``read(index)``
reads any slice of it, so a sharded placement reads only each device's part:
``model.sharding.placement``). Every failure raises
``CheckpointError`` with one line naming the file or tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from model.config import ConfigError, Qwen3VLConfig
from model.qwen3_vl import Qwen3VL, build
from model.safetensors_file import FormatError, SafetensorsFile

INDEX_FILE = "model.safetensors.index.json"
STACKED = ("visual", "blocks")  # the parameters with a leading block axis
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: missing, malformed, or not Qwen3-VL."""


@dataclasses.dataclass(frozen=True)
class LoadProgress:
    """How far a load is: bytes of parameters (in the chosen dtype) placed of the total,
    checkpoint files done, and the largest host array read at once (one tensor or slice)."""

    bytes_loaded: int
    bytes_total: int
    files_done: int
    files: int
    largest_read: int


Read = Callable[[tuple[slice, ...]], np.ndarray]
Place = Callable[[tuple, tuple[int, ...], np.dtype, Read], jax.Array]  # (path, shape, ...)


def place_on_one_device(path: tuple, shape: tuple[int, ...], dtype, read: Read) -> jax.Array:
    """The default placement: the whole array on the default device."""
    return jax.device_put(read(tuple(slice(0, n) for n in shape)))


def hf_name(path: tuple, layer: int | None = None) -> str:
    """Checkpoint tensor name of our parameter ``path`` (``layer`` for stacked ones)."""
    parts = [str(p) for p in path]
    if layer is not None:
        parts.insert(2, str(layer))
    return ".".join(parts) if parts[0] == "lm_head" else "model." + ".".join(parts)


def _canonical(name: str) -> str:
    """transformers 4.x names -> 5.x names."""
    if name.startswith("visual."):
        return "model." + name
    new = ("model.language_model.", "model.visual.")
    if name.startswith("model.") and not name.startswith(new):
        return "model.language_model." + name.removeprefix("model.")
    return name


def _read_config(path: Path) -> tuple[Qwen3VLConfig, dict]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    try:
        return Qwen3VLConfig.from_json(config_file), json.loads(config_file.read_text())
    except ConfigError as e:
        msg = str(e) if str(e).startswith(str(config_file)) else f"{config_file}: {e}"
        raise CheckpointError(msg) from None


def load_config(path) -> Qwen3VLConfig:
    """The ``config.json`` of a checkpoint directory."""
    return _read_config(Path(path))[0]


def _tensor_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e})") from None
        files = [path / n for n in names]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: no such file (listed in {INDEX_FILE})")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors file")
    return files


@dataclasses.dataclass(frozen=True)
class _Tensor:
    file: int  # index into the checkpoint's files
    name: str  # as written in the file
    shape: tuple[int, ...]
    dtype: str  # safetensors' spelling, e.g. "BF16"


def _tensors(handles: list[SafetensorsFile]) -> dict[str, _Tensor]:
    """Every tensor of the checkpoint by canonical name, from the files' headers."""
    return {
        _canonical(name): _Tensor(i, name, f.shape(name), f.dtype(name))
        for i, f in enumerate(handles)
        for name in f.names()
    }


def checkpoint_dtype(path) -> str:
    """The name (a key of ``DTYPES``) of the dtype a checkpoint directory's parameters are
    stored in: ``config.json``'s ``dtype`` (or ``torch_dtype``), else that of its first
    floating-point tensor."""
    path = Path(path)
    _, raw = _read_config(path)
    for d in (raw, raw.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if d.get(key) in DTYPES:
                return d[key]
    files = _tensor_files(path)
    with contextlib.ExitStack() as stack:
        handles = [_open(f, stack) for f in files]
        for t in _tensors(handles).values():
            if t.dtype in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[t.dtype]
    raise CheckpointError(f"{path}: no floating-point tensor to take the dtype from")


def _open(file: Path, stack: contextlib.ExitStack) -> SafetensorsFile:
    try:
        return stack.enter_context(SafetensorsFile(file))
    except FormatError as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None


def load_pretrained(
    path,
    dtype="auto",
    *,
    place: Place = place_on_one_device,
    on_progress: Callable[[LoadProgress], None] | None = None,
) -> Qwen3VL:
    """Load a Hugging Face Qwen3-VL checkpoint directory.

    Args:
        dtype: the parameters' dtype: ``"auto"`` (the checkpoint's own, ``checkpoint_dtype``,
            as transformers' ``torch_dtype="auto"``), ``"bfloat16"``, ``"float32"`` or a
            numpy / JAX dtype.
        place: builds each parameter's array (its path, shape and dtype) from ``read(index)``
            (module docstring).
        on_progress: called after each parameter with the ``LoadProgress`` so far.
    Returns:
        the model.
    """
    path = Path(path)
    config, _ = _read_config(path)
    if dtype == "auto":
        dtype = checkpoint_dtype(path)
    dtype = jnp.dtype(DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    files = _tensor_files(path)
    abstract = nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, rngs=nnx.Rngs(0)))
    params = {key: var for key, var in nnx.to_flat_state(nnx.state(abstract))}
    with contextlib.ExitStack() as stack:
        handles = [_open(f, stack) for f in files]
        tensors = _tensors(handles)
        sources = {key: _sources(key, var.shape, tensors, files) for key, var in params.items()}
        reader = _Reader(handles, files, dtype)
        total = sum(math.prod(var.shape) for var in params.values()) * dtype.itemsize
        loaded = 0
        arrays = {}
        for key in sorted(params, key=lambda key: sources[key][0].file):
            read = functools.partial(reader.read, sources[key], key[:2] == STACKED)
            arrays[key] = place(key, params[key].shape, dtype, read)
            loaded += math.prod(params[key].shape) * dtype.itemsize
            if on_progress is not None:
                done = sources[key][0].file  # files before this one are done
                on_progress(LoadProgress(loaded, total, done, len(files), reader.largest))
        if on_progress is not None:
            on_progress(LoadProgress(loaded, total, len(files), len(files), reader.largest))
    return build(config, dtype, lambda key, shape, dtype: arrays.pop(key))


def _sources(key: tuple, shape: tuple[int, ...], tensors: dict, files: list[Path]) -> list:
    """The checkpoint tensors of our parameter ``key`` (one per block for stacked ones),
    checked for presence and shape."""
    stacked = key[:2] == STACKED
    names = [hf_name(key, i) for i in range(shape[0])] if stacked else [hf_name(key)]
    want = shape[1:] if stacked else shape
    found = []
    for name in names:
        t = tensors.get(name)
        if t is None:
            missing = sorted(n for n in names if n not in tensors)
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CheckpointError(f"{files[0].parent}: missing tensor {missing[0]}{more}")
        if t.shape != tuple(want):
            raise CheckpointError(
                f"{files[t.file]}: tensor {t.name} has shape {list(t.shape)}, expected {list(want)}"
            )
        found.append(t)
    return found


class _Reader:
    """Reads slices of parameters from the open checkpoint files, in the load's dtype, and
    notes the largest host array it made (the loader's staging, one slice at a time)."""

    def __init__(self, handles: list, files: list[Path], dtype: np.dtype) -> None:
        self.handles, self.files, self.dtype = handles, files, dtype
        self.largest = 0

    def read(self, tensors: list[_Tensor], stacked: bool, index: tuple[slice, ...]):
        """The slice ``index`` of a parameter from its tensors (one, or one per block)."""
        staged = 0
        try:
            if stacked:
                blocks = [self._get(t, index[1:]) for t in tensors[index[0]]]
                raw = np.stack(blocks)
                staged = sum(b.nbytes for b in blocks)
            else:
                (t,) = tensors
                raw = self._get(t, index)
        except FormatError as e:
            file = self.files[tensors[0].file]
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
        value = raw.astype(self.dtype, copy=False)
        staged += raw.nbytes + (value.nbytes if value is not raw else 0)
        self.largest = max(self.largest, staged)
        return value

    def _get(self, t: _Tensor, index: tuple[slice, ...]) -> np.ndarray:
        return self.handles[t.file].read(t.name, index)


def save_pretrained(m: Qwen3VL, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` that transformers'
    ``Qwen3VLForConditionalGeneration.from_pretrained`` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        value = np.asarray(jax.device_get(var.get_value()))
        if key[:2] == STACKED:
            for layer in range(value.shape[0]):
                tensors[hf_name(key, layer)] = np.ascontiguousarray(value[layer])
        else:
            tensors[hf_name(key)] = value
    config = m.config.to_dict()
    config["dtype"] = jnp.dtype(m.dtype).name
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
