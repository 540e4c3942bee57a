"""Arbitrary unicode and every control byte in every string a model, tokenizer or
recording supplies: the rendered canvas holds no control character and keeps its width."""

import dataclasses
import unicodedata

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dash import state
from dash.layout import Dashboard
from dash.safe_text import width
from model import telemetry as tm
from tests.dash import events as ev

UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
CONTROLS = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])
hostile = st.text(
    st.one_of(st.characters(exclude_categories=()), st.sampled_from(list(CONTROLS))),
    max_size=40,
)


def _hostile_events(t: list[str]):
    run = ev.run_info(model_name=t[0], mode=t[1], sampling={t[2]: 1.0})
    prompt = tuple(t[3:9]) + ("<|image_pad|>",) * 16 + tuple(t[9:14])
    start = 6
    img = dataclasses.replace(ev.image(), span=(start, start + 16))
    prefill = dataclasses.replace(ev.prefill(tokens=prompt), images=(img,))
    decode = dataclasses.replace(
        ev.decode(0, t[14]),
        top_texts=(tuple(t[15:20]),),
        cache_lens=np.array([len(prompt) + 1], np.int32),
        attn_rows=np.full((1, len(prompt) + 1), 1.0 / (len(prompt) + 1), np.float32),
    )
    credit = dataclasses.replace(ev.credit(), tokens=tuple(t[20:24]))
    error = tm.ErrorEvent(t[24], t[25] + "\n" + t[26])
    return [run, prefill, decode, ev.train(), credit, ev.profile(), error]


def _check(canvas, size):
    assert (canvas.cols(), canvas.rows()) == size
    for line in canvas.text:
        row = line.decode("utf-8")
        assert width(row) == size[0], row
        bad = [c for c in row if unicodedata.category(c) in UNSAFE]
        assert not bad, (bad, row)


@settings(max_examples=40, deadline=None)
@given(st.lists(hostile, min_size=27, max_size=27), st.sampled_from([(160, 48), (100, 30)]))
def test_every_panel_is_safe_with_hostile_text(texts, size):
    events = _hostile_events(texts)
    meters = state.Meters(source=texts[0], colors=256)
    for ui in (state.UiState(), state.UiState(help=True), state.UiState(traceback=True)):
        d = Dashboard()
        d.show(ev.frame(events, meters, **dataclasses.asdict(ui)))
        _check(d.render(size), size)


@settings(max_examples=40, deadline=None)
@given(st.lists(hostile, min_size=27, max_size=27), st.integers(1, 90), st.integers(1, 20))
def test_each_panel_keeps_any_size(texts, cols, rows):
    d = Dashboard()
    d.show(ev.frame(_hostile_events(texts), layer=1, head=2))
    for panel in d.parts:
        _check(panel.render((cols, rows)), (cols, rows))
