"""``python -m bench`` (what ``tox -e bench`` runs): the CPU benchmarks, one after the
other, each in its own process so none inherits another's threads, caches or memory.

    python -m bench                 # all CPU benchmarks (about 20 minutes on 2 cores)
    python -m bench --only handoff,frame_cost
    python -m bench --soak          # also the soak (several minutes more)

``bench.gpu`` is not run here: it needs a GPU (``python -m bench.gpu``). The exit status says
whether every benchmark ran, not whether it met its target: each prints its figures and
verdicts last.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CPU_BENCHMARKS = (
    "telemetry_overhead",
    "vs_transformers",
    "frame_cost",
    "handoff",
    "long_context",
    "attach",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated benchmarks to run: " + ", ".join(CPU_BENCHMARKS))
    p.add_argument("--soak", action="store_true", help="also run bench.soak")
    args = p.parse_args(argv)
    names = list(CPU_BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        unknown = [n for n in names if n not in (*CPU_BENCHMARKS, "soak")]
        if unknown:
            known = ", ".join((*CPU_BENCHMARKS, "soak"))
            message = f"python -m bench: unknown benchmark {unknown[0]!r} (known: {known})"
            print(message, file=sys.stderr)
            return 2
    if args.soak and "soak" not in names:
        names.append("soak")
    results = []
    for name in names:
        print(f"\n######## python -m bench.{name}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        results.append((name, code, time.monotonic() - start))
    print("\n######## summary")
    for name, code, seconds in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"bench.{name:20s} {status:16s} {seconds:6.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
