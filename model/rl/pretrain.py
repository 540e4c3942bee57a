"""Supervised pretraining of the embedded tiny Qwen3-VL on the synthetic visual task.

``python -m model pretrain --out DIR --steps N --seed S`` builds a tiny Qwen3-VL (the same
modules that load real checkpoints, a few million parameters) whose vocabulary and
special tokens come from the tokenizer already in ``DIR``, trains it with teacher forcing
on the answer tokens of train-split examples (image + question in the chat template,
answer followed by ``<|im_end|>``; each scene is asked several questions in one batch,
which taught position ("where") several times faster than one question per scene), then
writes ``config.json`` and ``model.safetensors`` into ``DIR`` with ``save_pretrained`` and
prints the eval reward and accuracy per question type.

The supervised answers are a mix, as labels gathered from several sources are: in
``SENTENCE_SHARE`` of the rows the answer is said as a sentence (``it is red``, ``there are
2``: ``model.tasks.questions.sentence``), in the others it is the bare answer the task's
reward asks for. The model learns both forms and says the sentence more often, which the
reward counts as malformed: this is what GRPO on the task then has to fix, and does within
a few updates (bench/RESULTS.md). The eval reports the reward and, apart, the content of the
answers whatever their form (``model.tasks.rewards.content_reward``).

Seeded and reproducible: the initial weights come from ``seed``, the examples from
``Task("train", seed)``, and there is no other randomness.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from model.checkpoint import save_pretrained
from model.config import Qwen3VLConfig, TextConfig, VisionConfig
from model.processor import Processor, ProcessorError
from model.qwen3_vl import init_random
from model.rl import evaluate, policy
from model.tasks import Example, Task
from model.tasks.questions import sentence

DEFAULT_STEPS = 1200
IMAGES_PER_STEP = 16
QUESTIONS_PER_IMAGE = 2  # rows per step: IMAGES_PER_STEP * QUESTIONS_PER_IMAGE
SENTENCE_SHARE = 0.6  # rows whose answer is said as a sentence
LENGTH = 96  # longest prompt (83 tokens) + longest sentence answer with <|im_end|> (7), rounded up
PEAK_LR = 2e-3
WARMUP_STEPS = 30
WEIGHT_DECAY = 0.01
EVAL_PER_TYPE = 50


def tiny_config(processor: Processor) -> Qwen3VLConfig:
    """The embedded model's shape: 256x256 images -> 16x16 patches -> 8x8 merged tokens."""
    vocab = processor.tokenizer.get_vocab()
    return Qwen3VLConfig(
        text=TextConfig(
            vocab_size=len(vocab),
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            rope_theta=10_000.0,
            mrope_section=(6, 5, 5),
            max_position_embeddings=512,
        ),
        vision=VisionConfig(
            depth=3,
            hidden_size=96,
            intermediate_size=192,
            num_heads=4,
            out_hidden_size=128,
            patch_size=16,
            temporal_patch_size=2,
            spatial_merge_size=2,
            num_position_embeddings=256,  # a 16x16 table: the task's patch grid
            deepstack_visual_indexes=(0, 1),
        ),
        tie_word_embeddings=True,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )


def answer_ids(processor: Processor, answer: str) -> list[int]:
    """Token ids of an assistant answer as the chat template ends it: text + ``<|im_end|>``."""
    ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [*ids, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def supervised_answers(task: Task, step: int, examples: list[Example]) -> list[str]:
    """The answer texts of the ``step``-th batch's rows: a sentence in ``SENTENCE_SHARE`` of
    them (drawn from a stream named by the task's seed and the step), else the answer."""
    rng = random.Random(f"{task.seed}/answers/{step}")
    return [
        sentence(ex.qtype, ex.answer) if rng.random() < SENTENCE_SHARE else ex.answer
        for ex in examples
    ]


def train_batch(config, processor, task: Task, step: int) -> policy.Sequences:
    """The ``step``-th batch: ``QUESTIONS_PER_IMAGE`` questions (``Task.questions``) about
    each of the train scenes ``step * IMAGES_PER_STEP ...``, answered as
    ``supervised_answers`` says; the vision tower runs once per scene."""
    examples = [
        ex
        for j in range(IMAGES_PER_STEP)
        for ex in task.questions(step * IMAGES_PER_STEP + j, QUESTIONS_PER_IMAGE)
    ]
    prompts = [processor.prepare(ex.question, [ex.image]) for ex in examples]
    texts = supervised_answers(task, step, examples)
    answers = [answer_ids(processor, text) for text in texts]
    rows = range(len(examples))
    image_of_prompt = [b // QUESTIONS_PER_IMAGE for b in rows]
    pad = processor.tokenizer.pad_token_id
    return policy.pack(config, prompts, answers, list(rows), LENGTH, pad, image_of_prompt)


def cross_entropy(logits: jax.Array, seqs: policy.Sequences) -> jax.Array:
    """Mean negative log-likelihood of the answer tokens (every answer token weighs the same)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, seqs.targets[..., None], axis=-1)[..., 0]
    return (nll * seqs.mask).sum() / jnp.maximum(seqs.mask.sum(), 1.0)


def make_optimizer(steps: int) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, PEAK_LR, min(WARMUP_STEPS, max(steps - 1, 1)), max(steps, 2), PEAK_LR * 0.05
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    )


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
    """``step(state, opt_state, seqs) -> (state, opt_state, loss)``, jitted once."""

    def loss_fn(state, seqs):
        return cross_entropy(policy.forward(nnx.merge(graphdef, state), seqs), seqs)

    @jax.jit
    def step(state, opt_state, seqs):
        loss, grads = jax.value_and_grad(loss_fn)(state, seqs)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    return step


def pretrain(out: Path, steps: int, seed: int, log=print):
    """Train the tiny model for ``steps`` steps; returns the trained ``Qwen3VL``."""
    processor = Processor.from_pretrained(out)
    config = tiny_config(processor)
    m = init_random(config, seed)
    graphdef, state = nnx.split(m)
    n_params = sum(x.size for x in jax.tree.leaves(state))
    log(f"tiny Qwen3-VL: {n_params / 1e6:.2f}M parameters, vocab {config.text.vocab_size}")
    optimizer = make_optimizer(steps)
    opt_state = optimizer.init(state)
    step_fn = make_train_step(graphdef, optimizer)
    task = Task("train", seed)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        seqs = train_batch(config, processor, task, step)
        state, opt_state, loss = step_fn(state, opt_state, seqs)
        losses.append(loss)
        if (step + 1) % 50 == 0 or step + 1 == steps:
            recent = float(jnp.mean(jnp.stack(losses[-50:])))
            log(f"step {step + 1}/{steps}  loss {recent:.4f}  {time.perf_counter() - start:.0f}s")
    return nnx.merge(graphdef, state)


def cli_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        m = pretrain(out, steps, args.seed)
        train_s = time.perf_counter() - start
    except ProcessorError as e:
        print(f"error: {e} (the tokenizer and preprocessor files must already be there)")
        return 2
    save_pretrained(m, out)
    print(f"wrote {out}/config.json and model.safetensors ({train_s:.0f}s of training)")
    processor = Processor.from_pretrained(out)
    report = evaluate.evaluate(m, processor, Task("eval", args.seed), EVAL_PER_TYPE)
    print(evaluate.format_report(report))
    return 0
