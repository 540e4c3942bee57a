"""One process of a run of several (or the single-process run they must equal), started by
``tests/model/test_sharding.py``:

    python -m tests.model.multiprocess_run OUT --coordinator 127.0.0.1:PORT \\
        --num-processes 2 --process-id I --mesh data=2,model=2      # 2 CPU devices each
    python -m tests.model.multiprocess_run OUT --selections OUT.0.npz  # one process, device

The model is the shipped checkpoint, on the mesh data=2, model=2 over both processes'
devices (gloo between them), each device reading its slices of the checkpoint. It runs:
``generate`` with telemetry, the watched selection moving at every chunk, process 0 pausing
in the middle (a single step granted while paused); two GRPO steps; process 0's next prompt;
a ``generate`` that process 0 stops after its second chunk. Each process writes what it saw
to ``OUT.<process index>.npz``.

Where a run's chunks end depends on its clock, so the single process replays the
selections of the two processes' run one step per chunk (``--selections``): then every
token's telemetry must be equal.
"""

from __future__ import annotations

import argparse
import threading

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402

from model import distributed, sharding  # noqa: E402
from model import telemetry as tm  # noqa: E402
from model.checkpoint import load_pretrained  # noqa: E402
from model.decode import generate  # noqa: E402
from model.processor import Processor  # noqa: E402
from model.rl.train import GRPOSettings, GRPOTrainer  # noqa: E402
from model.tasks import Task  # noqa: E402
from tests.model.conftest import ASSETS  # noqa: E402
from tests.model.recording import tokens as token_records  # noqa: E402

SAMPLES = 4
WATCHED = ("sample", "layer", "head")


def moving(local: tm.RolloutControl, chunks: list):
    """``on_chunk`` keeping the chunks, moving the selection at each, and pausing at the
    second (a single step granted while paused, then resumed)."""

    def on_chunk(chunk) -> None:
        chunks.append(chunk)
        s = len(chunks)
        local.select(s % SAMPLES, s % 2, (3 * s) % 4)
        if s == 2:  # the other processes wait in broadcasts meanwhile
            local.set_paused(True)
            threading.Timer(0.3, local.step_once).start()
            threading.Timer(0.9, local.set_paused, (False,)).start()

    return on_chunk


def replaying(local: tm.RolloutControl, chunks: list, order: list):
    """``on_chunk`` keeping the chunks, running one step per chunk (paused) with the
    selection ``order[step]`` of each step."""
    local.set_paused(True)

    def on_chunk(chunk) -> None:
        chunks.append(chunk)
        step = chunk.first + len(chunk)  # the next
        if step < len(order):
            local.select(*order[step])
            local.step_once()

    return on_chunk


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--selections", help="replay the watched selections of this run")
    distributed.add_arguments(parser)
    args = parser.parse_args()
    mesh = distributed.setup(args)
    processor = Processor.from_pretrained(ASSETS)
    # the shipped checkpoint: its groups' rewards have a spread, so the GRPO updates follow a
    # real gradient (a random model's answers all score alike: its updates would be AdamW
    # normalising rounding noise, which differs between meshes)
    m = load_pretrained(ASSETS) if mesh is None else sharding.load(ASSETS, mesh)
    local = tm.RolloutControl(layer=1, head=3, sample=2)
    control = distributed.SharedControl(local) if distributed.several() else local
    task = Task("train", 0)
    example = task.sample(0)
    inputs = processor.prepare(example.question, [example.image])
    out = {}

    chunks = []
    if args.selections:
        with np.load(args.selections) as run:
            watched = np.stack([run[f"decode_{k}"] for k in WATCHED], axis=1)
        order = [tuple(int(x) for x in sel) for sel in watched]
        on_chunk = replaying(local, chunks, order)
    else:
        on_chunk = moving(local, chunks)
    gen = generate(
        m, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
        max_new_tokens=12, num_samples=SAMPLES, control=control, on_chunk=on_chunk,
        token_texts=processor.token_texts,
    )  # fmt: skip
    out["tokens"] = gen.tokens
    local.set_paused(False)
    steps = [r for c in chunks for r in token_records(c)]
    for name in (*WATCHED, "token_id", "prob", "top_ids", "top_probs", "cache_len", "position"):
        out[f"decode_{name}"] = np.stack([getattr(r, name) for r in steps])
    for name in tm.HeadStats.METRICS + ("argmax",):
        out[f"decode_{name}"] = np.stack([getattr(r.stats, name) for r in steps])
    out["decode_rows"] = np.concatenate([r.attn_row for r in steps])

    settings = GRPOSettings(group_size=SAMPLES, prompts_per_step=2, max_new_tokens=4)
    trainer = GRPOTrainer(m, processor, settings)
    for step in range(2):
        # a sink that is not a NullSink: the watched group's telemetry path, as on a screen
        result = trainer.step(task, step, seed=0, sink=distributed.HeadlessSink(), control=control)
        for key in ("loss", "kl", "entropy", "grad_norm", "reward_mean"):
            out[f"grpo{step}_{key}"] = np.float32(result.metrics[key])
        out[f"grpo{step}_rewards"] = result.rewards
    out["params"] = np.concatenate(
        [sharding.fetch(x).ravel() for x in jax.tree.leaves(trainer.state)]
    )

    local.submit_prompt("what colour is the circle?")  # process 0's reaches every process
    out["prompt"] = np.array(control.next_prompt())

    stopped = []

    def stop_after_two(chunk) -> None:
        stopped.append(chunk)
        if len(stopped) == 2:
            local.stop()

    gen = generate(
        m, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
        max_new_tokens=40, num_samples=SAMPLES, control=control, on_chunk=stop_after_two,
        token_texts=processor.token_texts,
    )  # fmt: skip
    out["stopped_steps"] = np.int32(gen.steps)
    out["stopped_flag"] = np.bool_(control.stopped)
    np.savez(f"{args.out}.{jax.process_index()}.npz", **out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
