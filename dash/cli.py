"""``python -m dash``: the live dashboard of a Qwen3-VL model sampling and learning."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dash", description=__doc__)
    p.add_argument("--model", metavar="DIR", help="run this HF Qwen3-VL checkpoint directory")
    p.add_argument("--image", metavar="PATH", help="image for --model inference")
    p.add_argument("--prompt", metavar="TEXT", help="prompt for --model inference")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T")
    p.add_argument("--fps", type=float, default=20.0, help="frames per second (default 20)")
    p.add_argument("--flash-hz", type=float, default=5.0, help="flash rate (default 5)")
    p.add_argument("--snapshot", action="store_true", help="print one frame as text and exit")
    p.add_argument("--steps", type=int, default=16, metavar="N", help="decode steps (snapshot)")
    p.add_argument("--size", default="160x48", metavar="COLSxROWS", help="snapshot size")
    p.add_argument("--record", metavar="FILE", help="write every event as JSON Lines")
    p.add_argument("--replay", metavar="FILE", help="play a recording")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="replay speed")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    raise SystemExit("python -m dash: the dashboard is not available yet")
