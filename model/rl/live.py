"""The GRPO loop as a live rollout for the dashboard: it learns while it publishes telemetry.

``run_grpo`` emits, through ``sink.emit`` (``model.telemetry`` events), ``RunInfo`` once
(mode ``"grpo"``, batch size = the group size ``G``), then the events of each GRPO step
(``GRPOTrainer.step``, the step ``python -m model rl`` runs headless): the first question's
group decoded with the watched sample's telemetry (the same code as inference), the decode
step's ``StepProfile``, the other groups sampled without telemetry, then the reward and update
phases, a ``TrainEvent`` and a ``CreditEvent`` of the watched sample.

``control`` is honoured as in inference: ``control.selection`` picks the watched
(sample, layer, head), ``control.gate()`` runs before every chunk of decode steps (pause,
single step) and a stop ends the loop before the next update.
"""

from __future__ import annotations

import dataclasses

from model import telemetry as tm
from model.rl.train import DEFAULT_SETTINGS, GRPOSettings, GRPOTrainer
from model.rollout import run_info
from model.tasks import Task


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
    sink.emit(
        run_info(
            m, processor, mode="grpo", batch_size=group_size, capacity=trainer.capacity,
            sampling=trainer.sampling, max_new_tokens=settings.max_new_tokens,
            model_name=model_name, random_init=random_init,
        )
    )  # fmt: skip
    step = 0
    while (steps is None or step < steps) and not control.stopped:
        trainer.step(task, step, seed=seed, sink=sink, control=control)  # None once stopped
        step += 1
    return trainer
