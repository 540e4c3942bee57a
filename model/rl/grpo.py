"""GRPO (group relative policy optimisation) as pure JAX functions.

One GRPO step takes a group of ``G`` answers sampled for one prompt and their rewards:

- advantage of sample ``i``: ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within its group
  (population std), so a group whose samples all scored the same teaches nothing;
- per generated token ``k`` of sample ``i``, with ``logp`` the current policy's log-prob of
  the token, ``old`` the behaviour policy's (recorded when it was sampled) and ``ref`` the
  frozen initial policy's:

      ratio = exp(logp - old)
      surrogate = min(ratio * A_i, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A_i)
      kl = exp(ref - logp) - (ref - logp) - 1            (the k3 estimator, >= 0)
      objective = surrogate - kl_coef * kl

- normalisation (the original GRPO one): the objective is averaged over the generated
  tokens of each sequence, then over the sequences, so every sample weighs the same
  whatever its length; ``loss = -objective``. Metrics (kl, entropy, clip fraction) are
  averaged the same way.

All log-probs are taken at the sampling temperature, so the ratio compares the same
distributions that produced the samples.

Per-token credit (what the dashboard colours each generated token by). The update's
backward pass goes through the logits: ``g = dJ/dz`` at the position that chose token
``y``. The credit of that token is how much this gradient raises the token's own
log-probability, per unit of the token's weight ``w`` in the average:

    credit = <dJ/dz, d log pi(y)/dz> / w,     d log pi(y)/dz = (onehot(y) - p) / temperature

For this objective that is ``c * |onehot(y) - p|^2 / temperature^2`` with
``c = A * ratio`` where the ratio is not clipped (0 where it is) plus the KL pull
``kl_coef * (exp(ref - logp) - 1)``. So a credit has the sign of the advantage (up to the
small KL pull, and it is 0 where the clip stopped the gradient), is largest on tokens the
policy was unsure about, near 0 on tokens it was sure of, and 0 on masked tokens. It is
read off the same backward pass as the update (see ``grpo_gradients``). We credit the
decision (the logits that chose a token) rather than the token's input embedding: an
input embedding only influences the *later* tokens, so the last token would always get
0 and a decisive answer token would be credited for what came after it.

Shapes: ``B`` sequences, ``T`` positions, ``V`` vocabulary. ``logits[:, t]`` predicts
``targets[:, t]``; ``mask[:, t]`` is 1 on generated tokens and 0 on prompt and padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    clip_eps: float = 0.2
    kl_coef: float = 0.04
    temperature: float = 1.0  # the sampling temperature


@dataclasses.dataclass(frozen=True)
class Batch:
    """One GRPO group, flattened to token positions. A pytree of arrays."""

    targets: jax.Array  # [B, T] int32 token chosen at each position
    mask: jax.Array  # [B, T] float32, 1 on generated tokens
    old_logp: jax.Array  # [B, T] float32 behaviour log-probs (of the sampling parameters)
    ref_logp: jax.Array  # [B, T] float32 frozen initial policy's log-probs
    advantages: jax.Array  # [B] float32


jax.tree_util.register_dataclass(
    Batch, data_fields=["targets", "mask", "old_logp", "ref_logp", "advantages"], meta_fields=[]
)


def group_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``[..., G]`` rewards -> ``[..., G]`` advantages normalised within each group."""
    mean = rewards.mean(axis=-1, keepdims=True)
    std = rewards.std(axis=-1, keepdims=True)
    return (rewards - mean) / (std + eps)


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``[B, T, V]`` logits, ``[B, T]`` ids -> ``[B, T]`` log-prob of each id."""
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]


def token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``[B, T, V]`` -> ``[B, T]`` entropy (nats) of the sampling distribution."""
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return -(jnp.exp(logp_all) * logp_all).sum(axis=-1)


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k3 estimate of KL(pi || ref) from the sampled tokens' log-probs (elementwise, >= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def token_weights(mask: jax.Array) -> jax.Array:
    """``[B, T]`` weight of each token in the average: 1/n_i within sequence ``i`` (its
    ``n_i`` generated tokens), then 1/(number of sequences with at least one token)."""
    mask = mask.astype(jnp.float32)
    n = mask.sum(axis=-1, keepdims=True)
    per_seq = mask / jnp.maximum(n, 1.0)
    n_seqs = jnp.maximum((n > 0).sum(), 1)
    return per_seq / n_seqs


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-sequence mean over masked tokens, then mean over sequences: a scalar."""
    return (x * token_weights(mask)).sum()


def grpo_loss(logits: jax.Array, batch: Batch, cfg: GRPOConfig) -> tuple[jax.Array, dict]:
    """The GRPO loss of ``[B, T, V]`` logits on ``batch``, and its metrics (scalars)."""
    logp = token_logprobs(logits, batch.targets, cfg.temperature)
    ratio = jnp.exp(logp - batch.old_logp)
    adv = batch.advantages[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps) * adv
    surrogate = jnp.minimum(unclipped, clipped)
    kl = kl_k3(logp, batch.ref_logp)
    loss = -masked_mean(surrogate - cfg.kl_coef * kl, batch.mask)
    # A token is clipped when the clipped branch is the smaller one: its surrogate has
    # no gradient (ratio already moved past 1 +- clip_eps in the advantage's direction).
    is_clipped = (clipped < unclipped).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "kl": masked_mean(kl, batch.mask),
        "clip_ratio": masked_mean(is_clipped, batch.mask),
        "entropy": masked_mean(token_entropy(logits, cfg.temperature), batch.mask),
    }
    return loss, metrics


def token_credit(
    logits: jax.Array, logits_grad: jax.Array, batch: Batch, cfg: GRPOConfig
) -> jax.Array:
    """``[B, T]`` per-token credit (module docstring) from the logits and ``dLoss/dlogits``.

    ``logits_grad`` is the gradient of the *loss* (= -objective); it is negated here.
    """
    p = jax.nn.softmax(logits.astype(jnp.float32) / cfg.temperature, axis=-1)
    onehot = jax.nn.one_hot(batch.targets, logits.shape[-1], dtype=jnp.float32)
    dlogp_dz = (onehot - p) / cfg.temperature
    raw = -(logits_grad * dlogp_dz).sum(axis=-1)
    w = token_weights(batch.mask)
    return jnp.where(w > 0, raw / jnp.where(w > 0, w, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class TokenValues:
    """Per-token values of one update's forward and backward pass, each ``[B, T]``."""

    credit: jax.Array  # module docstring; 0 on masked tokens
    logprob: jax.Array  # log-prob of the token at the sampling temperature (before the update)
    entropy: jax.Array  # nats, of the sampling distribution at the token's position


jax.tree_util.register_dataclass(
    TokenValues, data_fields=["credit", "logprob", "entropy"], meta_fields=[]
)


def grpo_gradients(
    forward: Callable[[Any], jax.Array],
    params: Any,
    batch: Batch,
    cfg: GRPOConfig,
    on_policy: jax.Array | bool = False,
) -> tuple[jax.Array, dict, Any, TokenValues]:
    """One backward pass of the GRPO loss through ``forward(params) -> [B, T, V] logits``.

    Returns ``(loss, metrics, grads, tokens)``: the gradient w.r.t. the logits is computed
    first, read for the credit, then pulled back through the model to the parameters.
    ``on_policy`` (a bool, traced or not): ``params`` are the parameters that sampled the
    batch, so ``batch.old_logp`` is ignored and taken from this very forward pass: the ratio
    is exactly 1 and the gradient is the plain policy gradient.
    """
    logits, pullback = jax.vjp(forward, params)
    logprob = token_logprobs(logits, batch.targets, cfg.temperature)
    old = jnp.where(on_policy, jax.lax.stop_gradient(logprob), batch.old_logp)
    batch = dataclasses.replace(batch, old_logp=old)
    (loss, metrics), logits_grad = jax.value_and_grad(grpo_loss, has_aux=True)(logits, batch, cfg)
    (grads,) = pullback(logits_grad)
    tokens = TokenValues(
        credit=token_credit(logits, logits_grad, batch, cfg),
        logprob=logprob,
        entropy=token_entropy(logits, cfg.temperature),
    )
    return loss, metrics, grads, tokens
