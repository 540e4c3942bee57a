"""GRPO objective against a numpy reference written out term by term."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.rl import grpo

CFG = grpo.GRPOConfig(clip_eps=0.2, kl_coef=0.1, temperature=0.7)
B, T, D, V = 3, 5, 4, 6


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def toy():
    """A tiny linear policy ``logits = x @ W`` and a GRPO batch with varied lengths."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    w = rng.normal(size=(D, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 1]], np.float32)
    logp_now = np.take_along_axis(_np_log_softmax(x @ w / CFG.temperature), targets[..., None], -1)
    # behaviour log-probs off by up to +-0.5 so some ratios leave [0.8, 1.2] and get clipped
    old = (logp_now[..., 0] + rng.uniform(-0.5, 0.5, size=(B, T))).astype(np.float32)
    ref = (logp_now[..., 0] + rng.normal(scale=0.3, size=(B, T))).astype(np.float32)
    rewards = np.array([1.0, 0.0, 0.5], np.float32)
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    batch = grpo.Batch(
        targets=jnp.asarray(targets),
        mask=jnp.asarray(mask),
        old_logp=jnp.asarray(old),
        ref_logp=jnp.asarray(ref),
        advantages=jnp.asarray(adv, dtype=jnp.float32),
    )
    return x, w, batch


def _reference(x, w, b):
    """Loss, dLoss/dlogits, dLoss/dW and the metrics, in float64 numpy, term by term."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    tgt, mask = np.asarray(b.targets), np.asarray(b.mask, np.float64)
    old, ref, adv = (np.asarray(a, np.float64) for a in (b.old_logp, b.ref_logp, b.advantages))
    tau, eps, beta = CFG.temperature, CFG.clip_eps, CFG.kl_coef
    z = x @ w
    logp_all = _np_log_softmax(z / tau)
    p = np.exp(logp_all)
    onehot = np.eye(V)[tgt]
    logp = (logp_all * onehot).sum(-1)
    n = mask.sum(-1, keepdims=True)
    weight = mask / n / B  # every row has >= 1 generated token

    loss = 0.0
    dloss_dlogp = np.zeros((B, T))
    clipped_count = np.zeros((B, T))
    kl = np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            ratio = np.exp(logp[i, t] - old[i, t])
            a = adv[i]
            unclipped = ratio * a
            clipped = min(max(ratio, 1 - eps), 1 + eps) * a
            kl[i, t] = np.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
            objective = min(unclipped, clipped) - beta * kl[i, t]
            loss -= weight[i, t] * objective
            active = unclipped <= clipped  # gradient flows through the ratio
            clipped_count[i, t] = 0.0 if active else 1.0
            d_obj = (ratio * a if active else 0.0) + beta * (np.exp(ref[i, t] - logp[i, t]) - 1)
            dloss_dlogp[i, t] = -weight[i, t] * d_obj
    dloss_dz = dloss_dlogp[..., None] * (onehot - p) / tau
    dloss_dw = np.einsum("btd,btv->dv", x, dloss_dz)
    entropy = -(p * logp_all).sum(-1)
    metrics = {
        "loss": loss,
        "kl": (weight * kl).sum(),
        "clip_ratio": (weight * clipped_count).sum(),
        "entropy": (weight * entropy).sum(),
    }
    return loss, dloss_dz, dloss_dw, metrics, (p, onehot, weight, dloss_dlogp)


def test_group_advantages_normalise_each_group():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    a = np.asarray(grpo.group_advantages(r))
    np.testing.assert_allclose(a[0], [1, -1, -1, 1], atol=1e-5)
    np.testing.assert_array_equal(a[1], 0.0)  # equal rewards teach nothing
    r = np.array([3.0, 1.0, 2.0], np.float32)
    np.testing.assert_allclose(
        np.asarray(grpo.group_advantages(jnp.asarray(r))),
        (r - 2.0) / (np.sqrt(2 / 3) + 1e-6),
        rtol=1e-6,
    )


def test_k3_kl_values():
    logp = jnp.array([-1.0, -2.0, -0.5, -3.0])
    ref = jnp.array([-1.0, -1.0, -2.5, -3.5])
    d = np.array([0.0, 1.0, -2.0, -0.5])
    np.testing.assert_allclose(np.asarray(grpo.kl_k3(logp, ref)), np.exp(d) - d - 1, rtol=1e-6)
    assert float(grpo.kl_k3(logp, ref)[0]) == 0.0
    assert (np.asarray(grpo.kl_k3(logp, ref)) >= 0).all()


def test_clip_fraction_on_hand_made_ratios():
    """Six tokens with hand-picked ratios; clipped = outside the band in A's direction."""
    ratios = np.array([1.0, 1.3, 0.7, 1.3, 0.7, 1.1], np.float32)
    adv = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0], np.float32)
    # A>0 clips at ratio>1.2 (token 1); A<0 clips at ratio<0.8 (token 4): 2 of 6 tokens
    logits = jnp.zeros((6, 1, 4))  # uniform: logp = log(1/4) at temperature 1
    old = np.log(0.25) - np.log(ratios)
    batch = grpo.Batch(
        targets=jnp.zeros((6, 1), jnp.int32),
        mask=jnp.ones((6, 1)),
        old_logp=jnp.asarray(old[:, None]),
        ref_logp=jnp.full((6, 1), np.log(0.25)),
        advantages=jnp.asarray(adv),
    )
    _, m = grpo.grpo_loss(logits, batch, grpo.GRPOConfig(clip_eps=0.2, kl_coef=0.0))
    assert float(m["clip_ratio"]) == pytest.approx(2 / 6, abs=1e-6)
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(m["entropy"]) == pytest.approx(np.log(4), rel=1e-6)


def test_token_logprobs_and_entropy_at_temperature():
    z = np.array([[[1.0, 2.0, 0.5]]], np.float32)
    lp = _np_log_softmax(z / 0.5)
    got = grpo.token_logprobs(jnp.asarray(z), jnp.array([[1]]), temperature=0.5)
    np.testing.assert_allclose(np.asarray(got), lp[..., 1], rtol=1e-6)
    ent = grpo.token_entropy(jnp.asarray(z), temperature=0.5)
    np.testing.assert_allclose(np.asarray(ent), -(np.exp(lp) * lp).sum(-1), rtol=1e-6)


def test_one_step_matches_numpy_reference(toy):
    x, w, batch = toy
    loss_ref, dz_ref, dw_ref, metrics_ref, _ = _reference(x, w, batch)
    xj = jnp.asarray(x)
    loss, metrics, grads, _ = grpo.grpo_gradients(lambda w_: xj @ w_, jnp.asarray(w), batch, CFG)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grads), dw_ref, rtol=1e-4, atol=1e-6)
    for k, v in metrics_ref.items():
        assert float(metrics[k]) == pytest.approx(v, rel=1e-5, abs=1e-7), k
    # the batch exercises both clipped and unclipped tokens
    assert 0.0 < metrics_ref["clip_ratio"] < 1.0
    # gradient w.r.t. the logits themselves
    dz = jax.grad(lambda z: grpo.grpo_loss(z, batch, CFG)[0])(xj @ jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(dz), dz_ref, rtol=1e-4, atol=1e-7)


def test_credit_matches_explicit_formula(toy):
    x, w, batch = toy
    _, _, _, _, (p, onehot, weight, dloss_dlogp) = _reference(x, w, batch)
    xj = jnp.asarray(x)
    *_, tokens = grpo.grpo_gradients(lambda w_: xj @ w_, jnp.asarray(w), batch, CFG)
    credit = tokens.credit
    mask = np.asarray(batch.mask)
    # credit = -(dLoss/dlogp / w) * |onehot - p|^2 / tau^2
    coef = np.where(mask > 0, -dloss_dlogp / np.where(mask > 0, weight, 1), 0)
    expected = coef * ((onehot - p) ** 2).sum(-1) / CFG.temperature**2
    np.testing.assert_allclose(np.asarray(credit), expected, rtol=1e-4, atol=1e-7)


def test_credit_is_a_directional_derivative(toy):
    """Finite difference: moving the logits along d log pi(y)/dz by h changes the objective
    by h * credit * w for that token."""
    x, w, batch = toy
    z = jnp.asarray(x) @ jnp.asarray(w)
    *_, tokens = grpo.grpo_gradients(lambda z_: z_, z, batch, CFG)
    credit = tokens.credit
    weight = np.asarray(grpo.token_weights(batch.mask))
    p = jax.nn.softmax(z / CFG.temperature, axis=-1)
    direction = (jax.nn.one_hot(batch.targets, V) - p) / CFG.temperature
    i, t, h = 2, 3, 1e-3
    dz = jnp.zeros_like(z).at[i, t].set(direction[i, t])
    z64 = np.asarray(z, np.float64)

    def objective(zz):
        return -_loss_only(zz, batch)

    fd = (objective(z64 + h * np.asarray(dz)) - objective(z64 - h * np.asarray(dz))) / (2 * h)
    assert fd == pytest.approx(float(credit[i, t]) * weight[i, t], rel=1e-3)


def _loss_only(z, b):
    """The reference loss of logits ``z`` (vectorised, float64)."""
    tgt, mask = np.asarray(b.targets), np.asarray(b.mask, np.float64)
    old, ref, adv = (np.asarray(a, np.float64) for a in (b.old_logp, b.ref_logp, b.advantages))
    logp = np.take_along_axis(_np_log_softmax(z / CFG.temperature), tgt[..., None], -1)[..., 0]
    ratio = np.exp(logp - old)
    a = adv[:, None]
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - CFG.clip_eps, 1 + CFG.clip_eps) * a)
    d = ref - logp
    kl = np.exp(d) - d - 1
    weight = mask / mask.sum(-1, keepdims=True) / B
    return -(weight * (surrogate - CFG.kl_coef * kl)).sum()


def test_credit_sign_follows_advantage_and_masked_tokens_get_zero(toy):
    x, w, batch = toy
    xj = jnp.asarray(x)
    no_kl = grpo.GRPOConfig(clip_eps=10.0, kl_coef=0.0, temperature=CFG.temperature)
    *_, tokens = grpo.grpo_gradients(lambda w_: xj @ w_, jnp.asarray(w), batch, no_kl)
    credit = tokens.credit
    credit, mask = np.asarray(credit), np.asarray(batch.mask)
    adv = np.asarray(batch.advantages)
    assert (credit[mask == 0] == 0).all()
    for i in range(B):
        got = credit[i][mask[i] > 0]
        assert (np.sign(got) == np.sign(adv[i])).all(), (i, got, adv[i])
    # a token the policy was already sure of gets (almost) no credit
    sure = jnp.zeros((1, 1, V)).at[0, 0, 2].set(30.0)
    one = grpo.Batch(
        targets=jnp.array([[2]]),
        mask=jnp.ones((1, 1)),
        old_logp=jnp.zeros((1, 1)),
        ref_logp=jnp.zeros((1, 1)),
        advantages=jnp.ones((1,)),
    )
    *_, tokens = grpo.grpo_gradients(lambda z: z, sure, one, grpo.GRPOConfig())
    c = tokens.credit
    assert abs(float(c[0, 0])) < 1e-6


def test_on_policy_batch_has_ratio_one_and_clips_nothing(toy):
    """Behaviour log-probs of the very parameters being updated: the plain policy gradient."""
    x, w, batch = toy
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    current = grpo.token_logprobs(xj @ wj, batch.targets, CFG.temperature)
    _, metrics, grads, _ = grpo.grpo_gradients(
        lambda w_: xj @ w_, wj, dataclasses.replace(batch, old_logp=current), CFG
    )
    assert float(metrics["clip_ratio"]) == 0.0
    assert np.isfinite(np.asarray(grads)).all()


def test_on_policy_flag_takes_the_behaviour_log_probs_from_the_same_forward(toy):
    """``on_policy``: the stored old log-probs are ignored (garbage here) and the result is that
    of passing the current log-probs; the token values are those of the forward pass."""
    x, w, batch = toy
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    current = grpo.token_logprobs(xj @ wj, batch.targets, CFG.temperature)
    want = grpo.grpo_gradients(
        lambda w_: xj @ w_, wj, dataclasses.replace(batch, old_logp=current), CFG
    )
    garbage = dataclasses.replace(batch, old_logp=jnp.full_like(current, 7.0))
    got = grpo.grpo_gradients(lambda w_: xj @ w_, wj, garbage, CFG, on_policy=jnp.bool_(True))
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
    np.testing.assert_allclose(np.asarray(got[2]), np.asarray(want[2]), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.asarray(got[3].credit), np.asarray(want[3].credit), rtol=1e-5)
    # per-token log-prob and entropy against numpy
    logp_all = _np_log_softmax(x @ w / CFG.temperature)
    targets = np.asarray(batch.targets)
    np.testing.assert_allclose(
        np.asarray(got[3].logprob),
        np.take_along_axis(logp_all, targets[..., None], -1)[..., 0],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(got[3].entropy), -(np.exp(logp_all) * logp_all).sum(-1), rtol=1e-5
    )
