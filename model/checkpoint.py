"""Hugging Face checkpoint directories <-> ``Qwen3VL``, without torch.

A directory holds ``config.json`` and one ``model.safetensors`` or several shards listed in
``model.safetensors.index.json``. Tensor names are transformers 5.x's
(``model.language_model.layers.0.self_attn.q_proj.weight``, ``model.visual.blocks.0...``,
``lm_head.weight``); the older spelling (``model.layers...``, ``visual...``) is accepted.
Our parameters carry the same names and shapes; the per-layer tensors of
``language_model.layers`` and ``visual.blocks`` are stacked ``[layers, ...]``.

Every failure raises ``CheckpointError`` with one line naming the file or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
from flax import nnx
from safetensors.numpy import save_file

from model.config import ConfigError, Qwen3VLConfig
from model.qwen3_vl import Qwen3VL, build

INDEX_FILE = "model.safetensors.index.json"
STACKED = (("language_model", "layers"), ("visual", "blocks"))  # param paths with a layer axis


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: missing, malformed, or not Qwen3-VL."""


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


def _read_config(path: Path) -> Qwen3VLConfig:
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    try:
        return Qwen3VLConfig.from_json(config_file)
    except ConfigError as e:
        msg = str(e) if str(e).startswith(str(config_file)) else f"{config_file}: {e}"
        raise CheckpointError(msg) from None


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


class _Slot:
    """Where a checkpoint tensor goes: a parameter array and, if stacked, its layer index."""

    def __init__(self, array: np.ndarray, layer: int | None):
        self.array, self.layer = array, layer

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape[1:] if self.layer is not None else self.array.shape

    def fill(self, value: np.ndarray) -> None:
        if self.layer is None:
            self.array[...] = value
        else:
            self.array[self.layer] = value


def load_pretrained(path, dtype=jnp.float32) -> Qwen3VL:
    """Load a Hugging Face Qwen3-VL checkpoint directory; parameters cast to ``dtype``."""
    path = Path(path)
    config = _read_config(path)
    files = _tensor_files(path)
    abstract = nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, rngs=nnx.Rngs(0)))
    arrays, slots = {}, {}
    for key, var in nnx.to_flat_state(nnx.state(abstract)):
        arrays[key] = np.empty(var.shape, dtype=var.dtype)
        n = var.shape[0] if key[:2] in STACKED else None
        for layer in range(n) if n is not None else [None]:
            slots[hf_name(key, layer)] = _Slot(arrays[key], layer)

    for file in files:
        try:
            with safetensors.safe_open(file, framework="np") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    slot = slots.pop(_canonical(name), None)
                    if slot is None:
                        continue  # e.g. lm_head.weight of a tied checkpoint
                    tensor = f.get_tensor(name)
                    if tuple(tensor.shape) != slot.shape:
                        raise CheckpointError(
                            f"{file}: tensor {name} has shape {list(tensor.shape)}, "
                            f"expected {list(slot.shape)}"
                        )
                    slot.fill(tensor.astype(slot.array.dtype))
        except safetensors.SafetensorError as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
        except OSError as e:
            raise CheckpointError(f"{file}: unreadable ({e})") from None
    if slots:
        missing = sorted(slots)
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0]}{more}")

    return build(config, dtype, lambda key, shape, dtype: arrays[key])


def save_pretrained(m: Qwen3VL, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` that transformers'
    ``Qwen3VLForConditionalGeneration.from_pretrained`` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        value = np.asarray(jax.device_get(var.get_value()))
        if key[:2] in STACKED:
            for layer in range(value.shape[0]):
                tensors[hf_name(key, layer)] = np.ascontiguousarray(value[layer])
        else:
            tensors[hf_name(key)] = value
    config = m.config.to_dict()
    config["dtype"] = jnp.dtype(m.dtype).name
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
