"""The view model and the pure functions that change it.

``View`` is what the telemetry said, folded event by event with ``reduce(view, event)``
(``reduce_all`` folds a batch of events).
``UiState`` is what the user chose (selected sample, layer and head, layer window,
metric, overlays, pause), changed with ``apply(ui, command, view)``.
``Meters`` are the app's own measurements for one frame (elapsed time, channel counts).
Panels read a ``Frame`` of the three and nothing else; all of it is immutable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from model import telemetry as tm

GENERATED_KEPT = 256  # generated token texts kept for the head detail's context strip
STEP_TIMES_KEPT = 32  # decode step times averaged for tokens/s
REWARDS_KEPT = 64  # reward means kept for the header's trend
PROMPT_CHARS = 2000  # longest input line
COMPILE = "compile"  # the phase of XLA compiling a program (model.telemetry.PhaseEvent)
TRAIN_KEPT = 256  # updates kept for the training metrics' sparklines


@dataclasses.dataclass(frozen=True)
class PhaseTime:
    """One phase of the loop: running now, and how long it took when it last ended."""

    active: bool = False
    last_ms: float | None = None
    done: int | None = None  # progress of the running phase: done of total items
    total: int | None = None


@dataclasses.dataclass(frozen=True)
class View:
    """Everything the telemetry has said so far, as the panels need it."""

    run: tm.RunInfo | None = None
    prefill: tm.PrefillEvent | None = None  # prompt of the current episode
    decode: tm.DecodeChunk | None = None  # latest sampled tokens: the newest is the last
    generated: tuple[tuple[int, str], ...] = ()  # (step, text) of this episode, last 256
    step_ms: tuple[float, ...] = ()  # wall time of the last decode steps
    decode_count: int = 0  # decode events folded; every one is a KV cache write
    phases: Mapping[str, PhaseTime] = dataclasses.field(default_factory=dict)
    active_phase: str | None = None
    profile: tm.StepProfile | None = None
    train: tm.TrainEvent | None = None
    reward_history: tuple[float, ...] = ()
    train_history: tuple[tm.TrainEvent, ...] = ()  # the last TRAIN_KEPT updates, oldest first
    group: tm.GroupEvent | None = None  # the last scored group of the watched prompt
    credits: Mapping[int, tm.CreditEvent] = dataclasses.field(default_factory=dict)  # by sample
    error: tm.ErrorEvent | None = None
    notice: str | None = None  # the rollout's last message, until the next prompt

    @property
    def stats(self) -> tm.HeadStats | None:
        """Per-head summaries ``[L, H]`` of the latest query position (decode, else
        prefill)."""
        if self.decode is not None:
            stats = self.decode.stats
            return None if stats is None else stats.step(-1)
        return None if self.prefill is None else self.prefill.stats

    @property
    def step_time_ms(self) -> float | None:
        """The median of the last measured decode step times (steps that compiled have
        none)."""
        times = sorted(t for t in self.step_ms if finite(t) and t > 0)
        return times[len(times) // 2] if times else None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode throughput: batch rows / median step time."""
        step_ms = self.step_time_ms
        if step_ms is None:
            return None
        return (self.run.batch_size if self.run else 1) * 1000.0 / step_ms

    @property
    def compiling(self) -> bool:
        phase = self.phases.get(COMPILE)
        return phase is not None and phase.active


def _fold_decode(view: View, chunk: tm.DecodeChunk) -> View:
    """``view`` after a chunk of tokens: their ``(step, text)`` (a stream of an episode and
    sample, steps ascending: a step already seen drops it and what followed), step times,
    and the chunk as the latest decode."""
    same_stream = view.decode is not None and (view.decode.episode, view.decode.sample) == (
        chunk.episode,
        chunk.sample,
    )
    generated = view.generated if same_stream else ()
    if generated and generated[-1][0] >= chunk.first:
        generated = tuple((s, t) for s, t in generated if s < chunk.first)
    texts = zip(range(chunk.first, chunk.first + len(chunk)), chunk.token_texts, strict=True)
    generated = (*generated, *texts)
    prefill = view.prefill
    if prefill is not None and prefill.episode != chunk.episode:
        prefill = None  # the prompt shown belongs to another episode
    times = (chunk.elapsed_ms,) * min(len(chunk), STEP_TIMES_KEPT)
    return dataclasses.replace(
        view,
        decode=chunk,
        prefill=prefill,
        generated=generated[-GENERATED_KEPT:],
        step_ms=(*view.step_ms, *times)[-STEP_TIMES_KEPT:],
        decode_count=view.decode_count + len(chunk),
    )


def _fold_phase(view: View, e: tm.PhaseEvent) -> View:
    before = view.phases.get(e.phase, PhaseTime())
    if e.active:
        phase = PhaseTime(True, before.last_ms, e.done, e.total)
    else:
        phase = PhaseTime(False, e.elapsed_ms)
    phases = {**view.phases, e.phase: phase}
    if e.phase == COMPILE:  # compiling happens inside the loop's phases, not between them
        return dataclasses.replace(view, phases=phases)
    ended_active = not e.active and view.active_phase == e.phase
    active = e.phase if e.active else (None if ended_active else view.active_phase)
    view = dataclasses.replace(view, phases=phases, active_phase=active)
    if e.active and e.phase == "prefill":
        # a new episode starts: the previous cache and tokens are gone
        view = dataclasses.replace(view, prefill=None, decode=None, generated=())
    return view


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A run's state as the events that give it, replacing the view: what an attached viewer
    receives when it (re)joins a producer (``model.publish.LastValues``)."""

    events: tuple[tm.Event, ...]


def reduce(view: View, event: tm.Event | Snapshot) -> View:
    """The view after ``event``. Pure: ``view`` is not changed."""
    match event:
        case tm.RunInfo():
            # the same run announcing itself again (a new episode) keeps what was seen
            return view if view.run == event else View(run=event)
        case tm.PrefillEvent():
            return dataclasses.replace(view, prefill=event, decode=None, generated=(), notice=None)
        case tm.DecodeChunk():
            return _fold_decode(view, event)
        case tm.PhaseEvent():
            return _fold_phase(view, event)
        case tm.StepProfile():
            return dataclasses.replace(view, profile=event)
        case tm.TrainEvent():
            history = (*view.reward_history, event.reward_mean)[-REWARDS_KEPT:]
            trains = (*view.train_history, event)[-TRAIN_KEPT:]
            return dataclasses.replace(
                view, train=event, reward_history=history, train_history=trains
            )
        case tm.GroupEvent():
            return dataclasses.replace(view, group=event)
        case tm.CreditEvent():
            kept = {s: c for s, c in view.credits.items() if c.step == event.step}
            return dataclasses.replace(view, credits={**kept, event.sample: event})
        case tm.NoticeEvent():
            return dataclasses.replace(view, notice=event.message)
        case tm.ErrorEvent():
            return dataclasses.replace(view, error=event)
        case Snapshot():
            return reduce_all(View(), event.events)
    return view


def reduce_all(view: View, events: Iterable[tm.Event]) -> View:
    """``reduce`` of ``events`` in order."""
    for event in events:
        view = reduce(view, event)
    return view


# --- what the user chose ----------------------------------------------------------


TOKEN_METRICS = ("logprob", "entropy")  # per-token values of a group's answers


@dataclasses.dataclass(frozen=True)
class UiState:
    sample: int = 0  # batch row (GRPO group member) to watch
    layer: int = 0  # selected decoder layer, 0-based
    head: int = 0  # selected query head, 0-based
    layer_top: int = 0  # first layer of the attention / KV window
    window: int = 6  # layers in the window
    metric: int = 0  # index into HeadStats.METRICS
    token_metric: int = 0  # index into TOKEN_METRICS: what colours the group's tokens
    paused: bool = False
    help: bool = False
    traceback: bool = False
    prompt: str | None = None  # the input line for a new prompt, None while closed
    hint: str | None = None  # why the last key did nothing, until the next key

    @property
    def metric_name(self) -> str:
        return tm.HeadStats.METRICS[self.metric]

    @property
    def token_metric_name(self) -> str:
        return TOKEN_METRICS[self.token_metric]

    @property
    def selection(self) -> tuple[int, int, int]:
        return (self.sample, self.layer, self.head)


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def _sizes(view: View) -> tuple[int, int, int]:
    """(layers, heads, samples) of the run; 1 each before RunInfo arrives."""
    run = view.run
    if run is None:
        return 1, 1, 1
    return max(1, run.num_layers), max(1, run.num_heads), max(1, run.batch_size)


def _with_layer(ui: UiState, layer: int, layers: int) -> UiState:
    window = min(ui.window, layers)
    top = _clamp(ui.layer_top, layer - window + 1, layer)
    return dataclasses.replace(ui, layer=layer, layer_top=_clamp(top, 0, layers - window))


def apply(ui: UiState, command: str, view: View) -> UiState:
    """The UI state after a key command (see ``dash.keymap``). Pure."""
    layers, heads, samples = _sizes(view)
    match command:
        case "layer_up" | "layer_down":
            step = -1 if command == "layer_up" else 1
            return _with_layer(ui, _clamp(ui.layer + step, 0, layers - 1), layers)
        case "head_left" | "head_right":
            step = -1 if command == "head_left" else 1
            return dataclasses.replace(ui, head=_clamp(ui.head + step, 0, heads - 1))
        case "window_up" | "window_down":
            window = min(ui.window, layers)
            shift = -window if command == "window_up" else window
            top = _clamp(ui.layer_top + shift, 0, layers - window)
            layer = _clamp(ui.layer + top - ui.layer_top, 0, layers - 1)
            return _with_layer(dataclasses.replace(ui, layer_top=top), layer, layers)
        case "metric":
            return dataclasses.replace(ui, metric=(ui.metric + 1) % len(tm.HeadStats.METRICS))
        case "token_metric":
            return dataclasses.replace(ui, token_metric=(ui.token_metric + 1) % len(TOKEN_METRICS))
        case "sample_prev" | "sample_next":
            step = -1 if command == "sample_prev" else 1
            return dataclasses.replace(ui, sample=_clamp(ui.sample + step, 0, samples - 1))
        case "pause":
            return dataclasses.replace(ui, paused=not ui.paused)
        case "help":
            return dataclasses.replace(ui, help=not ui.help, traceback=False)
        case "traceback":
            shown = not ui.traceback and view.error is not None
            return dataclasses.replace(ui, traceback=shown, help=False)
        case "close":
            return dataclasses.replace(ui, help=False, traceback=False)
        case "prompt":
            if view.run is None or view.run.mode != "inference":
                return dataclasses.replace(ui, hint="new prompts are for --model runs")
            if view.active_phase is not None and not ui.paused:
                return dataclasses.replace(ui, hint="i: pause first (p) or let the answer end")
            return dataclasses.replace(ui, prompt="", help=False, traceback=False)
    return ui


def edit_prompt(ui: UiState, key: str) -> tuple[UiState, str | None]:
    """The UI state after ``key`` on the open input line, and the prompt to send (on
    Enter, else None): a printable character is typed, backspace deletes, Esc closes."""
    text = ui.prompt or ""
    match key:
        case "enter":
            return dataclasses.replace(ui, prompt=None, paused=False), text
        case "esc":
            return dataclasses.replace(ui, prompt=None), None
        case "backspace":
            return dataclasses.replace(ui, prompt=text[:-1]), None
    if len(key) == 1 and key.isprintable() and len(text) < PROMPT_CHARS:
        return dataclasses.replace(ui, prompt=text + key), None
    return ui, None


def follow(ui: UiState, selection: tuple[int, int, int], paused: bool, view: View) -> UiState:
    """The UI state showing the rollout's ``selection`` (sample, layer, head) and pause, as
    its control holds them (an attached viewer shows the producer's), within the run's
    sizes. Pure."""
    if ui.selection == tuple(selection) and ui.paused == paused:
        return ui
    layers, heads, samples = _sizes(view)
    sample, layer, head = selection
    sample, head = _clamp(sample, 0, samples - 1), _clamp(head, 0, heads - 1)
    ui = dataclasses.replace(ui, sample=sample, head=head, paused=paused)
    return _with_layer(ui, _clamp(layer, 0, layers - 1), layers)


def visible_layers(ui: UiState, num_layers: int, rows: int) -> range:
    """The layers a window panel with room for ``rows`` layer rows shows: the user's
    window, shrunk to fit, always containing the selected layer."""
    count = max(0, min(ui.window, num_layers, rows))
    if count == 0:
        return range(0)
    top = _clamp(ui.layer_top, ui.layer - count + 1, ui.layer)
    top = _clamp(top, 0, num_layers - count)
    return range(top, top + count)


# --- one frame ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Meters:
    """The app's own measurements at the time of a frame."""

    elapsed_s: float = 0.0
    sent: int = 0
    received: int = 0
    dropped: int = 0
    receive_rate: float = 0.0  # events per second over the last second
    flash_on: bool = True  # the flash indicators' on half-period
    writing: bool = False  # a KV cache write arrived since the previous frame
    status: str = "running"  # running | finished | failed | stopping
    source: str = ""  # e.g. "replay run.jsonl x2", with skipped record count
    replay: bool = False  # recorded telemetry: attention rows exist only for recorded heads
    colors: int = 256  # colour depth of the screen
    # an attached viewer (python -m dash --attach): its link to the producer
    link: str = ""  # who this viewer is and who controls, or why nothing new arrives
    link_ok: bool = True  # False: disconnected, refused, or another protocol version
    socket_lost: int = 0  # messages the producer sent that never arrived (sequence gaps)
    bad_messages: int = 0  # messages that did not decode, dropped


@dataclasses.dataclass(frozen=True)
class Frame:
    view: View
    ui: UiState
    meters: Meters


def finite(x: float | None) -> bool:
    """A number that arrived and can be shown."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))
