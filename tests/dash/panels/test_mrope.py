from dash.panels.mrope import MRope
from tests.dash import events as ev


def test_current_position_and_image_ranges():
    text, _ = ev.render(MRope(), (90, 7), ev.frame(ev.episode_events(steps=3)))
    screen = "\n".join(text)
    assert "current token Tok[2]: (t, h, w) = (32, 32, 32)" in screen
    assert "image 0 tokens [4, 20): t 4–4 · h 4–7 · w 4–7" in screen
    assert "11 text tokens" in screen
    assert "decoding continues at t = h = w = 15" in screen


def test_waiting_without_prompt():
    text, _ = ev.render(MRope(), (90, 7), ev.frame([ev.run_info()]))
    assert "waiting for the prompt positions" in "\n".join(text)
