"""``python -m model``: generate text, pretrain the embedded checkpoint, run GRPO headless.

Each subcommand's options live here; its work lives in the module named in ``COMMANDS``,
which provides ``cli_main(args: argparse.Namespace) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os

from model import distributed

COMMANDS = {
    "generate": "model.generate",
    "pretrain": "model.rl.pretrain",
    "rl": "model.rl.train",
}


DTYPE_CHOICES = ("auto", "bfloat16", "float32")


def add_dtype(parser: argparse.ArgumentParser) -> None:
    """``--dtype``: the parameters' dtype (``model.checkpoint.load_pretrained``)."""
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="parameter dtype; auto (default) is the checkpoint's own",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
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
    add_dtype(g)
    distributed.add_arguments(g)

    pt = sub.add_parser("pretrain", help="supervised pretraining of the embedded tiny model")
    pt.add_argument("--out", default="assets/tiny-qwen3vl", metavar="DIR")
    pt.add_argument("--steps", type=int, default=None, metavar="N")
    pt.add_argument("--seed", type=int, default=0)

    rl = sub.add_parser("rl", help="GRPO on the synthetic visual task, headless")
    rl.add_argument("--model", default=None, metavar="DIR", help="default: the embedded model")
    rl.add_argument("--steps", type=int, default=50, metavar="N")
    rl.add_argument("--json", action="store_true", help="one JSON object per update")
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument(
        "--serve",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="also publish the telemetry for python -m dash --attach (default: an ipc socket)",
    )
    rl.add_argument("--allow-remote", action="store_true", help="--serve on a non-loopback address")
    rl.add_argument("--keys", metavar="DIR", help="--serve --allow-remote: CURVE key directory")
    add_dtype(rl)
    distributed.add_arguments(rl)
    return p


def main(argv: list[str] | None = None) -> int:
    # transformers (used for tokenizers only) would warn that PyTorch is absent
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    return importlib.import_module(COMMANDS[args.command]).cli_main(args)
