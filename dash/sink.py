"""What a rollout function is handed: ``emit(event)`` plus keyword conveniences that
build the telemetry events, for training loops that do not build them themselves.

Everything passes through ``emit`` of the target (the dropping channel, possibly via a
recorder), so it never waits for the UI. A value a loop does not have stays absent
(``None`` / empty) and the panel shows "—" or "waiting", never an invented number.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from model import telemetry as tm


def _array(values, dtype) -> np.ndarray:
    return np.asarray(values if values is not None else [], dtype=dtype)


def no_stats() -> tm.HeadStats:
    """Per-head summaries of a loop that has none: empty arrays (panels say "waiting")."""
    empty = np.zeros((0, 0), np.float32)
    return tm.HeadStats(empty, empty, empty, empty, np.zeros((0, 0), np.int32))


class EventSink:
    """``rollout_fn(sink, control)`` receives one of these. Safe from any one thread."""

    def __init__(self, target: tm.Sink) -> None:
        self._target = target
        self._last_decode: float | None = None

    def emit(self, event: tm.Event) -> None:
        self._target.emit(event)

    def decode(
        self,
        *,
        step: int,
        token_id: int,
        token_text: str,
        prob: float,
        cache_len: int,
        cache_capacity: int,
        episode: int = 0,
        sample: int = 0,
        top_ids: Sequence[int] = (),
        top_probs: Sequence[float] = (),
        top_texts: Sequence[str] = (),
        position: tuple[int, int, int] | None = None,
        stats: tm.HeadStats | None = None,
        layer: int = 0,
        head: int = 0,
        attn_row: Sequence[float] | None = None,
        elapsed_ms: float | None = None,
        done: bool = False,
    ) -> None:
        """One sampled token. Without ``elapsed_ms`` the wall time since the previous
        ``decode`` call is used (None for the first one)."""
        now = time.perf_counter()
        if elapsed_ms is None and self._last_decode is not None:
            elapsed_ms = (now - self._last_decode) * 1000.0
        self._last_decode = now
        self.emit(
            tm.DecodeEvent(
                episode=episode,
                sample=sample,
                step=step,
                token_id=int(token_id),
                token_text=str(token_text),
                prob=float(prob),
                top_ids=_array(top_ids, np.int32),
                top_probs=_array(top_probs, np.float32),
                top_texts=tuple(str(t) for t in top_texts),
                cache_len=int(cache_len),
                cache_capacity=int(cache_capacity),
                position=None if position is None else tuple(int(p) for p in position),
                stats=stats if stats is not None else no_stats(),
                layer=layer,
                head=head,
                attn_row=_array(attn_row, np.float32),
                elapsed_ms=elapsed_ms,
                done=done,
            )
        )

    def train(
        self,
        *,
        step: int,
        reward_mean: float,
        reward_std: float | None = None,
        kl: float | None = None,
        loss: float | None = None,
        clip_frac: float | None = None,
        entropy: float | None = None,
        grad_norm: float | None = None,
        tokens_per_s: float | None = None,
        rewards: Sequence[float] = (),
    ) -> None:
        """One policy update's metrics."""
        self.emit(
            tm.TrainEvent(
                step=step,
                reward_mean=float(reward_mean),
                reward_std=reward_std,
                kl=kl,
                loss=loss,
                clip_frac=clip_frac,
                entropy=entropy,
                grad_norm=grad_norm,
                tokens_per_s=tokens_per_s,
                rewards=_array(rewards, np.float32),
            )
        )

    def credit(
        self,
        tokens: Sequence[str],
        credits: Sequence[float],
        *,
        step: int = 0,
        sample: int = 0,
        reward: float | None = None,
        advantage: float | None = None,
    ) -> None:
        """Per-token credit of one finished episode."""
        self.emit(
            tm.CreditEvent(
                step=step,
                sample=sample,
                tokens=tuple(str(t) for t in tokens),
                credits=_array(credits, np.float32),
                reward=reward,
                advantage=advantage,
            )
        )
