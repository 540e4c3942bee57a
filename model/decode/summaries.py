"""What the compiled decode observes of the watched row's attention, and its reduction to
the telemetry's summaries (on the device, so only small arrays leave it).

A step observes ``Observations``: the attention weights of the newest query per layer and
query head, and for decode steps the parts of their softmax (``cached_attention``), which
make the summaries cheaper (``softmax_stats``: no logarithm per key). ``summarize`` reduces
them to ``Summaries``: ``[L, H]`` per metric and the selected head's row.

On a mesh (``model.sharding``) every ``data`` shard observes a candidate of the watched row
(its own local row, axis ``D``; one candidate without a mesh) and the heads stay split over
``model``: the summaries are reduced where the heads live, and only they and the selected
head's row cross devices (``model.decode.programs`` keeps the candidate of the shard that
holds the watched row).

A decode chunk buffers its steps' observations and summarises them all after its loop
when they fit in ``SUMMARIZE_LATER_BYTES`` (every operation inside the loop costs a fixed
time per step); longer rows are summarised inside each step, while they are still in the
CPU's caches (``summarize_later``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model import sharding
from model.attention import head_stats, softmax_stats
from model.config import TextConfig
from model.telemetry import HeadStats

SUMMARIZE_LATER_BYTES = 1 << 21  # most bytes of attention rows a chunk buffers


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Observations:
    """The watched row's attention of one query per layer and head: weights ``rows
    [..., L, D, H, K]`` over ``K`` key slots (``D`` candidates) and, for decode steps, their
    softmax's ``scores [..., L, D, H, K]``, maximum ``top`` and log-sum-exp ``lse [..., L,
    D, H]``. A leading axis stacks the steps of a chunk."""

    rows: jax.Array
    scores: jax.Array | None = None
    top: jax.Array | None = None
    lse: jax.Array | None = None

    @classmethod
    def stack(cls, steps: list[Observations]) -> Observations:
        """One step's observations from each layer's, ``[D, H, K]`` -> ``[L, D, H, K]``."""
        return jax.tree.map(lambda *xs: jnp.stack(xs), *steps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Summaries:
    """``HeadStats``' fields ``[..., L, D, H]`` and the selected head's ``row [..., D, K]``
    (``D`` candidates)."""

    max_weight: jax.Array
    entropy: jax.Array
    vision_mass: jax.Array
    sink_mass: jax.Array
    argmax: jax.Array
    row: jax.Array

    def columns(self) -> dict[str, jax.Array]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def summarize(obs: Observations, vision: jax.Array, layer, head) -> Summaries:
    """The summaries of ``obs`` (any leading axes), ``vision [K]`` marking image keys, and
    the row of the selected ``(layer, head)``."""
    if obs.scores is None:
        stats = head_stats(obs.rows, vision)
    else:
        stats = softmax_stats(obs.rows, (obs.scores, obs.top, obs.lse), vision)
    rows = jax.lax.dynamic_index_in_dim(obs.rows, layer, axis=-4, keepdims=False)
    return Summaries(**stats, row=sharding.select(rows, head, axis=-2))


def summarize_later(cfg: TextConfig, capacity: int, steps: int) -> bool:
    """Whether a chunk of ``steps`` steps over a ``capacity``-slot cache buffers its steps'
    observations (weights and scores) and summarises them after its loop."""
    keys = capacity + steps
    per_step = 2 * 4 * cfg.num_hidden_layers * cfg.num_attention_heads * keys
    return steps * per_step <= SUMMARIZE_LATER_BYTES


def empty_store(cfg: TextConfig, capacity: int, steps: int, mesh=None) -> Observations | Summaries:
    """Zeroed buffers for what each of ``steps`` decode steps stores: its observations
    (``summarize_later``) or its summaries, ``[steps, ...]``, split over ``mesh`` (one
    device without one) as ``model.sharding.TELEMETRY`` says."""
    shards = 1 if mesh is None else mesh.shape[sharding.DATA]
    heads = (steps, cfg.num_hidden_layers, shards, cfg.num_attention_heads)
    keys = capacity + steps

    def zeros(shape, name, dtype=jnp.float32):
        return sharding.zeros(shape, dtype, sharding.TELEMETRY[name], mesh)

    if summarize_later(cfg, capacity, steps):
        rows = (*heads, keys)
        return Observations(
            zeros(rows, "rows"), zeros(rows, "rows"), zeros(heads, "heads"), zeros(heads, "heads")
        )
    metrics = {name: zeros(heads, "heads") for name in HeadStats.METRICS}
    row = zeros((steps, shards, keys), "row")
    return Summaries(**metrics, argmax=zeros(heads, "heads", jnp.int32), row=row)
