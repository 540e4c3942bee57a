"""``python -m model generate``: print a checkpoint's answer to a prompt (about an image).

Bad input (checkpoint, processor files, image, sampling options, a ``--mesh`` that does not
fit) prints one line on stderr and exits with status 2. With several processes, process 0
prints the answer.
"""

from __future__ import annotations

import argparse
import sys


def cli_main(args: argparse.Namespace) -> int:
    from model import distributed, sharding
    from model.checkpoint import CheckpointError, load_pretrained
    from model.decode import generate
    from model.processor import Processor, ProcessorError, load_image
    from model.sampling import SamplingParams

    try:
        sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
        if args.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be >= 1")
        image = load_image(args.image) if args.image else None
        mesh = distributed.setup(args)  # several devices or processes: --mesh and the rest
        sharding.check_batch(1, mesh)
        if mesh is None:
            m = load_pretrained(args.model, args.dtype)
        else:
            m = sharding.load(args.model, mesh, args.dtype)
        processor = Processor.from_pretrained(args.model)
        inputs = processor.prepare(args.prompt, [image] if image is not None else [])
    except (CheckpointError, ProcessorError, ValueError) as e:
        print(f"python -m model generate: {e}", file=sys.stderr)
        return 2
    gen = generate(
        m,
        inputs["input_ids"],
        inputs["pixel_values"],
        inputs["image_grid_thw"],
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        eos_token_ids=processor.eos_token_ids,
        seed=args.seed,
        telemetry=False,
    )
    if distributed.is_leader():
        print(processor.decode(gen.tokens[0, : gen.lengths[0]]))
    return 0
