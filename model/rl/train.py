"""GRPO on the synthetic visual task: sample groups, reward them, update the policy.

One GRPO step (``GRPOTrainer.step``, run by ``python -m model rl`` here and by the
dashboard's live loop, ``model.rl.live``):

1. ``prompts_per_step`` (P) train-split questions about images; for each, ``group_size``
   (G) answers sampled from the live policy by the KV-cache decoder
   (``model.decode.generate``, temperature sampling, the vision tower run once per group;
   with a viewer, the first group with the telemetry of ``model.rollout.sample_watched``);
2. task rewards of the answers (``model.tasks``) and advantages normalised within each group;
3. ``updates_per_batch`` (mu) AdamW updates of the GRPO objective (``model.rl.grpo``) on all
   ``P * G`` answers, against the frozen initial policy. The first update runs on the
   parameters that sampled the groups: its own forward pass gives the behaviour log-probs
   (ratio 1: the plain policy gradient) and each token's log-prob and entropy for the viewer;
   the later ones are off-policy by the earlier updates: their ratio moves and the clip
   (``clip_eps``) bounds how far. Reusing each sampled batch this way learns more per
   sampled answer, sampling being the slow part on a CPU.

The update runs on a fixed shape (``P`` prompts of ``LENGTH - max_new_tokens`` tokens with
their images, and ``P * G`` answer windows of ``max_new_tokens`` tokens), so it is compiled
once and reused by every update of every step. Each prompt's forward runs once for its ``G``
answers (``model.rl.policy.forward_windows``): the answers are a tenth of the tokens.

``python -m model rl --steps N --json`` runs it headless and prints one JSON object per
update: the fields of its ``TrainEvent`` (``step_metrics``: TRL's and verl's metric names;
the rewards, lengths and advantages over the step's ``P * G`` answers, ``tokens_per_s`` new
tokens of all answers per second of sampling, prefill included) and ``seconds``, the wall
time of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from model import compile_clock, distributed, sharding
from model import telemetry as tm
from model.checkpoint import CheckpointError, load_pretrained
from model.decode import Generation, default_capacity, generate
from model.processor import Processor, ProcessorError
from model.profile import profile_step
from model.rl import grpo, policy
from model.rollout import compile_phases, sample_watched
from model.sampling import SamplingParams
from model.tasks import Example, Task

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "assets" / "tiny-qwen3vl"
LENGTH = 96  # the longest prompt (83) + max_new_tokens (8), padded: prompts get LENGTH - 8


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """Defaults: the recipe bench/grpo_eval.py measured (bench/RESULTS.md): 64 questions a
    step (16 gave too noisy a gradient to help in 50 updates), the vision tower frozen."""

    group_size: int = 8  # G: answers sampled per question
    prompts_per_step: int = 64  # P: questions (groups) per update
    temperature: float = 1.0
    max_new_tokens: int = 8
    learning_rate: float = 2e-4
    clip_eps: float = 0.2
    kl_coef: float = 0.04
    updates_per_batch: int = 2  # mu: optimizer updates on each sampled batch
    train_vision: bool = False  # True: the vision tower learns too (False: as pretrained)

    def objective(self) -> grpo.GRPOConfig:
        return grpo.GRPOConfig(self.clip_eps, self.kl_coef, self.temperature)


DEFAULT_SETTINGS = GRPOSettings()

# the metrics of a step: TrainEvent's fields and the headless JSON output's
METRIC_KEYS = tuple(
    f.name for f in dataclasses.fields(tm.TrainEvent) if f.name not in ("step", "rewards")
)


def sample_seed(seed: int, step: int, index: int, prompts_per_step: int) -> int:
    """The sampling seed of question ``index`` of GRPO step ``step`` in a run seeded ``seed``:
    distinct for every question of every step (up to a million steps)."""
    return (seed * 1_000_003 + step) * prompts_per_step + index


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one GRPO step did (host values), group by group."""

    examples: list[Example]  # [P]
    generations: list[Generation]  # [P], G rows each
    answers: list[list[str]]  # [P][G] decoded answers
    rewards: np.ndarray  # [P, G] float32
    advantages: np.ndarray  # [P, G] float32
    metrics: dict[str, Any]  # METRIC_KEYS (reward_by_type and timing_s are dicts)
    credit: list[list[np.ndarray]]  # [P][G] per-token credit of each answer (EOS included)
    logprobs: list[list[np.ndarray]]  # [P][G] per-token log-prob under the sampling policy
    entropies: list[list[np.ndarray]]  # [P][G] per-token entropy of the sampling policy


def _make_update(graphdef, optimizer, objective: grpo.GRPOConfig, train_vision: bool):
    """The jitted ``logprobs(state, seqs) -> [B, L]`` (log-probs of the targets at the
    sampling temperature) and update ``(state, opt_state, seqs, advantages [B], old_logp
    [B, L], ref_logp [B, L], on_policy) -> (state, opt_state, metrics, tokens)``
    (``grpo.grpo_gradients``; ``on_policy`` a bool array, so both kinds of update share one
    compiled program). With
    ``train_vision`` False the vision tower's parameters get no gradient (zero: AdamW leaves
    them as they are, and XLA drops the vision tower's backward pass)."""

    def forward(state, seqs):
        if not train_vision:
            state = jax.tree_util.tree_map_with_path(
                lambda path, x: jax.lax.stop_gradient(x) if _is_vision(path) else x, state
            )
        return policy.forward_windows(nnx.merge(graphdef, state), seqs)

    @jax.jit
    def logprobs(state, seqs):
        return grpo.token_logprobs(forward(state, seqs), seqs.targets, objective.temperature)

    @jax.jit
    def update(state, opt_state, seqs, advantages, old_logp, ref_logp, on_policy):
        batch = grpo.Batch(
            targets=seqs.targets,
            mask=seqs.mask,
            old_logp=old_logp,
            ref_logp=ref_logp,
            advantages=advantages,
        )
        _, metrics, grads, tokens = grpo.grpo_gradients(
            lambda s: forward(s, seqs), state, batch, objective, on_policy
        )
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, metrics, tokens

    return logprobs, update


def _is_vision(path) -> bool:
    return bool(path) and getattr(path[0], "key", None) == "visual"


class GRPOTrainer:
    """The policy being trained, its frozen initial copy, AdamW and the compiled update."""

    def __init__(self, m, processor: Processor, settings: GRPOSettings = DEFAULT_SETTINGS):
        self.processor = processor
        self.settings = settings
        self.graphdef, self.state = nnx.split(m)
        self.ref_state = self.state  # arrays are immutable: the updates never touch it
        self.optimizer = optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(settings.learning_rate, weight_decay=0.0)
        )
        self.opt_state = self.optimizer.init(self.state)
        self._logprobs, self._update = _make_update(
            self.graphdef, self.optimizer, settings.objective(), settings.train_vision
        )
        self.eos_ids = sorted(processor.eos_token_ids)
        self.sampling = SamplingParams(temperature=settings.temperature)
        self.capacity = default_capacity(LENGTH - settings.max_new_tokens, settings.max_new_tokens)

    @property
    def model(self):
        """The current policy as a ``Qwen3VL`` module."""
        return nnx.merge(self.graphdef, self.state)

    def sample(self, inputs: dict, seed: int, **generate_kwargs) -> tuple[Generation, float]:
        """``group_size`` answers to one prepared prompt; returns them and the wall seconds."""
        s = self.settings
        start, compiled = time.perf_counter(), compile_clock.seconds()
        gen = generate(
            self.model, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
            max_new_tokens=s.max_new_tokens, sampling=self.sampling,
            eos_token_ids=self.eos_ids, seed=seed, num_samples=s.group_size, **generate_kwargs,
        )  # fmt: skip
        return gen, _seconds_since(start, compiled)

    def rewards(self, task: Task, example: Example, gen: Generation):
        """The decoded answers ``[G]`` and their task rewards ``[G]``."""
        rows = range(len(gen.lengths))
        answers = [self.processor.decode(gen.tokens[b, : gen.lengths[b]]) for b in rows]
        return answers, np.asarray([task.reward(example, a) for a in answers], np.float32)

    def update(self, groups: list[tuple[dict, Generation, np.ndarray]], progress=None):
        """``updates_per_batch`` optimizer updates on ``groups`` of ``(prepared prompt,
        generation, rewards [G])``; ``progress(done, total)`` after each. Returns ``(metrics,
        advantages [P, G], tokens)``: the metrics averaged over the updates (``clip_ratio`` is
        0 in the first, on-policy one) and the first update's per-token values, ``{"credit",
        "logprob", "entropy"}`` each ``[P][G]`` arrays of the answers' lengths (the credit is
        the policy gradient of the sampled answers). The update's shape is ``P`` prompts with
        their images and ``P * G`` answer windows (``policy.pack_windows``): compiled once per
        ``P`` and ``G``."""
        prompts, answers, prompt_of_row, advantages = [], [], [], []
        for i, (inputs, gen, rewards) in enumerate(groups):
            prompts.append(inputs)
            answers += [gen.tokens[b, : gen.lengths[b]].tolist() for b in range(len(rewards))]
            prompt_of_row += [i] * len(rewards)
            advantages.append(np.asarray(grpo.group_advantages(rewards), np.float32))
        pad, width = self.processor.tokenizer.pad_token_id, self.settings.max_new_tokens
        seqs = policy.pack_windows(
            self.model.config, prompts, answers, prompt_of_row, LENGTH - width, width, pad
        )
        mesh = sharding.mesh_of(self.state)  # the rows go over the mesh's data axis
        seqs = sharding.put_batch(seqs, mesh)
        advantages = np.stack(advantages)
        per_row = sharding.put(advantages.reshape(-1), ("batch",), mesh)
        reference = self._logprobs(self.ref_state, seqs)  # once per batch, not per update
        behaviour, runs, first = jnp.zeros_like(reference), [], None
        total = self.settings.updates_per_batch
        for k in range(total):
            self.state, self.opt_state, metrics, tokens = self._update(
                self.state, self.opt_state, seqs, per_row, behaviour, reference, np.bool_(k == 0)
            )
            if first is None:  # the sampling policy's own forward pass
                first, behaviour = tokens, tokens.logprob
            runs.append(metrics)
            if progress is not None:
                progress(k + 1, total)
        metrics = {key: float(np.mean([m[key] for m in runs])) for key in runs[0]}
        values = {
            name: sharding.fetch(getattr(first, name)) for name in ("credit", "logprob", "entropy")
        }
        per_answer = {name: [] for name in values}
        row = 0
        for _, gen, rewards in groups:  # a window starts at the first answer token's logits
            for name, array in values.items():
                per_answer[name].append(
                    [array[row + b, : gen.lengths[b]] for b in range(len(rewards))]
                )
            row += len(rewards)
        return metrics, advantages, per_answer

    def step(
        self, task: Task, step: int, *, seed: int, sink: tm.Sink, control: tm.RolloutControl
    ) -> StepResult | None:
        """GRPO step ``step``: ``G`` answers to each of the ``P`` questions of
        ``step_examples(task, step)`` (seeds ``sample_seed``), their rewards, the update.

        Publishes to ``sink`` (``model.telemetry`` events, ``episode`` = ``step``):

        - the first question's group through ``model.rollout.sample_watched`` (the same code
          as inference): the watched sample's ``PhaseEvent`` prefill start/end,
          ``PrefillEvent`` (its image with the cells of the shapes the question asks about),
          ``PhaseEvent`` decode start, one ``DecodeChunk`` per chunk of its tokens,
          ``PhaseEvent`` decode end;
        - ``PhaseEvent`` decode start (``done`` 1 of ``total`` = P: the watched group), a
          ``StepProfile`` of the decode step at the group's shapes (measured on the first
          step, then remembered), one ``PhaseEvent`` per other group sampled (no telemetry)
          and the decode end;
        - ``PhaseEvent`` reward start/end, ``PhaseEvent`` update start, one per optimizer
          update (``done`` of ``updates_per_batch``) and end, a ``TrainEvent`` (``rewards``:
          the first group's ``G``; the other metrics over all ``P * G`` answers:
          ``rollout_metrics`` and the update's), a ``GroupEvent`` of the first group and a
          ``CreditEvent`` for each of its answers (``model.rl.grpo``).

        ``control.selection`` picks the watched (sample, layer, head) and ``control.gate()``
        runs before every chunk of the first group's decode steps (pause, single step) until
        the watched answer is done; the group's other answers then finish without waiting,
        and one more ``control.gate()`` runs before the rest of the step (paused, a single
        step runs it). A stop ends the step without an update: returns ``None``. With a
        ``NullSink`` nobody watches: the first group is sampled like the others, without
        telemetry or profile (the same answers: telemetry does not change the sampled tokens).
        """
        s = self.settings
        started, waited = time.perf_counter(), 0.0
        examples = self.step_examples(task, step)
        prompts = [self.processor.prepare(ex.question, [ex.image]) for ex in examples]
        seeds = [sample_seed(seed, step, i, len(examples)) for i in range(len(examples))]
        if isinstance(sink, tm.NullSink):  # nobody watches: no telemetry, no profile
            first, seconds = self.sample(prompts[0], seeds[0], telemetry=False)
        else:
            watched = WatchedGroup(sink, control)
            start, compiled = time.perf_counter(), compile_clock.seconds()
            first = sample_watched(
                self.model, self.processor, prompts[0], examples[0].image, sink=watched,
                control=watched, sampling=self.sampling, max_new_tokens=s.max_new_tokens,
                capacity=self.capacity, episode=step, seed=seeds[0], num_samples=s.group_size,
                target_cells=examples[0].target_cells(merged_grid(self.model, prompts[0])),
            )  # fmt: skip
            seconds = _seconds_since(start, compiled) - watched.waited
            if control.stopped:
                return None  # stopped while decoding: the group may be incomplete
            start = time.perf_counter()
            if not control.gate():  # paused: the rest of the step waits for a single step
                return None
            waited = watched.waited + time.perf_counter() - start
        generations = [first]
        with _phase(sink, "decode", done=1, total=len(examples)) as progress:
            if not isinstance(sink, tm.NullSink):  # the decode step's stages, as sampled
                cache_len = first.prompt_length + int(first.lengths.max()) - 1
                sink.emit(
                    profile_step(self.model, s.group_size, self.capacity, cache_len, self.sampling)
                )
            for inputs, group_seed in zip(prompts[1:], seeds[1:], strict=True):
                gen, gen_seconds = self.sample(inputs, group_seed, telemetry=False)
                generations.append(gen)
                seconds += gen_seconds
                progress(len(generations))
        reward_start = time.perf_counter()
        with _phase(sink, "reward"):
            scored = [
                self.rewards(task, ex, g) for ex, g in zip(examples, generations, strict=True)
            ]
        answers = [texts for texts, _ in scored]
        rewards = np.stack([r for _, r in scored])
        update_start, compiled = time.perf_counter(), compile_clock.seconds()
        with _phase(sink, "update", total=s.updates_per_batch) as progress:
            metrics, advantages, tokens = self.update(
                list(zip(prompts, generations, rewards, strict=True)), progress
            )
        metrics.update(
            rollout_metrics(examples, rewards, advantages, generations, self.eos_ids, seconds)
        )
        metrics["timing_s"] = {
            "gen": seconds,
            "reward": update_start - reward_start,
            "update_actor": _seconds_since(update_start, compiled),
            "step": time.perf_counter() - started - waited,
        }
        sink.emit(
            tm.TrainEvent(step=step, **{k: metrics[k] for k in METRIC_KEYS}, rewards=rewards[0])
        )
        if not isinstance(sink, tm.NullSink):
            self._emit_group(sink, step, examples[0], first, rewards[0], advantages[0], tokens)
        return StepResult(
            examples=examples,
            generations=generations,
            answers=answers,
            rewards=rewards,
            advantages=advantages,
            metrics=metrics,
            credit=tokens["credit"],
            logprobs=tokens["logprob"],
            entropies=tokens["entropy"],
        )

    def _emit_group(self, sink, step, example, gen, rewards, advantages, tokens) -> None:
        """The first group as a ``GroupEvent`` and a ``CreditEvent`` per answer."""
        n = len(rewards)
        texts = [self.processor.token_texts(gen.tokens[b, : gen.lengths[b]]) for b in range(n)]
        values = {}
        for name in ("logprob", "entropy"):
            table = np.zeros((n, max(1, int(gen.lengths.max()))), np.float32)
            for b, row in enumerate(tokens[name][0]):
                table[b, : len(row)] = row
            values[name] = table
        sink.emit(
            tm.GroupEvent(
                step=step,
                question=example.question,
                tokens=tuple(texts),
                rewards=rewards,
                advantages=advantages,
                truncated=truncated(gen, self.eos_ids),
                logprobs=values["logprob"],
                entropies=values["entropy"],
            )
        )
        for b in range(n):
            sink.emit(
                tm.CreditEvent(
                    step=step,
                    sample=b,
                    tokens=texts[b],
                    credits=np.asarray(tokens["credit"][0][b], np.float32),
                    reward=float(rewards[b]),
                    advantage=float(advantages[b]),
                )
            )

    def step_examples(self, task: Task, step: int) -> list[Example]:
        """The examples of GRPO step ``step``: ``task.sample(step * P + j)``, ``j < P``."""
        p = self.settings.prompts_per_step
        return [task.sample(step * p + j) for j in range(p)]


@contextlib.contextmanager
def _phase(sink: tm.Sink, phase: str, done: int = 0, total: int | None = None):
    """Emit a phase's start event, run the body, emit its end event with its wall time
    less the time spent compiling, which a ``compile`` phase reports. The body gets
    ``progress(done)``, which emits the phase's progress: ``done`` of ``total`` items."""
    sink.emit(tm.PhaseEvent(phase, True, 0.0, done if total else None, total))
    start, compiled = time.perf_counter(), compile_clock.seconds()

    def progress(done: int, total: int | None = total) -> None:
        elapsed_ms = 1e3 * _seconds_since(start, compiled)
        sink.emit(tm.PhaseEvent(phase, True, elapsed_ms, done, total))

    with compile_phases(sink):
        yield progress
    elapsed_ms = 1e3 * _seconds_since(start, compiled)
    sink.emit(tm.PhaseEvent(phase=phase, active=False, elapsed_ms=elapsed_ms))


class WatchedGroup:
    """The sink and control the watched group's decode sees: pause and single steps apply
    until the watched answer is done (its chunk says so); the group's other answers then
    finish without waiting (nothing of them is shown). ``waited``: seconds spent paused."""

    def __init__(self, sink: tm.Sink, control: tm.RolloutControl) -> None:
        self.sink, self.control = sink, control
        self.answered = False
        self.waited = 0.0

    @property
    def selection(self) -> tuple[int, int, int]:
        return self.control.selection

    @property
    def paused(self) -> bool:
        return self.control.paused and not self.answered

    @property
    def stopped(self) -> bool:
        return self.control.stopped

    def gate(self) -> bool:
        if self.answered:
            return not self.control.stopped
        start = time.perf_counter()
        go = self.control.gate()
        self.waited += time.perf_counter() - start
        return go

    def emit(self, event: tm.Event) -> None:
        if isinstance(event, tm.DecodeChunk) and event.done:
            self.answered = True
        self.sink.emit(event)


def _seconds_since(start: float, compiled: float) -> float:
    """Wall seconds since ``start`` less this thread's compile seconds since ``compiled``."""
    return time.perf_counter() - start - (compile_clock.seconds() - compiled)


def merged_grid(m, inputs: dict) -> int:
    """Rows of merged vision tokens of a prepared prompt's (square) image."""
    _, h, _ = np.asarray(inputs["image_grid_thw"]).reshape(-1, 3)[0]
    return int(h) // m.config.vision.spatial_merge_size


def truncated(gen: Generation, eos_ids) -> np.ndarray:
    """``[B]`` bool: the answers that stopped at the token limit, not at an EOS."""
    last = gen.tokens[np.arange(len(gen.lengths)), np.maximum(gen.lengths - 1, 0)]
    return (gen.lengths == 0) | ~np.isin(last, list(eos_ids))


def rollout_metrics(
    examples: list[Example],
    rewards: np.ndarray,
    advantages: np.ndarray,
    generations: list[Generation],
    eos_ids,
    seconds: float,
) -> dict[str, Any]:
    """The step's rollout metrics, over its ``P`` groups (``rewards``, ``advantages`` ``[P,
    G]``): reward mean and std over all answers (TRL's ``reward_std`` is the mean of the
    groups' stds), the mean reward per question type, the fraction of groups whose rewards
    are all equal, answer lengths (new tokens, EOS included), the fraction cut by the token
    limit, the advantages' range, and the sampling throughput: new tokens of all rows per
    second of ``generate`` (prefill and vision tower included)."""
    lengths = np.concatenate([g.lengths for g in generations]).astype(np.float64)
    cut = np.concatenate([truncated(g, eos_ids) for g in generations])
    qtypes = np.asarray([ex.qtype for ex in examples])
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "reward_by_type": {q: float(rewards[qtypes == q].mean()) for q in dict.fromkeys(qtypes)},
        "frac_reward_zero_std": float(np.isclose(rewards.std(axis=1), 0.0).mean()),
        "completions_mean_length": float(lengths.mean()),
        "completions_min_length": float(lengths.min()),
        "completions_max_length": float(lengths.max()),
        "completions_clipped_ratio": float(cut.mean()),
        "advantages_min": float(advantages.min()),
        "advantages_mean": float(advantages.mean()),
        "advantages_max": float(advantages.max()),
        "tokens_per_s": float(lengths.sum()) / seconds,
    }


def cli_main(args: argparse.Namespace) -> int:
    model_dir = Path(args.model) if args.model else DEFAULT_MODEL
    if args.steps < 1:
        print("python -m model rl: --steps must be at least 1", file=sys.stderr)
        return 2
    try:
        mesh = distributed.setup(args)  # several devices or processes: --mesh and the rest
        sharding.check_batch(DEFAULT_SETTINGS.group_size, mesh, "the GRPO group")
        if mesh is None:
            m = load_pretrained(model_dir, args.dtype)
        else:
            m = sharding.load(model_dir, mesh, args.dtype)
        processor = Processor.from_pretrained(model_dir)
    except (CheckpointError, ProcessorError, distributed.SetupError, sharding.MeshError) as e:
        print(f"python -m model rl: {e}", file=sys.stderr)
        return 2
    trainer = GRPOTrainer(m, processor)
    task = Task("train", args.seed)
    publisher = None
    if args.serve is not None and distributed.is_leader():  # process 0 publishes
        publisher = _publisher(args, trainer, model_dir)
        if publisher is None:
            return 2
    try:
        _train(args, trainer, task, publisher)
    except Exception as e:  # attached viewers see the failure too
        if publisher is not None:
            publisher.emit(tm.ErrorEvent(f"{type(e).__name__}: {e}", traceback.format_exc()))
        raise
    finally:
        if publisher is not None:
            publisher.close()
    return 0


def _publisher(args: argparse.Namespace, trainer: GRPOTrainer, model_dir: Path):
    """``--serve``: a ``model.publish.Publisher`` that has announced the run (its one line
    on stderr: stdout carries the updates), or None after a one-line error."""
    from model.endpoint import AddressError
    from model.publish import Publisher
    from model.rollout import run_info

    try:
        publisher = Publisher(
            args.serve or None, allow_remote=args.allow_remote, keys=args.keys, source="model rl"
        )
    except AddressError as e:
        print(f"python -m model rl: --serve {e}", file=sys.stderr)
        return None
    s = trainer.settings
    info = run_info(
        trainer.model,
        trainer.processor,
        mode="grpo",
        batch_size=s.group_size,
        capacity=trainer.capacity,
        sampling=trainer.sampling,
        max_new_tokens=s.max_new_tokens,
        model_name=model_dir.resolve().name,
    )
    publisher.emit(info)
    print(publisher.banner(), file=sys.stderr, flush=True)
    return publisher


def _train(args: argparse.Namespace, trainer: GRPOTrainer, task: Task, publisher) -> None:
    """``args.steps`` GRPO steps, one line (or JSON object) per update; with a publisher,
    each step's telemetry is published and attached viewers steer the watched sample."""
    sink = publisher or tm.NullSink()
    if args.serve is not None and not distributed.is_leader():
        sink = distributed.HeadlessSink()  # the same programs as process 0's publishing run
    control = publisher.control if publisher else tm.RolloutControl()
    if distributed.several():
        control = distributed.SharedControl(control)
    for step in range(args.steps):
        result = trainer.step(task, step, seed=args.seed, sink=sink, control=control)
        record = {"step": step, **{k: _rounded(result.metrics[k]) for k in METRIC_KEYS}}
        if not distributed.is_leader():
            continue  # process 0 prints
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            print(
                f"step {step:>4}  reward {record['reward_mean']:+.3f} "
                f"± {record['reward_std']:.3f}  kl {record['kl']:.4f}  loss {record['loss']:+.4f}"
                f"  {record['timing_s']['step']:.1f} s",
                flush=True,
            )


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 6)
