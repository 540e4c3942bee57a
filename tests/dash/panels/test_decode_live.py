from dash.panels.decode_live import DecodeLive
from dash.safe_text import width
from model import telemetry as tm
from tests.dash import events as ev


def test_token_line_alternatives_cache_and_sampling():
    events = [*ev.episode_events(steps=2), tm.PhaseEvent("decode", True, 0.0)]
    text, runs = ev.render(DecodeLive(), (80, 14), ev.frame(events))
    screen = "\n".join(text)
    assert 'Tok[1]: "t1" p=0.875' in text[1]
    assert "id 101" in text[1]
    assert "Cache: 29/256" in text[0]
    assert "temperature 1 · top_k 20 · top_p 0.95 · max_new_tokens 32" in screen
    assert ' 2. "red"' in screen and "0.050" in screen
    assert len([row for row in text if '. "' in row]) == 5
    assert "text: t0t1" in screen
    assert ev.attr_of(runs, '"t1"') == "token"


def test_sampling_indicator_flashes_while_decoding():
    events = ev.episode_events(steps=1)
    on, _ = ev.render(DecodeLive(), (80, 10), ev.frame(events))
    assert "⚡ SAMPLING" in on[0]
    from dash import state

    off, _ = ev.render(DecodeLive(), (80, 10), ev.frame(events, state.Meters(flash_on=False)))
    assert "⚡ SAMPLING" not in off[0] and width(off[0]) == width(on[0]) == 80


def test_waiting_before_the_first_token_and_dropped_tokens_show_as_dots():
    text, _ = ev.render(DecodeLive(), (80, 6), ev.frame([ev.run_info()]))
    assert "waiting for the first decode step" in text[1] and "Cache: —/—" in text[0]
    events = [*ev.episode_events(steps=1), ev.decode(3, "x")]
    text, _ = ev.render(DecodeLive(), (80, 12), ev.frame(events))
    assert "text: t0··x" in "\n".join(text)


def test_hostile_token_text_is_escaped():
    events = [*ev.episode_events(steps=0), ev.decode(0, "\x1b[2J\x9b\u202e")]
    text, _ = ev.render(DecodeLive(), (80, 10), ev.frame(events))
    assert 'Tok[0]: "␛[2J\\x9b\\u202e"' in text[1]
