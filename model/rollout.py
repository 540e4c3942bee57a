"""Rollouts that publish telemetry events (``model.telemetry``) for a viewer.

``run_inference`` answers one prompt (optionally about one image) and emits, through
``sink.emit``: ``RunInfo``; ``PhaseEvent`` prefill start; ``PhaseEvent`` prefill end and a
``PrefillEvent``; ``PhaseEvent`` decode start; the watched sample's tokens, one
``DecodeChunk`` per chunk of decode steps (the prefill's token alone first); ``PhaseEvent``
decode end; a ``StepProfile`` of the decode step's stages; and a ``compile`` phase around
every program it compiles, whose time no other phase counts. ``answer_questions`` keeps the
model loaded and answers one prompt after another as the viewer sends them.
The viewer steers it through ``control`` (``RolloutControl``): the watched
``(sample, layer, head)`` is read before every chunk of decode steps and passed to the
compiled decode, and ``control.gate()`` before every chunk pauses, single-steps (a chunk of
one step) or stops it (``model.decode``).

Its parts serve other rollouts too (the GRPO loop in ``model.rl.live``): ``run_info`` builds
the ``RunInfo``, ``sample_watched`` decodes a group of samples of one prompt and publishes
the watched sample's prefill and decode events.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import PIL.Image

from model import compile_clock
from model import telemetry as tm
from model.decode import Generation, PrefillTelemetry, default_capacity, generate
from model.processor import ProcessorError, load_image
from model.profile import profile_step
from model.qwen3_vl import Qwen3VL
from model.sampling import SamplingParams

THUMBNAIL = 48  # longest side of ImageInfo.pixels


def sampling_params(sampling: SamplingParams | Mapping[str, float]) -> SamplingParams:
    """``SamplingParams`` from itself or a mapping with (some of) its fields; other keys of
    the mapping (e.g. ``max_new_tokens``, ``seed``) are not sampling parameters and ignored."""
    if isinstance(sampling, SamplingParams):
        return sampling
    return SamplingParams(
        temperature=float(sampling.get("temperature", 0.0)),
        top_k=int(sampling.get("top_k", 0)),
        top_p=float(sampling.get("top_p", 1.0)),
    )


def image_spans(input_ids: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every run of image tokens in ``input_ids [T]``."""
    is_image = np.concatenate([[False], np.asarray(input_ids) == image_token_id, [False]])
    edges = np.flatnonzero(np.diff(is_image.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def thumbnail(image: PIL.Image.Image, size: int = THUMBNAIL) -> np.ndarray:
    """``[h, w, 3]`` uint8 copy of ``image`` whose longest side is at most ``size``."""
    small = image.convert("RGB")
    small.thumbnail((size, size))
    return np.asarray(small, np.uint8)


def deepstack_layers(m: Qwen3VL) -> tuple[int, ...]:
    """Decoder layers after which DeepStack features are added (``model.text``)."""
    n = len(m.config.vision.deepstack_visual_indexes)
    return tuple(range(min(n, m.config.text.num_hidden_layers)))


def run_info(
    m: Qwen3VL,
    processor,
    *,
    mode: str,
    batch_size: int,
    capacity: int,
    sampling: SamplingParams,
    max_new_tokens: int,
    model_name: str | None = None,
    random_init: bool = False,
) -> tm.RunInfo:
    """The ``RunInfo`` of a rollout of ``m`` (``mode`` "inference" or "grpo")."""
    text = m.config.text
    return tm.RunInfo(
        model_name=model_name or Path(processor.tokenizer.name_or_path).name or "qwen3-vl",
        random_init=random_init,
        mode=mode,
        num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        kv_dtype_bytes=m.dtype.itemsize,
        cache_capacity=capacity,
        batch_size=batch_size,
        deepstack_layers=deepstack_layers(m),
        sampling={**sampling.as_dict(), "max_new_tokens": max_new_tokens},
    )


def sample_watched(
    m: Qwen3VL,
    processor,
    inputs: dict,
    image: PIL.Image.Image | None,
    *,
    sink: tm.Sink,
    control: tm.RolloutControl,
    sampling: SamplingParams,
    max_new_tokens: int,
    capacity: int,
    episode: int,
    seed: int,
    num_samples: int = 1,
    target_cells: np.ndarray | None = None,
) -> Generation:
    """Decode ``num_samples`` answers to one prepared prompt, publishing the watched
    sample's telemetry: ``PhaseEvent`` prefill start and end, ``PrefillEvent``,
    ``PhaseEvent`` decode start, one ``DecodeChunk`` per chunk of the watched sample's
    tokens (``control.selection[0]``), ``PhaseEvent`` decode end; and a ``compile`` phase
    before the prefill or a chunk whose programs compiled.

    Args:
        inputs: ``processor.prepare``'s output, ``input_ids [1, T]``.
        image: the prompt's image (its thumbnail goes to the viewer), or ``None``.
        capacity: cache slots per row.
        target_cells: ``[m, 2]`` the merged cells of what the question asks about, when a
            task knows them; they go with the first image to the viewer
            (``ImageInfo.target_cells``).
    Returns:
        the ``Generation`` (``model.decode``), whose ``tokens [num_samples, n]`` and
        ``lengths [num_samples]`` are the answers.
    """
    cfg = m.config
    ids = inputs["input_ids"]
    texts = processor.token_texts
    images = []
    if image is not None:
        grids = np.asarray(inputs["image_grid_thw"]).reshape(-1, 3)
        spans = image_spans(ids[0], cfg.image_token_id)
        images = [
            tm.ImageInfo(
                span=span,
                grid_thw=tuple(int(g) for g in grid),
                merge_size=cfg.vision.spatial_merge_size,
                pixels=thumbnail(image),
                target_cells=target_cells if i == 0 else None,
            )
            for i, (span, grid) in enumerate(zip(spans, grids, strict=True))
        ]

    compiling = CompilePhase(sink)

    def on_prefill(p: PrefillTelemetry) -> None:
        compiling.close()
        sink.emit(tm.PhaseEvent(phase="prefill", active=False, elapsed_ms=p.elapsed_ms))
        sink.emit(
            tm.PrefillEvent(
                episode=episode,
                sample=p.sample,
                tokens=texts(ids[0]),
                token_ids=ids[0].astype(np.int32),
                positions=p.positions,
                images=tuple(images),
                vision_norm=p.vision_norm,
                text_norm=p.text_norm,
                stats=p.stats,
                layer=p.layer,
                head=p.head,
                attn_map=p.attn_map,
                cache_len=p.prompt_length,
                cache_capacity=p.cache_capacity,
                elapsed_ms=p.elapsed_ms,
            )
        )
        sink.emit(tm.PhaseEvent(phase="decode", active=True, elapsed_ms=0.0))

    def on_chunk(chunk: tm.DecodeChunk) -> None:
        compiling.close()
        sink.emit(chunk)

    sink.emit(tm.PhaseEvent(phase="prefill", active=True, elapsed_ms=0.0))
    with compile_clock.watch(compiling.start):
        gen = generate(
            m,
            ids,
            inputs["pixel_values"],
            inputs["image_grid_thw"],
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_token_ids=processor.eos_token_ids,
            seed=seed,
            num_samples=num_samples,
            capacity=capacity,
            control=control,
            on_prefill=on_prefill,
            on_chunk=on_chunk,
            token_texts=texts,
            episode=episode,
        )
    compiling.close()
    sink.emit(tm.PhaseEvent(phase="decode", active=False, elapsed_ms=gen.decode_seconds * 1e3))
    return gen


class CompilePhase:
    """The ``compile`` phase of a rollout: it starts (``PhaseEvent`` active) when the thread
    starts compiling and ends at the next ``close()``, with the seconds spent compiling
    since its start (``model.compile_clock``), however many programs that took."""

    def __init__(self, sink: tm.Sink) -> None:
        self.sink = sink
        self.since: float | None = None  # compile seconds at its start, while active

    def start(self) -> None:
        """Start the phase, unless it is active (``compile_clock.watch``'s callback)."""
        if self.since is None:
            self.since = compile_clock.seconds()
            self.sink.emit(tm.PhaseEvent(phase="compile", active=True))

    def close(self) -> None:
        """End the phase, if active, with the milliseconds spent compiling since its start."""
        if self.since is not None:
            ms = 1e3 * (compile_clock.seconds() - self.since)
            self.since = None
            self.sink.emit(tm.PhaseEvent(phase="compile", active=False, elapsed_ms=ms))


@contextlib.contextmanager
def compile_phases(sink: tm.Sink) -> Iterator[CompilePhase]:
    """Within the block, compiling publishes a ``compile`` phase (``CompilePhase``), which
    ends at the block's end or at the caller's ``close()``."""
    phase = CompilePhase(sink)
    with compile_clock.watch(phase.start):
        try:
            yield phase
        finally:
            phase.close()


def run_inference(
    m: Qwen3VL,
    processor,
    *,
    prompt: str,
    image: PIL.Image.Image | None,
    sink: tm.Sink,
    control: tm.RolloutControl,
    sampling: SamplingParams | Mapping[str, float],
    max_new_tokens: int,
    capacity: int | None = None,
    episode: int = 0,
    seed: int | None = None,
    model_name: str | None = None,
    random_init: bool = False,
) -> np.ndarray:
    """Answer ``prompt`` (about ``image``) with ``m``, publishing telemetry to ``sink``
    (module docstring).

    Args:
        processor: a ``model.processor.Processor`` of the same checkpoint.
        sampling: ``SamplingParams``, or a mapping of its fields (``sampling_params``).
        capacity: cache slots; by default the prompt plus ``max_new_tokens``, rounded up
            (``default_capacity``).
        seed: defaults to ``sampling["seed"]`` when ``sampling`` is a mapping holding one,
            else 0.
    Returns:
        the new token ids ``[n]`` (up to and including EOS).
    """
    params = sampling_params(sampling)
    if seed is None:
        seed = int(sampling.get("seed", 0)) if isinstance(sampling, Mapping) else 0
    inputs = processor.prepare(prompt, [image] if image is not None else [])
    length = inputs["input_ids"].shape[1]
    capacity = capacity or default_capacity(length, max_new_tokens)
    sink.emit(
        run_info(
            m,
            processor,
            mode="inference",
            batch_size=1,
            capacity=capacity,
            sampling=params,
            max_new_tokens=max_new_tokens,
            model_name=model_name,
            random_init=random_init,
        )
    )
    gen = sample_watched(
        m,
        processor,
        inputs,
        image,
        sink=sink,
        control=control,
        sampling=params,
        max_new_tokens=max_new_tokens,
        capacity=capacity,
        episode=episode,
        seed=seed,
    )
    n = int(gen.lengths[0])
    with compile_phases(sink):
        profile = profile_step(m, 1, capacity, length + n - 1, params)
    sink.emit(profile)
    return gen.tokens[0, :n]


class PromptError(ValueError):
    """A prompt the model cannot answer as asked; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Question:
    """A prompt and the image it is about (``None``: text only)."""

    prompt: str
    image: PIL.Image.Image | None


def read_question(text: str, image: PIL.Image.Image | None) -> Question:
    """The ``Question`` of a line typed by the user: its words, and after an ``@`` the path
    of a new image (``@path/to/image.png`` anywhere in the line); without one, the
    question keeps ``image``. Raises ``PromptError`` for an empty prompt or an unreadable
    image."""
    words, paths = [], []
    for word in text.split():
        (paths if word.startswith("@") and len(word) > 1 else words).append(word)
    if len(paths) > 1:
        raise PromptError("one @image per prompt")
    if paths:
        path = paths[0][1:]
        try:
            image = load_image(path)
        except ProcessorError as e:
            raise PromptError(f"@{path}: {e}") from None
    if not words:
        raise PromptError("type a prompt (and optionally @path/to/image)")
    return Question(" ".join(words), image)


def check_question(processor, question: Question, capacity: int, max_new_tokens: int) -> None:
    """Raises ``PromptError`` when ``question`` cannot be answered within ``capacity``
    cache slots or holds a special token of the model."""
    try:
        inputs = processor.prepare(question.prompt, [question.image] if question.image else [])
    except ProcessorError as e:
        raise PromptError(str(e)) from None
    needed = inputs["input_ids"].shape[1] + max_new_tokens - 1
    if needed > capacity:
        raise PromptError(
            f"the prompt takes {inputs['input_ids'].shape[1]} tokens and the answer up to "
            f"{max_new_tokens}: more than the cache's {capacity} slots"
        )


def answer_questions(
    m: Qwen3VL,
    processor,
    first: Question,
    *,
    sink: tm.Sink,
    control: tm.RolloutControl,
    sampling: Mapping[str, float],
    max_new_tokens: int,
    capacity: int,
    model_name: str | None = None,
) -> None:
    """Answer ``first``, then every prompt the viewer sends (``control.next_prompt``, read
    by ``read_question``) until stopped, each as ``run_inference`` does, one episode each.
    The cache keeps ``capacity`` slots for all of them, so every answer runs the programs
    the first one compiled (but for a prompt of another length bucket's prefill). A prompt
    that cannot be answered gets a ``NoticeEvent`` saying why, and the model waits for
    the next."""
    question, episode = first, 0
    while True:
        run_inference(
            m,
            processor,
            prompt=question.prompt,
            image=question.image,
            sink=sink,
            control=control,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            capacity=capacity,
            episode=episode,
            model_name=model_name,
        )
        while True:
            text = control.next_prompt()
            if text is None:
                return
            try:
                asked = read_question(text, question.image)
                check_question(processor, asked, capacity, max_new_tokens)
            except PromptError as e:
                sink.emit(tm.NoticeEvent(f"prompt refused: {e}"))
                continue
            question, episode = asked, episode + 1
            break
