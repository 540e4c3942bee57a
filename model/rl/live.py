"""The GRPO loop as a live rollout for the dashboard: it learns while it publishes telemetry.

``run_grpo`` emits, through ``sink.emit`` (``model.telemetry`` events):

- once: ``RunInfo`` (mode ``"grpo"``, batch size = the group size ``G``);
- per GRPO step (``episode`` = step) of ``P = settings.prompts_per_step`` questions: for the
  first question's group, the watched sample's ``PhaseEvent`` prefill start/end,
  ``PrefillEvent``, ``PhaseEvent`` decode start, one ``DecodeChunk`` per chunk of the watched
  sample's tokens, ``PhaseEvent`` decode end (``model.rollout.sample_watched``, the same code as
  inference), a ``StepProfile`` of the decode step at the group's shapes (measured on the
  first step, then remembered); when ``P > 1`` a ``PhaseEvent`` decode start/end around
  sampling the other groups (no telemetry); then ``PhaseEvent`` reward start/end,
  ``PhaseEvent`` update start/end, a ``TrainEvent`` and a ``CreditEvent`` with the watched
  sample's answer tokens and their credit (``model.rl.grpo``). ``TrainEvent.rewards`` are
  the ``G`` rewards of the watched group; its ``reward_mean`` / ``reward_std`` and the
  update's metrics cover all ``P * G`` answers.

``control`` is honoured as in inference: ``control.selection`` picks the watched
(sample, layer, head), ``control.gate()`` runs before every chunk of decode steps (pause,
single step) and a stop ends the loop before the next update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from model import telemetry as tm
from model.decode import default_capacity
from model.profile import profile_step
from model.rl.train import DEFAULT_SETTINGS, LENGTH, GRPOSettings, GRPOTrainer, rollout_metrics
from model.rollout import run_info, sample_watched
from model.sampling import SamplingParams
from model.tasks import Task


@contextlib.contextmanager
def _phase(sink: tm.Sink, phase: str):
    """Emit a phase's start event, run the body, emit its end event with the wall time."""
    sink.emit(tm.PhaseEvent(phase=phase, active=True, elapsed_ms=0.0))
    start = time.perf_counter()
    yield
    elapsed_ms = (time.perf_counter() - start) * 1e3
    sink.emit(tm.PhaseEvent(phase=phase, active=False, elapsed_ms=elapsed_ms))


def run_grpo(
    m,
    processor,
    task: Task,
    *,
    sink: tm.Sink,
    control: tm.RolloutControl,
    group_size: int = 8,
    steps: int | None = None,
    settings: GRPOSettings = DEFAULT_SETTINGS,
    seed: int = 0,
    model_name: str | None = None,
    random_init: bool = False,
) -> GRPOTrainer:
    """GRPO on ``task`` (examples ``task.sample(0), task.sample(1), ...``) starting from
    ``m``, publishing telemetry to ``sink``, for ``steps`` steps (``None``: until stopped).

    ``settings`` gives the sampling and optimisation parameters; ``group_size`` overrides
    its group size. Returns the trainer, whose ``model`` is the policy learned so far.
    """
    settings = dataclasses.replace(settings, group_size=group_size)
    trainer = GRPOTrainer(m, processor, settings)
    sampling = SamplingParams(temperature=settings.temperature)
    capacity = default_capacity(LENGTH - settings.max_new_tokens, settings.max_new_tokens)
    sink.emit(
        run_info(
            m, processor, mode="grpo", batch_size=group_size, capacity=capacity,
            sampling=sampling, max_new_tokens=settings.max_new_tokens, model_name=model_name,
            random_init=random_init,
        )
    )  # fmt: skip
    step = 0
    while (steps is None or step < steps) and not control.stopped:
        examples = trainer.step_examples(task, step)
        prompts = [processor.prepare(ex.question, [ex.image]) for ex in examples]
        seeds = [(seed * 1_000_003 + step) * len(examples) + i for i in range(len(examples))]
        start = time.perf_counter()
        generations = [
            sample_watched(
                trainer.model, processor, prompts[0], examples[0].image, sink=sink,
                control=control, sampling=sampling, max_new_tokens=settings.max_new_tokens,
                capacity=capacity, episode=step, seed=seeds[0], num_samples=group_size,
            )
        ]  # fmt: skip
        if control.stopped:
            break  # the group may be incomplete: no update
        watched_gen = generations[0]
        cache_len = watched_gen.prompt_length + int(watched_gen.lengths.max()) - 1
        sink.emit(profile_step(trainer.model, group_size, capacity, cache_len, sampling))
        if len(examples) > 1:
            with _phase(sink, "decode"):
                for inputs, s in zip(prompts[1:], seeds[1:], strict=True):
                    generations.append(trainer.sample(inputs, s, telemetry=False)[0])
        seconds = time.perf_counter() - start
        with _phase(sink, "reward"):
            pairs = zip(examples, generations, strict=True)
            rewards = np.stack([trainer.rewards(task, ex, g)[1] for ex, g in pairs])
        with _phase(sink, "update"):
            groups = list(zip(prompts, generations, rewards, strict=True))
            metrics, advantages, credit = trainer.update(groups)
        metrics.update(rollout_metrics(rewards, generations, seconds))
        sink.emit(
            tm.TrainEvent(
                step=step,
                **{k: metrics[k] for k in (
                    "reward_mean", "reward_std", "kl", "loss", "clip_frac", "entropy",
                    "grad_norm", "tokens_per_s",
                )},
                rewards=rewards[0],
            )
        )  # fmt: skip
        watched = min(max(int(control.selection[0]), 0), group_size - 1)
        answer = generations[0].tokens[watched, : generations[0].lengths[watched]]
        sink.emit(
            tm.CreditEvent(
                step=step,
                sample=watched,
                tokens=processor.token_texts(answer),
                credits=np.asarray(credit[0][watched], np.float32),
                reward=float(rewards[0, watched]),
                advantage=float(advantages[0, watched]),
            )
        )
        step += 1
    return trainer
