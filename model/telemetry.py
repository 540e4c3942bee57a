"""The event contract between a rollout (producer) and any viewer (the dashboard).

Every event is a frozen dataclass of numpy arrays and plain Python values; nothing here
holds a JAX array, so a viewer never touches the device. ``to_record`` / ``from_record``
give the JSON Lines format documented in the README (``--record`` / ``--replay``), which
training loops in any framework can write.

Shapes: ``L`` decoder layers, ``H`` query heads, ``T`` tokens in the context.
Strings that came from a model or tokenizer are untrusted: viewers must sanitise them.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, ClassVar, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Sent once when a rollout starts: the shape of the model and the run."""

    kind: ClassVar[str] = "run"
    model_name: str
    random_init: bool  # weights are a random init, not a trained checkpoint
    mode: str  # "grpo" | "inference"
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int
    head_dim: int
    kv_dtype_bytes: int  # bytes per element of the KV cache
    cache_capacity: int  # tokens per sample
    batch_size: int  # samples decoded together (the GRPO group size G)
    deepstack_layers: tuple[int, ...]  # decoder layers that receive DeepStack features
    sampling: dict[str, float]  # temperature, top_k, top_p, max_new_tokens


@dataclasses.dataclass(frozen=True)
class HeadStats:
    """Summaries of one attention row (one query position) per layer and query head."""

    max_weight: np.ndarray  # [L, H] float32, largest attention weight
    entropy: np.ndarray  # [L, H] float32, nats
    vision_mass: np.ndarray  # [L, H] float32, total weight on image tokens
    sink_mass: np.ndarray  # [L, H] float32, weight on token 0
    argmax: np.ndarray  # [L, H] int32, position of the largest weight

    METRICS: ClassVar[tuple[str, ...]] = ("max_weight", "entropy", "vision_mass", "sink_mass")

    # Summaries of several steps stack every field per step, ``[n, L, H]``.

    def steps(self, start: int = 0) -> list[HeadStats]:
        """Each step's ``[L, H]`` summaries, from step ``start`` on (views)."""
        fields = [list(getattr(self, f.name)[start:]) for f in dataclasses.fields(self)]
        return [HeadStats(*values) for values in zip(*fields, strict=True)]

    def first_steps(self, n: int) -> HeadStats:
        """The summaries of the first ``n`` steps (views)."""
        return HeadStats(*(getattr(self, f.name)[:n] for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One image in the prompt."""

    span: tuple[int, int]  # [start, end) token positions of its <|image_pad|> tokens
    grid_thw: tuple[int, int, int]  # patch grid before the 2x2 merge
    merge_size: int  # spatial merge; merged grid is (t, h // m, w // m)
    pixels: np.ndarray | None  # [h, w, 3] uint8 thumbnail for drawing, or None


@dataclasses.dataclass(frozen=True)
class PrefillEvent:
    """The prompt of the watched sample after prefill."""

    kind: ClassVar[str] = "prefill"
    episode: int  # rollout / GRPO step this belongs to
    sample: int  # batch row being watched
    tokens: tuple[str, ...]  # [T] token texts (untrusted)
    token_ids: np.ndarray  # [T] int32
    positions: np.ndarray  # [3, T] int32 mRoPE (t, h, w) of every prompt token
    images: tuple[ImageInfo, ...]
    vision_norm: float  # mean L2 norm of the merged vision embeddings
    text_norm: float  # mean L2 norm of the text token embeddings
    stats: HeadStats  # for the last prompt position
    layer: int  # selected layer of attn_map
    head: int  # selected query head of attn_map
    attn_map: np.ndarray  # [R, R] float32, selected head's T x T map pooled to R <= 128
    cache_len: int
    cache_capacity: int
    elapsed_ms: float  # wall time of the prefill (vision tower included)


@dataclasses.dataclass(frozen=True)
class DecodeEvent:
    """One sampled token of the watched sample, with the attention that produced it."""

    kind: ClassVar[str] = "decode"
    episode: int
    sample: int
    step: int  # index of this token among the new tokens, 0-based
    token_id: int
    token_text: str  # untrusted
    prob: float  # probability of the sampled token under the sampling distribution
    top_ids: np.ndarray  # [k] int32 most likely alternatives
    top_probs: np.ndarray  # [k] float32
    top_texts: tuple[str, ...]  # [k] untrusted
    cache_len: int  # tokens in the cache after this step's KV write
    cache_capacity: int
    position: tuple[int, int, int]  # mRoPE (t, h, w) of the query token
    stats: HeadStats
    layer: int
    head: int
    attn_row: np.ndarray  # [cache_len] float32, selected (layer, head) over the context
    elapsed_ms: float  # wall time of this decode step (of its chunk, per step)
    done: bool  # the watched sample stopped (EOS or length) at this token


@dataclasses.dataclass(frozen=True)
class DecodeChunk:
    """Consecutive sampled tokens of the watched sample in one event: the fields of their
    ``DecodeEvent``s stacked per token, ``n`` tokens, steps ``first, first + 1, ...``.

    A rollout that decodes in chunks of steps sends one of these per chunk: building and
    handing over one event per token costs the run being watched thousands of objects a
    second. ``events()`` gives the ``DecodeEvent``s, which is what a recording holds.
    """

    kind: ClassVar[str] = "decode_chunk"
    episode: int
    sample: int
    first: int  # step of the first token
    token_ids: np.ndarray  # [n] int32
    token_texts: tuple[str, ...]  # [n] untrusted
    probs: np.ndarray  # [n] float32
    top_ids: np.ndarray  # [n, k] int32
    top_probs: np.ndarray  # [n, k] float32
    top_texts: tuple[str, ...]  # [n * k] untrusted, k per token
    cache_lens: np.ndarray  # [n] int32
    cache_capacity: int
    positions: np.ndarray  # [n, 3] int32 mRoPE (t, h, w) of each query token
    stats: HeadStats  # every field [n, L, H]
    layer: int
    head: int
    attn_rows: np.ndarray  # [n, C] float32; token j's attn_row is attn_rows[j, :cache_lens[j]]
    elapsed_ms: float  # wall time of each of these decode steps
    done: bool  # the watched sample stopped (EOS or length) at the last token

    def __len__(self) -> int:
        return len(self.token_ids)

    def steps(self) -> range:
        return range(self.first, self.first + len(self))

    def events(self, start: int = 0) -> list[DecodeEvent]:
        """The ``DecodeEvent`` of each token from number ``start`` on."""
        n, k = len(self), self.top_ids.shape[1]
        columns = zip(
            range(start, n), self.token_ids[start:].tolist(), self.probs[start:].tolist(),
            self.cache_lens[start:].tolist(), self.positions[start:].tolist(),
            self.stats.steps(start), strict=True,
        )  # fmt: skip
        return [
            DecodeEvent(
                episode=self.episode, sample=self.sample, step=self.first + j, token_id=token,
                token_text=self.token_texts[j], prob=prob, top_ids=self.top_ids[j],
                top_probs=self.top_probs[j], top_texts=self.top_texts[j * k : (j + 1) * k],
                cache_len=cache_len, cache_capacity=self.cache_capacity,
                position=tuple(position), stats=stats, layer=self.layer,
                head=self.head, attn_row=self.attn_rows[j, :cache_len],
                elapsed_ms=self.elapsed_ms, done=self.done and j == n - 1,
            )
            for j, token, prob, cache_len, position, stats in columns
        ]  # fmt: skip

    def last_event(self) -> DecodeEvent:
        return self.events(len(self) - 1)[0]


def per_token(events) -> list:
    """``events`` with every ``DecodeChunk`` replaced by its ``DecodeEvent``s."""
    out = []
    for event in events:
        if isinstance(event, DecodeChunk):
            out.extend(event.events())
        else:
            out.append(event)
    return out


@dataclasses.dataclass(frozen=True)
class PhaseEvent:
    """A phase of the loop started (``active``) or ended with its measured duration."""

    kind: ClassVar[str] = "phase"
    PHASES: ClassVar[tuple[str, ...]] = ("prefill", "decode", "reward", "update")
    phase: str
    active: bool
    elapsed_ms: float  # 0 when active


@dataclasses.dataclass(frozen=True)
class StepProfile:
    """Measured time of the stages inside one decode step (all layers), in ms.

    The decode step runs as one fused XLA program, so its stages are timed by running
    each stage alone, jitted, at the same shapes.
    """

    kind: ClassVar[str] = "profile"
    STAGES: ClassVar[tuple[str, ...]] = ("mrope", "qkv", "attention", "kv_write", "sample")
    stage_ms: dict[str, float]
    cache_len: int


@dataclasses.dataclass(frozen=True)
class TrainEvent:
    """One policy update."""

    kind: ClassVar[str] = "train"
    step: int
    reward_mean: float
    reward_std: float
    kl: float
    loss: float
    clip_frac: float
    entropy: float
    grad_norm: float
    tokens_per_s: float  # decode throughput of this step's rollout
    rewards: np.ndarray  # [G] float32 reward of each sample


@dataclasses.dataclass(frozen=True)
class CreditEvent:
    """Per-token credit of one finished episode (definition in model/rl)."""

    kind: ClassVar[str] = "credit"
    step: int
    sample: int
    tokens: tuple[str, ...]  # [n] generated token texts (untrusted)
    credits: np.ndarray  # [n] float32
    reward: float
    advantage: float


@dataclasses.dataclass(frozen=True)
class ErrorEvent:
    """The rollout failed; the dashboard keeps running and shows this."""

    kind: ClassVar[str] = "error"
    message: str
    traceback: str


Event = (
    RunInfo
    | PrefillEvent
    | DecodeEvent
    | DecodeChunk
    | PhaseEvent
    | StepProfile
    | TrainEvent
    | CreditEvent
    | ErrorEvent
)
# What a record can hold (a recording holds a DecodeChunk as its DecodeEvents).
EVENT_TYPES: dict[str, type] = {
    cls.kind: cls
    for cls in (
        RunInfo,
        PrefillEvent,
        DecodeEvent,
        PhaseEvent,
        StepProfile,
        TrainEvent,
        CreditEvent,
        ErrorEvent,
    )
}


class Sink(Protocol):
    """Where a rollout publishes events. ``emit`` must never block on the viewer."""

    def emit(self, event: Event) -> None: ...


class RolloutControl:
    """Thread-safe requests from the viewer to the rollout: pause, single step, stop,
    and which (sample, layer, head) the device should send in full."""

    def __init__(self, layer: int = 0, head: int = 0, sample: int = 0) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._steps = 0
        self._stopped = False
        self.selection = (sample, layer, head)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def select(self, sample: int, layer: int, head: int) -> None:
        self.selection = (sample, layer, head)  # one tuple store: atomic for readers

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def step_once(self) -> None:
        """While paused, let exactly one more decode step run."""
        with self._cond:
            self._steps += 1
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def gate(self) -> bool:
        """Called by the rollout before each decode step or chunk of steps (one step while
        paused): blocks while paused (unless a single step was granted) and returns False
        once stop was requested."""
        with self._cond:
            while self._paused and self._steps == 0 and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            if self._paused:
                self._steps -= 1
            return True


# --- JSON Lines records -------------------------------------------------------------


class RecordError(ValueError):
    """A record that is not a valid event of a known type."""


class UnknownEventType(RecordError):
    """A record whose ``type`` no version of this contract knows (skip and count it)."""


def _to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def to_record(event: Event) -> dict:
    """A JSON-serialisable dict: ``{"type": kind, **fields}``, arrays as nested lists."""
    return {"type": event.kind, **_to_plain(event)}


_ARRAY_DTYPES = {
    "max_weight": np.float32,
    "entropy": np.float32,
    "vision_mass": np.float32,
    "sink_mass": np.float32,
    "argmax": np.int32,
    "token_ids": np.int32,
    "positions": np.int32,
    "attn_map": np.float32,
    "top_ids": np.int32,
    "top_probs": np.float32,
    "attn_row": np.float32,
    "rewards": np.float32,
    "credits": np.float32,
    "pixels": np.uint8,
}


def _from_plain(cls: type, d: dict) -> Any:
    if not isinstance(d, dict):
        raise RecordError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = names - d.keys()
    if missing:
        raise RecordError(f"{cls.__name__}: missing field(s) {', '.join(sorted(missing))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        v = d[f.name]
        if f.name == "stats":
            v = _from_plain(HeadStats, v)
        elif f.name == "images":
            v = tuple(_from_plain(ImageInfo, i) for i in v)
        elif f.name in _ARRAY_DTYPES:
            v = None if v is None else np.asarray(v, dtype=_ARRAY_DTYPES[f.name])
        elif isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kwargs[f.name] = v
    return cls(**kwargs)


def from_record(d: dict) -> Event:
    """Inverse of ``to_record``. Raises ``UnknownEventType`` or ``RecordError``."""
    if not isinstance(d, dict) or "type" not in d:
        raise RecordError("record has no 'type'")
    cls = EVENT_TYPES.get(d["type"])
    if cls is None:
        raise UnknownEventType(f"unknown event type {d['type']!r}")
    try:
        return _from_plain(cls, {k: v for k, v in d.items() if k != "type"})
    except (TypeError, ValueError) as e:
        if isinstance(e, RecordError):
            raise
        raise RecordError(f"{cls.__name__}: {e}") from None
