"""A test-only rollout for the end-to-end tests: hand-built events (tests/dash/events.py)
at a steady rate, honouring ``control.gate()`` and ``control.selection`` like a real
rollout. Run as a script it shows them in the dashboard:

    python tests/dash/live_rollout.py [--rate HZ] [--fail-after N] [--stuck] [--facade S]
        [--train-every N] [--serve [ADDRESS] [--record FILE]]

With ``--serve`` it runs headless and publishes instead (``dash.serve``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model import telemetry as tm  # noqa: E402
from tests.dash import events as ev  # noqa: E402


def rollout(
    rate: float = 50.0, fail_after: int | None = None, stuck: bool = False, train_every: int = 0
):
    """A rollout function emitting one decode step every 1 / ``rate`` seconds, and after
    every ``train_every`` steps a train and a credit event (step k: reward k / 100); it
    raises at step ``fail_after``; a ``stuck`` one never returns (it ignores ``control``)."""

    def run(sink, control: tm.RolloutControl) -> None:
        sink.emit(ev.run_info())
        while stuck:
            time.sleep(0.05)
        sink.emit(tm.PhaseEvent("prefill", True))
        sink.emit(ev.prefill())
        sink.emit(tm.PhaseEvent("prefill", False, 42.0))
        sink.emit(tm.PhaseEvent("decode", True, 0.0))
        step = 0
        while control.gate():
            if fail_after is not None and step == fail_after:
                raise RuntimeError(f"test rollout failed at step {step}")
            sample, layer, head = control.selection
            event = ev.decode(step % 200, f"w{step}", sample=sample, layer=layer, head=head)
            sink.emit(dataclasses.replace(event, first=step))
            step += 1
            if train_every and step % train_every == 0:
                update = step // train_every
                sink.emit(ev.train(step=update, reward_mean=update / 100))
                sink.emit(ev.credit(step=update, sample=sample))
            time.sleep(1.0 / rate)

    return run


def facade(seconds: float) -> int:
    """The same tokens fed from this (main) thread through ``dash.LiveTUI``."""
    import dash

    tui = dash.LiveTUI(
        num_layers=ev.LAYERS,
        num_heads=ev.HEADS,
        num_kv_heads=ev.KV_HEADS,
        head_dim=ev.HEAD_DIM,
        max_cache=ev.CAPACITY,
    )
    tui.start()
    try:
        step, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            e = ev.decode(step, f"f{step}")
            _, layer, head = tui.control.selection
            tui.update_decode(
                step=step,
                token_id=e.token_ids[0],
                token_text=e.token_texts[0],
                prob=e.probs[0],
                cache_len=e.cache_len,
                stats=e.stats.step(0),
                attn_row=e.attn_row(0),
                layer=layer,
                head=head,
            )
            tui.update_training(step=step, reward_mean=0.5, kl=0.01, loss=0.25)
            step += 1
            time.sleep(0.02)
    finally:
        tui.stop()
    return 0


def main() -> int:
    import dash

    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--fail-after", type=int)
    p.add_argument("--stuck", action="store_true")
    p.add_argument("--facade", type=float, metavar="SECONDS", help="feed LiveTUI this long")
    p.add_argument("--train-every", type=int, default=0, metavar="N")
    p.add_argument("--serve", nargs="?", const="", metavar="ADDRESS", help="headless, published")
    p.add_argument("--record", metavar="FILE", help="with --serve: also record")
    args = p.parse_args()
    if args.facade:
        return facade(args.facade)
    fn = rollout(args.rate, args.fail_after, args.stuck, args.train_every)
    if args.serve is not None:
        return dash.serve(fn, args.serve or None, record=args.record)
    return dash.run(fn)


if __name__ == "__main__":
    raise SystemExit(main())
