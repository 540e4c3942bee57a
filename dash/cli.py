"""``python -m dash``: the live dashboard of a Qwen3-VL model sampling and learning."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import traceback

from model import distributed

PROG = "python -m dash"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage wall
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    p.add_argument("--model", metavar="DIR", help="run this HF Qwen3-VL checkpoint directory")
    p.add_argument("--image", metavar="PATH", help="image for --model inference")
    p.add_argument("--prompt", metavar="TEXT", help="prompt for --model inference")
    p.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="--model runs (default 64)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="--model runs; 0 is greedy"
    )
    p.add_argument(
        "--cache",
        type=int,
        default=1024,
        metavar="N",
        help="--model runs: KV cache slots for each prompt and its answer (default 1024)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="parameter dtype; auto (default) is the checkpoint's own",
    )
    p.add_argument("--fps", type=float, default=20.0, help="frames per second (default 20)")
    p.add_argument("--flash-hz", type=float, default=5.0, help="flash rate (default 5)")
    p.add_argument(
        "--layers",
        type=int,
        default=6,
        metavar="N",
        help="layers in the attention / KV window (default 6)",
    )
    p.add_argument("--snapshot", action="store_true", help="print one frame as text and exit")
    p.add_argument("--steps", type=int, default=16, metavar="N", help="decode steps (snapshot)")
    p.add_argument("--size", default="160x48", metavar="COLSxROWS", help="snapshot size")
    p.add_argument("--record", metavar="FILE", help="write every event as JSON Lines")
    p.add_argument("--replay", metavar="FILE", help="play a recording")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="replay speed")
    p.add_argument("--seed", type=int, default=0)
    link = p.add_argument_group("a headless job and its viewers")
    link.add_argument(
        "--serve",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run without a terminal and publish the telemetry on ADDRESS (tcp://HOST:PORT or"
        " ipc://PATH; default: an ipc socket of yours)",
    )
    link.add_argument(
        "--attach", nargs="?", const="", metavar="ADDRESS", help="show a run published by --serve"
    )
    link.add_argument(
        "--allow-remote",
        action="store_true",
        help="--serve: bind a non-loopback address; viewers then need a CURVE key",
    )
    link.add_argument("--keys", metavar="DIR", help="--serve: the CURVE key directory")
    link.add_argument("--key", metavar="KEY", help="--attach: the key --serve printed, or @FILE")
    distributed.add_arguments(p)
    return p


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[int, int]:
    """Option combinations and ranges; returns the snapshot size."""
    for name in ("fps", "flash_hz", "speed"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    for name in ("steps", "layers", "max_new_tokens", "cache"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.replay and args.model:
        parser.error("--replay plays a recording; it cannot be combined with --model")
    if (args.image or args.prompt) and not args.model:
        parser.error("--image and --prompt are for --model DIR")
    match = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if not match:
        parser.error(f"--size {args.size!r}: expected COLSxROWS, e.g. 160x48")
    from dash.layout import MIN_SIZE

    size = int(match[1]), int(match[2])
    if size[0] < MIN_SIZE[0] or size[1] < MIN_SIZE[1]:
        parser.error(
            f"--size {args.size}: the dashboard needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}"
        )
    if args.record and args.replay and os.path.abspath(args.record) == os.path.abspath(args.replay):
        parser.error("--record would overwrite the --replay file")
    if args.serve is not None and (args.snapshot or args.attach is not None):
        parser.error("--serve runs headless; it cannot be combined with --snapshot or --attach")
    if args.attach is not None and (args.model or args.replay or args.record or args.snapshot):
        parser.error("--attach shows a --serve run: --model, --replay and --record go there")
    if (args.replay or args.attach is not None) and distributed.requested(args):
        parser.error("--mesh and the options of several processes are for a live run")
    if (args.allow_remote or args.keys) and args.serve is None:
        parser.error("--allow-remote and --keys are for --serve")
    if args.key and args.attach is None:
        parser.error("--key is for --attach")
    _check_link(args, parser)
    return size


def _check_link(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The --serve / --attach address and the --key, before anything loads."""
    from model import endpoint

    try:
        if args.serve:
            endpoint.check_bind(endpoint.parse(args.serve), args.allow_remote)
        if args.attach:
            endpoint.parse(args.attach)
        if args.key:
            endpoint.viewer_key(args.key)
    except endpoint.AddressError as e:
        parser.error(f"--{'serve' if args.serve else 'attach'} {e}")


class _Status:
    """A progress note on an interactive stderr, rewritten in place and erased (not
    scrolled) once done."""

    def __init__(self, text: str) -> None:
        self.shown = sys.stderr.isatty()
        self.text = ""
        self.update(text)

    def update(self, text: str) -> None:
        if self.shown:
            line = f"{PROG}: {text}"
            print(line.ljust(len(self.text)), end="\r", file=sys.stderr, flush=True)
            self.text = line

    def loading(self, progress) -> None:
        """The checkpoint loader's ``LoadProgress``."""
        gb = 1e9
        self.update(
            f"loading the model: {progress.bytes_loaded / gb:.2f} of "
            f"{progress.bytes_total / gb:.2f} GB, file {progress.files_done} of {progress.files}"
        )

    def clear(self) -> None:
        if self.shown:
            print(" " * len(self.text), end="\r", file=sys.stderr, flush=True)


def _source(args: argparse.Namespace, status: _Status, mesh=None):
    """(rollout_fn, header label) for the chosen source; loading reports to ``status``; a
    live run's model is placed on ``mesh`` (one device: ``None``)."""
    from dash import record, sources

    if args.replay:
        recording = record.load(args.replay)
        label = f"replay {os.path.basename(args.replay)} ×{args.speed:g}"
        if recording.skipped:
            label += f" · {recording.skipped} unknown record(s) skipped"
        return record.replay_rollout(recording, args.speed), label
    if args.model:
        fn = sources.model_source(
            args.model,
            image=args.image,
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            dtype=args.dtype,
            cache=args.cache,
            on_progress=status.loading,
            mesh=mesh,
        )
        return fn, f"model {os.path.basename(os.path.normpath(args.model))}"
    fn = sources.default_source(seed=args.seed, dtype=args.dtype, mesh=mesh)
    return fn, ""


def _mesh_label(mesh) -> str:
    return "x".join(str(n) for n in mesh.shape.values())  # data x model


def _headless(args: argparse.Namespace, mesh) -> int:
    """A process other than 0 of a run of several: the same rollout without a screen, steered
    by process 0 (``model.distributed``)."""
    from dash import sources

    try:
        rollout_fn, _ = _source(args, _Status("loading the model…"), mesh)
    except sources.SourceError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    distributed.following(rollout_fn)
    return 0


def main(argv: list[str] | None = None) -> int:
    # transformers (used for tokenizers only) would warn that PyTorch is absent
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    size = _check(args, parser)
    try:
        mesh = distributed.setup(args)  # before JAX's first computation
    except distributed.SetupError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if mesh is not None and not distributed.is_leader():
        return _headless(args, mesh)
    headless = args.snapshot or args.serve is not None
    if not headless and not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            f"{PROG}: not a terminal (stdin/stdout is not a TTY); use --snapshot to print one"
            " frame as text",
            file=sys.stderr,
        )
        return 2
    from dash import app, record, snapshot, sources
    from model.endpoint import AddressError

    if args.attach is not None:
        return _attach(args)
    loading = _Status(f"reading {args.replay}…" if args.replay else "loading the model…")
    try:
        rollout_fn, label = _source(args, loading, mesh)
    except (sources.SourceError, record.ReplayError) as e:
        loading.clear()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    loading.clear()
    if mesh is not None:
        rollout_fn = distributed.leading(rollout_fn)
        label = " · ".join(filter(None, [label, f"mesh {_mesh_label(mesh)}"]))
    if args.serve is not None:
        from dash.serving import serve

        try:
            return serve(
                rollout_fn,
                args.serve or None,
                record=args.record,
                allow_remote=args.allow_remote,
                keys=args.keys,
                source=label,
                recorded=bool(args.replay),
            )
        except AddressError as e:
            print(f"{PROG}: --serve {e}", file=sys.stderr)
            return 2
    if args.snapshot:
        text = snapshot.snapshot(
            rollout_fn,
            steps=args.steps,
            size=size,
            window=args.layers,
            source=label,
            record=args.record,
        )
        print(text)
        return 0
    options = app.Options(
        fps=args.fps,
        flash_hz=args.flash_hz,
        window=args.layers,
        source=label,
        record=args.record,
        replay=bool(args.replay),
    )
    return _guarded(app.run, rollout_fn, options)


def _attach(args: argparse.Namespace) -> int:
    from dash import app, attach
    from model import endpoint

    try:
        address = args.attach or endpoint.default_address()
        key = endpoint.viewer_key(args.key) if args.key else None
    except endpoint.AddressError as e:
        print(f"{PROG}: --attach {e}", file=sys.stderr)
        return 2
    options = app.Options(fps=args.fps, flash_hz=args.flash_hz, window=args.layers)
    return _guarded(attach.run, address, key, options)


def _guarded(run, *args) -> int:
    """``run(*args)``; a bug of the dashboard itself gives one line, the rest in a file."""
    try:
        return run(*args)
    except Exception as e:
        log_file = {"prefix": "qwen3vl-dash-", "suffix": ".log", "delete": False}
        with tempfile.NamedTemporaryFile("w", **log_file) as log:
            traceback.print_exc(file=log)
        message = f"internal error: {type(e).__name__}: {e} (traceback in {log.name})"
        print(f"{PROG}: {message}", file=sys.stderr)
        return 1
