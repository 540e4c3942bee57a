"""The event contract between a rollout (producer) and any viewer (the dashboard).

Every event is a frozen dataclass of numpy arrays and plain Python values; nothing here
holds a JAX array, so a viewer never touches the device. The dataclasses are the schema:
a field typed ``X | None`` is optional (default ``None``; the viewer shows "—"), and an
array field carries its dtype and axes in its metadata (``array``). The record codec
(``records`` / ``from_record``: the JSON Lines format of ``--record`` / ``--replay``
documented in the README, which any training loop in any framework can write) is derived
from them, and so are the ``sink`` conveniences of the dashboard.

Shapes: ``n`` tokens of a chunk, ``L`` decoder layers, ``H`` query heads, ``T`` tokens in
the context, ``C`` cache slots, ``k`` alternatives per token.
Strings that came from a model or tokenizer are untrusted: viewers must sanitise them.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import types
import typing
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import numpy as np


def array(dtype, *dims: str | int, default: Any = dataclasses.MISSING, **metadata) -> Any:
    """A dataclass field holding a numpy array of ``dtype`` with axes ``dims`` (names such
    as ``"n"`` or ``"L"``, or fixed sizes; the codec checks their number and the fixed
    sizes). ``metadata`` adds the field's other metadata."""
    metadata = {"dtype": np.dtype(dtype), "dims": dims, **metadata}
    return dataclasses.field(default=default, metadata=metadata)


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunInfo:
    """Sent once when a rollout starts: the shape of the model and the run."""

    kind: ClassVar[str] = "run"
    model_name: str
    random_init: bool = False  # weights are a random init, not a trained checkpoint
    mode: str  # "grpo" | "inference" | "training"
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int
    head_dim: int | None = None
    kv_dtype_bytes: int | None = None  # bytes per element of the KV cache
    cache_capacity: int  # tokens per sample
    batch_size: int = 1  # samples decoded together (the GRPO group size G)
    deepstack_layers: tuple[int, ...] = ()  # decoder layers that receive DeepStack features
    sampling: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class HeadStats:
    """Summaries of attention rows per layer and query head, ``[L, H]`` for one query
    position (``[n, L, H]`` in a ``DecodeChunk``, stacked per token)."""

    max_weight: np.ndarray = array(np.float32, "L", "H")  # largest attention weight
    entropy: np.ndarray = array(np.float32, "L", "H")  # nats
    vision_mass: np.ndarray = array(np.float32, "L", "H")  # total weight on image tokens
    sink_mass: np.ndarray = array(np.float32, "L", "H")  # weight on token 0
    argmax: np.ndarray = array(np.int32, "L", "H")  # position of the largest weight

    METRICS: ClassVar[tuple[str, ...]] = ("max_weight", "entropy", "vision_mass", "sink_mass")

    def step(self, j: int) -> HeadStats:
        """Token ``j``'s ``[L, H]`` summaries of stacked ones (views)."""
        return HeadStats(*(getattr(self, f.name)[j] for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageInfo:
    """One image in the prompt."""

    span: tuple[int, int]  # [start, end) token positions of its <|image_pad|> tokens
    grid_thw: tuple[int, int, int]  # patch grid before the 2x2 merge
    merge_size: int  # spatial merge; merged grid is (t, h // m, w // m)
    pixels: np.ndarray | None = array(np.uint8, "h", "w", 3, default=None)  # thumbnail
    # (row, column) of the merged cells holding what the question asks about, when the task
    # knows it (ground truth shown next to the attention; the model never sees it)
    target_cells: np.ndarray | None = array(np.int32, "m", 2, default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefillEvent:
    """The prompt of the watched sample after prefill."""

    kind: ClassVar[str] = "prefill"
    episode: int = 0  # rollout / GRPO step this belongs to
    sample: int = 0  # batch row being watched
    tokens: tuple[str, ...]  # [T] token texts (untrusted)
    token_ids: np.ndarray = array(np.int32, "T")
    positions: np.ndarray | None = array(np.int32, 3, "T", default=None)  # mRoPE (t, h, w)
    images: tuple[ImageInfo, ...] = ()
    vision_norm: float | None = None  # mean L2 norm of the merged vision embeddings
    text_norm: float | None = None  # mean L2 norm of the text token embeddings
    stats: HeadStats | None = None  # of the last prompt position
    layer: int = 0  # selected layer of attn_map
    head: int = 0  # selected query head of attn_map
    # the selected head's T x T map, block-max pooled to R <= 128
    attn_map: np.ndarray | None = array(np.float32, "R", "R", default=None)
    cache_len: int
    cache_capacity: int
    elapsed_ms: float | None = None  # wall time of the prefill (vision tower included)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeChunk:
    """Consecutive sampled tokens of the watched sample, steps ``first, first + 1, ...``,
    with the attention that produced each: the one decode event, from the compiled decode
    (``model.decode``) to the panels. ``n >= 1`` tokens; ``sink.decode`` sends one.

    A record holds one token (type ``decode``; ``token_records``): a field with
    ``record`` metadata has that name there, and a ``stacked`` one gives token ``j`` its
    index ``j``. ``from_token_record`` reads a record back as a chunk of one token.
    """

    kind: ClassVar[str] = "decode"
    episode: int = 0
    sample: int = 0
    first: int = dataclasses.field(metadata={"record": "step"})  # step of the first token
    token_ids: np.ndarray = array(np.int32, "n", record="token_id", stacked=True)
    token_texts: tuple[str, ...] = dataclasses.field(
        metadata={"record": "token_text", "stacked": True}
    )
    # each token's probability under the sampling distribution
    probs: np.ndarray = array(np.float32, "n", record="prob", stacked=True)
    # the likeliest alternatives and their probabilities
    top_ids: np.ndarray | None = array(np.int32, "n", "k", default=None, stacked=True)
    top_probs: np.ndarray | None = array(np.float32, "n", "k", default=None, stacked=True)
    top_texts: tuple[tuple[str, ...], ...] | None = dataclasses.field(
        default=None, metadata={"stacked": True}
    )
    # tokens in the cache after each step's KV write
    cache_lens: np.ndarray = array(np.int32, "n", record="cache_len", stacked=True)
    cache_capacity: int
    # mRoPE (t, h, w) of each query token
    positions: np.ndarray | None = array(
        np.int32, "n", 3, default=None, record="position", stacked=True
    )
    stats: HeadStats | None = dataclasses.field(default=None, metadata={"stacked": True})
    layer: int = 0  # the selected (layer, head) of attn_rows
    head: int = 0
    # token j's row over its context is attn_rows[j, :cache_lens[j]] (``attn_row``)
    attn_rows: np.ndarray | None = array(
        np.float32, "n", "C", default=None, record="attn_row", stacked=True
    )
    elapsed_ms: float | None = None  # wall time of each of these decode steps
    done: bool = False  # the watched sample stopped (EOS or length) at the last token

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def last_step(self) -> int:
        """Step of the last token."""
        return self.first + len(self) - 1

    @property
    def cache_len(self) -> int:
        """Tokens in the cache after the last token's write."""
        return int(self.cache_lens[-1])

    def attn_row(self, j: int = -1) -> np.ndarray | None:
        """Token ``j``'s attention row of the selected head, ``[cache_lens[j]]``."""
        if self.attn_rows is None:
            return None
        return self.attn_rows[j, : int(self.cache_lens[j])]

    def first_tokens(self, k: int) -> DecodeChunk:
        """The chunk of this one's first ``k`` tokens (views)."""
        if k >= len(self):
            return self
        cut = {
            f.name: _first(getattr(self, f.name), k)
            for f in dataclasses.fields(self)
            if f.metadata.get("stacked")
        }
        return dataclasses.replace(self, **cut, done=False)

    def token_records(self) -> Iterator[dict[str, Any]]:
        """Each token's record fields (values still numpy)."""
        n = len(self)
        for j in range(n):
            record: dict[str, Any] = {}
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if f.metadata.get("stacked") and value is not None:
                    value = value.step(j) if isinstance(value, HeadStats) else value[j]
                record[_record_name(f)] = value
            record["step"] = self.first + j
            record["attn_row"] = self.attn_row(j)
            record["done"] = self.done and j == n - 1
            yield record

    @classmethod
    def from_token_record(cls, record: dict[str, Any]) -> DecodeChunk:
        """The chunk of one token from its record's plain (JSON) fields."""
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = _record_name(f)
            if name not in record:
                if _required(f):
                    raise RecordError(f"decode: missing field(s) {name}")
                continue
            value = record[name]
            if f.metadata.get("stacked") and value is not None:
                value = _stack_one(value)
            fields[f.name] = value
        return _from_plain(cls, fields, "decode")


def _record_name(f: dataclasses.Field) -> str:
    return f.metadata.get("record", f.name)


def _first(value: Any, k: int) -> Any:
    """The first ``k`` tokens of a stacked field's value."""
    if isinstance(value, HeadStats):
        return HeadStats(*(getattr(value, f.name)[:k] for f in dataclasses.fields(value)))
    return None if value is None else value[:k]


def _stack_one(value: Any) -> Any:
    """A plain value of one token as that of a chunk of one token."""
    if isinstance(value, dict):  # summaries: every field gets the token axis
        return {k: [v] for k, v in value.items()}
    return [value]


@dataclasses.dataclass(frozen=True)
class PhaseEvent:
    """A phase of the loop (``PHASES``, in their order) started (``active``) or ended with
    its measured duration; or ``compile``: XLA compiling a program, whose time is never
    counted in another phase's."""

    kind: ClassVar[str] = "phase"
    PHASES: ClassVar[tuple[str, ...]] = ("prefill", "decode", "reward", "update")
    phase: str
    active: bool
    elapsed_ms: float | None = 0.0  # 0 when it starts; None: unknown (it compiled)
    done: int | None = None  # progress of an active phase: done of total items (prompts
    total: int | None = None  # sampled, optimizer updates made)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepProfile:
    """Measured time of the stages inside one decode step (all layers), in ms.

    The decode step runs as one fused XLA program, so its stages are timed by running
    each stage alone, jitted, at the same shapes.
    """

    kind: ClassVar[str] = "profile"
    STAGES: ClassVar[tuple[str, ...]] = ("mrope", "qkv", "attention", "kv_write", "sample")
    stage_ms: dict[str, float]
    cache_len: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainEvent:
    """One policy update: its rollouts and the optimizer's step. Names follow TRL's GRPO
    metrics, ``/`` written ``_`` (``completions/mean_length`` is ``completions_mean_length``),
    and verl's for the advantages and timings."""

    kind: ClassVar[str] = "train"
    step: int
    reward_mean: float
    reward_std: float | None = None
    reward_by_type: dict[str, float] | None = None  # mean per reward function (task type)
    frac_reward_zero_std: float | None = None  # groups whose rewards are all equal
    completions_mean_length: float | None = None  # new tokens per answer, EOS included
    completions_min_length: float | None = None
    completions_max_length: float | None = None
    completions_clipped_ratio: float | None = None  # answers cut by the token limit
    kl: float | None = None
    loss: float | None = None
    clip_ratio: float | None = None  # tokens whose policy ratio the clip stopped
    entropy: float | None = None
    grad_norm: float | None = None
    advantages_min: float | None = None
    advantages_mean: float | None = None
    advantages_max: float | None = None
    tokens_per_s: float | None = None  # decode throughput of this step's rollout
    timing_s: dict[str, float] | None = None  # seconds per part of the step
    rewards: np.ndarray | None = array(np.float32, "G", default=None)  # each sample's reward


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupEvent:
    """The watched prompt's group: its ``G`` answers as the update scored them. The
    per-token values are of the sampling policy, from the update's forward pass; an answer
    ``i`` has ``n_i = len(tokens[i])`` tokens (EOS included), later columns are 0."""

    kind: ClassVar[str] = "group"
    step: int
    question: str = ""  # untrusted
    tokens: tuple[tuple[str, ...], ...]  # [G][n_i] token texts of each answer (untrusted)
    rewards: np.ndarray = array(np.float32, "G")
    advantages: np.ndarray = array(np.float32, "G")
    truncated: np.ndarray | None = array(np.bool_, "G", default=None)  # no EOS: cut
    logprobs: np.ndarray | None = array(np.float32, "G", "n", default=None)  # log-prob
    entropies: np.ndarray | None = array(np.float32, "G", "n", default=None)  # nats


@dataclasses.dataclass(frozen=True, kw_only=True)
class CreditEvent:
    """Per-token credit of one finished episode (definition in model/rl)."""

    kind: ClassVar[str] = "credit"
    step: int = 0
    sample: int = 0
    tokens: tuple[str, ...]  # [n] generated token texts (untrusted)
    credits: np.ndarray = array(np.float32, "n")
    reward: float | None = None
    advantage: float | None = None


@dataclasses.dataclass(frozen=True)
class NoticeEvent:
    """A one-line message for the viewer, e.g. why a prompt it sent was refused."""

    kind: ClassVar[str] = "notice"
    message: str  # untrusted


@dataclasses.dataclass(frozen=True)
class ErrorEvent:
    """The rollout failed; the dashboard keeps running and shows this."""

    kind: ClassVar[str] = "error"
    message: str
    traceback: str = ""


Event = (
    RunInfo
    | PrefillEvent
    | DecodeChunk
    | PhaseEvent
    | StepProfile
    | TrainEvent
    | GroupEvent
    | CreditEvent
    | NoticeEvent
    | ErrorEvent
)
EVENT_TYPES: dict[str, type] = {cls.kind: cls for cls in typing.get_args(Event)}


class Sink(Protocol):
    """Where a rollout publishes events. ``emit`` must never block on the viewer."""

    def emit(self, event: Event) -> None: ...


class NullSink:
    """A sink for a run that nobody watches: every event is discarded."""

    def emit(self, event: Event) -> None:
        pass


class RolloutControl:
    """Thread-safe requests from the viewer to the rollout: pause, single step, stop,
    which (sample, layer, head) the device should send in full, and a new prompt (for a
    rollout that answers prompts: it ends the current answer)."""

    def __init__(self, layer: int = 0, head: int = 0, sample: int = 0) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._steps = 0
        self._stopped = False
        self._prompt: str | None = None
        self.selection = (sample, layer, head)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def select(self, sample: int, layer: int, head: int) -> None:
        """Watch ``(sample, layer, head)``: the rollout reads it before each chunk of steps."""
        self.selection = (sample, layer, head)  # one tuple store: atomic for readers

    def set_paused(self, paused: bool) -> None:
        """Pause the rollout at its next ``gate``, or let a waiting one go on."""
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def step_once(self) -> None:
        """While paused, let exactly one more decode step run."""
        with self._cond:
            self._steps += 1
            self._cond.notify_all()

    def stop(self) -> None:
        """End the rollout: ``gate`` returns False and ``next_prompt`` ``None`` from now on."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def submit_prompt(self, text: str) -> None:
        """Ask for an answer to ``text``: the current answer ends at its next gate."""
        with self._cond:
            self._prompt = text
            self._cond.notify_all()

    def next_prompt(self) -> str | None:
        """Called by a rollout that answers prompts: waits for the next prompt and takes
        it; ``None`` once stop was requested."""
        with self._cond:
            while self._prompt is None and not self._stopped:
                self._cond.wait()
            prompt, self._prompt = self._prompt, None
            return None if self._stopped else prompt

    def gate(self) -> bool:
        """Called by the rollout before each decode step or chunk of steps (one step while
        paused): blocks while paused (unless a single step was granted) and returns False
        once stop was requested or a new prompt waits."""
        with self._cond:
            while self._paused and self._steps == 0 and not self._ended():
                self._cond.wait()
            if self._ended():
                return False
            if self._paused:
                self._steps -= 1
            return True

    def _ended(self) -> bool:
        return self._stopped or self._prompt is not None


# --- records: the events as plain values ---------------------------------------------


class RecordError(ValueError):
    """A record that is not a valid event of a known type."""


class UnknownEventType(RecordError):
    """A record whose ``type`` no version of this contract knows (skip and count it)."""


def records(event: Event) -> list[dict[str, Any]]:
    """Plain (JSON-serialisable) records of ``event``: ``{"type": kind, **fields}``,
    arrays as nested lists; a ``DecodeChunk`` gives one ``decode`` record per token."""
    if isinstance(event, DecodeChunk):
        return [{"type": event.kind, **to_plain(r)} for r in event.token_records()]
    return [{"type": event.kind, **to_plain(event)}]


def record_fields(kind: str) -> tuple[str, ...]:
    """The field names of a record of type ``kind``, in order (the README's event table)."""
    return tuple(_record_name(f) for f in dataclasses.fields(EVENT_TYPES[kind]))


def from_record(d: Any) -> Event:
    """The event of one plain record (a ``decode`` record gives a chunk of one token).
    Raises ``UnknownEventType`` or ``RecordError``."""
    if not isinstance(d, dict) or "type" not in d:
        raise RecordError("record has no 'type'")
    cls = EVENT_TYPES.get(d["type"]) if isinstance(d["type"], str) else None
    if cls is None:
        raise UnknownEventType(f"unknown event type {d['type']!r}")
    fields = {k: v for k, v in d.items() if k not in ("type", "t")}
    if cls is DecodeChunk:
        return DecodeChunk.from_token_record(fields)
    return _from_plain(cls, fields)


def from_fields(cls: type, fields: dict[str, Any]) -> Any:
    """An event of type ``cls`` from keyword values (Python or numpy), typed and checked
    as a record's fields are (``RecordError`` names the field that does not fit)."""
    return _from_plain(cls, to_plain(fields))


def to_plain(value: Any) -> Any:
    """``value`` with arrays as nested lists and dataclasses as dicts."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_plain(cls: type, d: Any, where: str | None = None, lead: int = 0) -> Any:
    """The dataclass ``cls`` from plain fields ``d``: a missing field takes its default,
    a missing required one or a value of the wrong type raises ``RecordError``. Its arrays
    have ``lead`` more leading axes than their fields declare (summaries stacked per token)."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise RecordError(f"{where}: expected an object, got {type(d).__name__}")
    fields = dataclasses.fields(cls)
    missing = sorted(f.name for f in fields if _required(f) and f.name not in d)
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
    hints = _hints(cls)
    kwargs = {
        f.name: _convert(hints[f.name], d[f.name], f, f"{where}.{f.name}", lead)
        for f in fields
        if f.name in d
    }
    return cls(**kwargs)


def _convert(tp: Any, value: Any, f: dataclasses.Field | None, where: str, lead: int = 0) -> Any:
    """A plain ``value`` as the type ``tp`` of field ``f`` wants it (``lead``: see
    ``_from_plain``)."""
    if isinstance(tp, types.UnionType):  # X | None
        if value is None:
            return None
        (tp,) = (a for a in typing.get_args(tp) if a is not type(None))
    if value is None:
        raise RecordError(f"{where}: must not be null")
    dtype = None if f is None else f.metadata.get("dtype")
    if dtype is not None:
        return _array(value, dtype, ("n",) * lead + f.metadata["dims"], where)
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(origin):
        stacked = f is not None and f.metadata.get("stacked", False)
        return _from_plain(origin, value, where, lead + stacked)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is str and all(isinstance(v, str) for v in value):  # token texts, fast
                return tuple(value)
            return tuple(_convert(args[0], v, None, where) for v in value)
        if len(args) != len(value):
            raise RecordError(f"{where}: expected {len(args)} items")
        return tuple(_convert(a, v, None, where) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object")
        value_type = typing.get_args(tp)[1]
        return {str(k): _convert(value_type, v, None, where) for k, v in value.items()}
    return _scalar(origin, value, where)


def _array(value: Any, dtype: np.dtype, dims: tuple, where: str) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise RecordError(f"{where}: not an array of {dtype}") from None
    fixed = [(i, d) for i, d in enumerate(dims) if isinstance(d, int)]
    if out.ndim != len(dims) and not (out.size == 0 and out.ndim == 1):
        raise RecordError(f"{where}: expected shape {_dims_text(dims)}, got {list(out.shape)}")
    if out.ndim == len(dims) and any(out.shape[i] != d for i, d in fixed):
        raise RecordError(f"{where}: expected shape {_dims_text(dims)}, got {list(out.shape)}")
    return out


def _scalar(tp: type, value: Any, where: str) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if not ok.get(tp, True):
        raise RecordError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return float(value) if tp is float else value
