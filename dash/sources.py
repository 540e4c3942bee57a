"""Where the telemetry comes from: the rollout entry points of ``model/``, imported only
when used (dash itself never imports JAX). Each function checks its inputs and loads
what it needs *before* the screen opens, raising ``SourceError`` (one line) on bad
input, and returns a ``rollout_fn(sink, control)`` for ``dash.app``.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent.parent / "assets" / "tiny-qwen3vl"
DEFAULT_PROMPT = "Describe the image."
DEFAULT_CACHE = 1024  # KV cache slots of a --model run: its prompts and answers must fit


class SourceError(ValueError):
    """Bad input for a rollout source; the message is one line for the user."""


def _load(model_dir: Path, dtype: str = "auto", on_progress=None, mesh=None):
    """(model, processor) of a checkpoint directory, with one-line errors; ``on_progress``
    receives the loader's ``LoadProgress``; with a ``mesh`` each device loads its slices."""
    import model
    from model import sharding
    from model.processor import Processor, ProcessorError

    try:
        if mesh is None:
            m = model.load_pretrained(model_dir, dtype, on_progress=on_progress)
        else:
            m = sharding.load(model_dir, mesh, dtype, on_progress=on_progress)
        processor = Processor.from_pretrained(model_dir)
    except sharding.MeshError as e:
        raise SourceError(str(e)) from None
    except (model.CheckpointError, ProcessorError) as e:
        raise SourceError(f"--model {model_dir}: {e}") from None
    return m, processor


def _on_mesh(m, mesh, batch: int, what: str):
    """``m`` placed on ``mesh`` (as it is without one), checked against the ``batch`` of
    rows it decodes together."""
    from model import sharding

    if mesh is None:
        return m
    try:
        sharding.check_batch(batch, mesh, what)
        return sharding.shard_model(m, mesh)  # a loaded model is placed already: no copy
    except sharding.MeshError as e:
        raise SourceError(str(e)) from None


def model_source(
    model_dir: str,
    *,
    image: str | None,
    prompt: str | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    dtype: str = "auto",
    cache: int = DEFAULT_CACHE,
    on_progress=None,
    mesh=None,
):
    """Inference with a Hugging Face Qwen3-VL checkpoint directory, in ``dtype``: it answers
    ``prompt``, then each prompt the viewer sends, with a KV cache of ``cache`` slots
    (``model.rollout.answer_questions``); on ``mesh`` when given."""
    from model.processor import ProcessorError, load_image
    from model.rollout import PromptError, Question, answer_questions, check_question

    path = Path(model_dir)
    if not path.exists():
        raise SourceError(f"--model {model_dir}: no such directory")
    if not path.is_dir():
        raise SourceError(f"--model {model_dir}: not a directory")
    picture = None
    if image is not None:
        try:
            picture = load_image(image)
        except ProcessorError as e:
            raise SourceError(f"--image {image}: {e}") from None
    m, processor = _load(path, dtype, on_progress, mesh)
    m = _on_mesh(m, mesh, 1, "the batch")
    first = Question(prompt or DEFAULT_PROMPT, picture)
    try:
        check_question(processor, first, cache, max_new_tokens)
    except PromptError as e:
        raise SourceError(f"--prompt: {e} (--cache)") from None
    sampling = {"temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}

    def run(sink, control) -> None:
        answer_questions(
            m,
            processor,
            first,
            sink=sink,
            control=control,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            capacity=cache,
            model_name=Path(model_dir).resolve().name,
        )

    return run


def default_source(*, seed: int, group_size: int = 8, dtype: str = "auto", mesh=None):
    """The embedded tiny Qwen3-VL (``assets/tiny-qwen3vl``) learning the synthetic visual
    task live with GRPO (``model.rl.live.run_grpo``): a group of ``group_size`` answers per
    question, rewarded, then one policy update, until stopped. Without the trained weights
    in the assets it starts from a random initialisation of that model, and the header
    says so. On ``mesh`` when given (the group goes over its data axis)."""
    import model
    from model.processor import Processor, ProcessorError
    from model.rl.live import run_grpo
    from model.rl.pretrain import tiny_config
    from model.tasks import Task

    try:
        processor = Processor.from_pretrained(EMBEDDED)
    except ProcessorError as e:
        raise SourceError(f"the embedded checkpoint: {e}") from None
    random_init = not (EMBEDDED / "config.json").is_file()
    if random_init:
        m = model.init_random(tiny_config(processor), seed)
    else:
        m, _ = _load(EMBEDDED, dtype, mesh=mesh)
    m = _on_mesh(m, mesh, group_size, "the GRPO group")
    task = Task("train", seed)

    def run(sink, control) -> None:
        run_grpo(
            m,
            processor,
            task,
            sink=sink,
            control=control,
            group_size=group_size,
            seed=seed,
            model_name=EMBEDDED.name,
            random_init=random_init,
        )

    return run
