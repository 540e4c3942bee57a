"""The numpy reference of the pooled attention map (``model.attention.pool_max``)."""

import numpy as np


def block_max(grid: np.ndarray, size: int) -> np.ndarray:
    """``grid [T, T]`` block-max pooled to ``[size, size]``: index ``i`` falls in bin
    ``i * r // T`` with ``r = min(T, size)``; bins past ``r`` stay 0."""
    t = grid.shape[0]
    r = min(t, size)
    bins = np.arange(t) * r // t
    out = np.zeros((size, size), np.float32)
    np.maximum.at(out, (bins[:, None], bins[None, :]), grid)
    return out
