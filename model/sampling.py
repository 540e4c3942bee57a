"""Choosing the next token: greedy, temperature, top-k, top-p (in that order, as
transformers' ``generate``).

The parameters are traced values (``SamplingParams.arrays``), so changing them never
recompiles the decode step. The *sampling distribution* reported in telemetry is the one the
token is drawn from: softmax(logits / temperature) restricted to the top-k / top-p set. Greedy
decoding draws from no distribution; it reports the model's own softmax(logits).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

TOP_ALTERNATIVES = 5


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k
    top_p: float = 1.0  # 1 = no top-p

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(temperature, top_k, top_p)`` as numpy scalars: ``sample``'s traced ``params``."""
        return np.float32(self.temperature), np.int32(self.top_k), np.float32(self.top_p)

    def as_dict(self) -> dict[str, float]:
        """The fields by name (``RunInfo.sampling``)."""
        return dataclasses.asdict(self)


GREEDY = SamplingParams()


def _filter(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set logits outside the top-k and the top-p nucleus to -inf (``[B, V]``)."""
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    rank = jnp.arange(scaled.shape[-1])
    ordered = jnp.where((top_k > 0) & (rank >= top_k), -jnp.inf, ordered)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the better-ranked tokens
    keep = (before < top_p) | (rank == 0)
    cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= cutoff, scaled, -jnp.inf)


def sample(key, logits: jax.Array, params) -> tuple[jax.Array, jax.Array]:
    """Draw one token per row of the logits.

    Args:
        key: the PRNG key (unused when greedy).
        logits: ``[B, V]``.
        params: ``(temperature, top_k, top_p)``, as ``SamplingParams.arrays`` gives them.
    Returns:
        ``tokens [B]`` int32 and the log-probabilities ``[B, V]`` float32 of the sampling
        distribution (see the module docstring).
    """
    temperature, top_k, top_p = params
    logits = logits.astype(jnp.float32)

    def greedy(_):
        return jnp.argmax(logits, -1).astype(jnp.int32), jax.nn.log_softmax(logits, -1)

    def draw(_):
        scaled = logits / temperature
        scaled = jax.lax.cond(
            (top_k > 0) | (top_p < 1), lambda s: _filter(s, top_k, top_p), lambda s: s, scaled
        )
        logp = jax.nn.log_softmax(scaled, -1)
        return jax.random.categorical(key, logp).astype(jnp.int32), logp

    return jax.lax.cond(temperature > 0, draw, greedy, None)


def top_alternatives(logp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ``TOP_ALTERNATIVES`` (``k``) most likely ids ``[..., k]`` int32 and their
    probabilities ``[..., k]``, of the log-probabilities ``logp [..., V]``."""
    values, ids = jax.lax.top_k(logp, TOP_ALTERNATIVES)
    return ids.astype(jnp.int32), jnp.exp(values)
