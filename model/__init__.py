"""Qwen3-VL in JAX/Flax NNX with a telemetry-emitting KV-cache decoder. No UI imports.

Public API (imported lazily, so ``import model.telemetry`` stays light):
``load_pretrained(path, dtype)``, ``save_pretrained(m, path)``, ``Qwen3VL``,
``init_random(config, seed)``, ``CheckpointError``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_pretrained": "model.checkpoint",
    "save_pretrained": "model.checkpoint",
    "CheckpointError": "model.checkpoint",
    "Qwen3VL": "model.qwen3_vl",
    "init_random": "model.qwen3_vl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
