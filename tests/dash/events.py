"""Hand-built telemetry events for the dashboard tests (test data, not model output).

The shapes are those of a small Qwen3-VL: ``LAYERS`` decoder layers, ``HEADS`` query
heads sharing ``KV_HEADS`` KV heads, a prompt with one image of ``IMAGE_TOKENS`` tokens.
Values are deterministic functions of their indices so tests can assert them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model import telemetry as tm

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 8, 8, 2, 16
CAPACITY = 256
PROMPT = (
    ("<|im_start|>", "user", "\n", "<|vision_start|>")
    + ("<|image_pad|>",) * 16
    + (
        "<|vision_end|>",
        "What",
        " colour",
        " is",
        " the",
        " circle",
        "?",
    )
)
IMAGE_SPAN = (4, 20)  # 16 image tokens: grid 1 x 8 x 8 patches, merged 2x2 -> 4 x 4
IMAGE_TOKENS = IMAGE_SPAN[1] - IMAGE_SPAN[0]


def run_info(**overrides) -> tm.RunInfo:
    fields = dict(
        model_name="tiny-qwen3vl",
        random_init=False,
        mode="grpo",
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        kv_dtype_bytes=4,
        cache_capacity=CAPACITY,
        batch_size=4,
        deepstack_layers=(0, 1, 2),
        sampling={"temperature": 1.0, "top_k": 20.0, "top_p": 0.95, "max_new_tokens": 32.0},
    )
    fields.update(overrides)
    return tm.RunInfo(**fields)


def stats(seed: int = 0, layers: int = LAYERS, heads: int = HEADS) -> tm.HeadStats:
    """max_weight[l, h] = (l * heads + h) / (layers * heads), so every cell differs."""
    grid = np.arange(layers * heads, dtype=np.float32).reshape(layers, heads) / (layers * heads)
    return tm.HeadStats(
        max_weight=grid,
        entropy=(1.0 - grid) * 2.0,
        vision_mass=np.roll(grid, seed, axis=1),
        sink_mass=grid[::-1].copy(),
        argmax=(np.arange(layers * heads, dtype=np.int32).reshape(layers, heads) % 7),
    )


def image(pixels: bool = True) -> tm.ImageInfo:
    thumb = None
    if pixels:
        ys, xs = np.mgrid[0:16, 0:16]
        thumb = np.stack([ys * 16, xs * 16, np.full_like(ys, 128)], -1).astype(np.uint8)
    return tm.ImageInfo(span=IMAGE_SPAN, grid_thw=(1, 8, 8), merge_size=2, pixels=thumb)


def prefill(episode: int = 0, sample: int = 0, tokens=PROMPT, with_image: bool = True):
    n = len(tokens)
    positions = np.tile(np.arange(n, dtype=np.int32), (3, 1))
    if with_image:
        start, end = IMAGE_SPAN
        hh, ww = np.mgrid[0:4, 0:4]
        positions[0, start:end] = start
        positions[1, start:end] = start + hh.ravel()
        positions[2, start:end] = start + ww.ravel()
        positions[:, end:] = np.arange(n - end, dtype=np.int32) + start + 4
    return tm.PrefillEvent(
        episode=episode,
        sample=sample,
        tokens=tuple(tokens),
        token_ids=np.arange(n, dtype=np.int32),
        positions=positions,
        images=(image(),) if with_image else (),
        vision_norm=12.5,
        text_norm=0.75,
        stats=stats(),
        layer=0,
        head=0,
        attn_map=np.eye(n, dtype=np.float32),
        cache_len=n,
        cache_capacity=CAPACITY,
        elapsed_ms=42.0,
    )


def decode(step: int, text: str = "blue", episode: int = 0, sample: int = 0, layer=0, head=0):
    """A chunk of one token, the ``step``-th new token after ``prefill()``; its attention
    row puts half its mass on the image token at merged cell (1, 2) and the rest evenly
    on text tokens."""
    cache_len = len(PROMPT) + step + 1
    row = np.zeros(cache_len, np.float32)
    text_positions = [i for i in range(cache_len) if not IMAGE_SPAN[0] <= i < IMAGE_SPAN[1]]
    row[text_positions] = 0.5 / len(text_positions)
    row[IMAGE_SPAN[0] + 1 * 4 + 2] = 0.5
    one = stats(seed=step)
    return tm.DecodeChunk(
        episode=episode,
        sample=sample,
        first=step,
        token_ids=np.array([100 + step], np.int32),
        token_texts=(text,),
        probs=np.array([0.875], np.float32),
        top_ids=np.array([[100 + step, 7, 8, 9, 10]], np.int32),
        top_probs=np.array([[0.875, 0.05, 0.03, 0.02, 0.01]], np.float32),
        top_texts=((text, "red", "green", "a", "the"),),
        cache_lens=np.array([cache_len], np.int32),
        cache_capacity=CAPACITY,
        positions=np.array([[30 + step] * 3], np.int32),
        stats=tm.HeadStats(*(getattr(one, f)[None] for f in STATS_FIELDS)),
        layer=layer,
        head=head,
        attn_rows=row[None],
        elapsed_ms=4.0,
        done=False,
    )


def chunk(tokens: list[tm.DecodeChunk]) -> tm.DecodeChunk:
    """The one ``DecodeChunk`` of consecutive chunks of one stream (same episode, sample,
    selection and step time; only the last may be done)."""
    e, last = tokens[0], tokens[-1]
    width = max(t.attn_rows.shape[1] for t in tokens)
    rows = np.zeros((sum(map(len, tokens)), width), np.float32)
    for i, row in enumerate(r for t in tokens for r in t.attn_rows):
        rows[i, : len(row)] = row

    def stacked(name):
        return np.concatenate([getattr(t, name) for t in tokens])

    return dataclasses.replace(
        e,
        token_ids=stacked("token_ids"),
        token_texts=sum((t.token_texts for t in tokens), ()),
        probs=stacked("probs"),
        top_ids=stacked("top_ids"),
        top_probs=stacked("top_probs"),
        top_texts=sum((t.top_texts for t in tokens), ()),
        cache_lens=stacked("cache_lens"),
        positions=stacked("positions"),
        stats=tm.HeadStats(
            *(np.concatenate([getattr(t.stats, f) for t in tokens]) for f in STATS_FIELDS)
        ),
        attn_rows=rows,
        done=last.done,
    )


STATS_FIELDS = (*tm.HeadStats.METRICS, "argmax")


def train(step: int = 3, reward_mean: float = 0.625) -> tm.TrainEvent:
    """Step ``step``'s metrics; those that vary over a run grow with ``step``."""
    return tm.TrainEvent(
        step=step,
        reward_mean=reward_mean,
        reward_std=0.25,
        reward_by_type={"color": 0.5 + step / 100, "count": 0.75},
        frac_reward_zero_std=0.25,
        completions_mean_length=2.5,
        completions_min_length=2.0,
        completions_max_length=4.0,
        completions_clipped_ratio=0.125,
        kl=0.0125,
        loss=-0.0312,
        clip_ratio=0.1,
        entropy=1.5,
        grad_norm=0.8,
        advantages_min=-1.5,
        advantages_mean=0.0,
        advantages_max=1.25,
        tokens_per_s=250.0,
        timing_s={"gen": 2.0, "reward": 0.01, "update_actor": 4.0, "step": 6.0 + step},
        rewards=np.array([1.0, 0.5, 0.5, 0.5], np.float32),
    )


def group(step: int = 3, rewards=(1.0, 0.0, 0.5, -0.5)) -> tm.GroupEvent:
    """The scored group of step ``step``: four answers; answer 3 was cut by the limit."""
    tokens = (("blue", "<|im_end|>"), ("red", "<|im_end|>"), ("top", " left", "<|im_end|>"))
    tokens += (("\x1b[31mred", "red", "red", "red"),)
    width = max(map(len, tokens))
    logprobs = -np.arange(4 * width, dtype=np.float32).reshape(4, width) / 8
    return tm.GroupEvent(
        step=step,
        question="What colour is the circle?",
        tokens=tokens,
        rewards=np.array(rewards, np.float32),
        advantages=np.array([1.3, -0.4, 0.4, -1.3], np.float32),
        truncated=np.array([False, False, False, True]),
        logprobs=logprobs,
        entropies=-logprobs / 2,
    )


def credit(step: int = 3, sample: int = 0) -> tm.CreditEvent:
    return tm.CreditEvent(
        step=step,
        sample=sample,
        tokens=("The", " circle", " is", " blue"),
        credits=np.array([0.1, -0.2, 0.05, 0.8], np.float32),
        reward=1.0,
        advantage=0.84,
    )


def profile() -> tm.StepProfile:
    return tm.StepProfile(
        stage_ms={"mrope": 0.02, "qkv": 0.31, "attention": 0.44, "kv_write": 0.05, "sample": 0.12},
        cache_len=40,
    )


def episode_events(steps: int = 3) -> list:
    """A run up to ``steps`` decoded tokens, in the order a rollout emits them."""
    events = [run_info(), tm.PhaseEvent(phase="prefill", active=True), prefill()]
    events += [
        tm.PhaseEvent(phase="prefill", active=False, elapsed_ms=42.0),
        tm.PhaseEvent(phase="decode", active=True),
    ]
    events += [decode(i, text=f"t{i}") for i in range(steps)]
    return events


def frame(events=(), meters=None, **ui):
    """A dashboard ``Frame`` after ``events``, with ``UiState(**ui)``."""
    import functools

    from dash import state

    view = functools.reduce(state.reduce, events, state.View())
    return state.Frame(view, state.UiState(**ui), meters or state.Meters())


def render(widget, size, frame_):
    """Text rows and attribute runs of ``widget`` showing ``frame_`` at ``size``."""
    import urwid.testing

    widget.show(frame_)
    return urwid.testing.render_text(widget, size), urwid.testing.render_runs(widget, size)


def attr_of(runs, text):
    """The attribute of the first run containing ``text``."""
    for row in runs:
        for attr, chunk in row:
            if text in chunk:
                return attr
    raise AssertionError(f"{text!r} not rendered")


def record(event) -> dict:
    """The one record of ``event`` (a decode chunk of one token, or any other event)."""
    (one,) = tm.records(event)
    return one
