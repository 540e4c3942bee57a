"""``python -m model``: generate text, pretrain the embedded checkpoint, run GRPO headless."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a checkpoint directory")
    g.add_argument("--model", required=True, metavar="DIR", help="HF Qwen3-VL checkpoint dir")
    g.add_argument("--image", metavar="PATH", help="image file to show the model")
    g.add_argument("--prompt", required=True, metavar="TEXT")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 is greedy")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="0 disables top-k")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P")
    g.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise SystemExit(f"python -m model: {args.command!r} is not available yet")
