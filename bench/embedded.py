"""The embedded tiny Qwen3-VL (``assets/tiny-qwen3vl``) as the benchmarks run it.

The model is the one ``python -m dash`` runs (``dash.sources.default_source``): the trained
checkpoint once pretraining has written ``config.json`` and ``model.safetensors`` there, else a
random initialisation of the same configuration (``model.rl.pretrain.tiny_config``). The prompt
is the visual task's first eval question with its 256x256 image (80 tokens, 64 of them image
tokens).

A trained model answers in a few tokens and stops at EOS; a benchmark needs a fixed number of
decode steps, so ``Embedded.processor`` reports no EOS token and every decode runs its full
``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses

import PIL.Image

import model
from dash.sources import EMBEDDED
from model import telemetry as tm
from model.processor import Processor
from model.qwen3_vl import Qwen3VL
from model.rl.pretrain import tiny_config
from model.rollout import run_inference
from model.sampling import GREEDY
from model.tasks import Task


@dataclasses.dataclass(frozen=True)
class Embedded:
    model: Qwen3VL
    processor: Processor  # its eos_token_ids are empty: decodes run their full length
    random_init: bool  # no trained checkpoint in the assets yet
    prompt: str
    image: PIL.Image.Image
    inputs: dict  # processor.prepare(prompt, [image]): input_ids [1, T], pixel_values, grid

    @property
    def label(self) -> str:
        weights = "random init, no trained checkpoint yet" if self.random_init else "trained"
        return f"{EMBEDDED.name} ({weights}), prompt {self.inputs['input_ids'].shape[1]} tokens"

    @property
    def checkpoint_dir(self):
        """The checkpoint directory, or None while the model is a random initialisation."""
        return None if self.random_init else EMBEDDED


def load(seed: int = 0) -> Embedded:
    processor = Processor.from_pretrained(EMBEDDED)
    processor.eos_token_ids = []
    random_init = not (EMBEDDED / "config.json").is_file()
    if random_init:
        m = model.init_random(tiny_config(processor), seed)
    else:
        m = model.load_pretrained(EMBEDDED)
    example = Task("eval", seed).sample(0)
    inputs = processor.prepare(example.question, [example.image])
    return Embedded(m, processor, random_init, example.question, example.image, inputs)


class _ListSink:
    def __init__(self) -> None:
        self.events: list[tm.Event] = []

    def emit(self, event: tm.Event) -> None:
        self.events.append(event)


def recorded_events(emb: Embedded, new_tokens: int = 64) -> list[tm.Event]:
    """The event stream of one real rollout of the embedded model (``run_inference``, full
    telemetry, greedy), as sent: RunInfo, phases, PrefillEvent, DecodeChunks of
    ``new_tokens`` tokens in all, profile."""
    sink = _ListSink()
    run_inference(
        emb.model,
        emb.processor,
        prompt=emb.prompt,
        image=emb.image,
        sink=sink,
        control=tm.RolloutControl(),
        sampling=GREEDY,
        max_new_tokens=new_tokens,
        model_name=EMBEDDED.name,
        random_init=emb.random_init,
    )
    return sink.events
