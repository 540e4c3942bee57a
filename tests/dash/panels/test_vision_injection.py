from dash.panels.vision_injection import VisionInjection
from tests.dash import events as ev


def test_span_grids_deepstack_and_norms():
    text, _ = ev.render(VisionInjection(), (90, 8), ev.frame(ev.episode_events(steps=0)))
    screen = "\n".join(text)
    assert "VISION INJECTION @ Token[4]" in text[0]
    assert "tokens [4, 20)" in screen
    assert "grid t×h×w 1×8×8 → merged (2×2) 1×4×4" in screen
    assert "vision tokens 16 of 27 prompt tokens" in screen
    assert "DeepStack → layers 0, 1, 2" in screen
    assert "12.500" in screen and "0.750" in screen


def test_text_only_and_waiting():
    text, _ = ev.render(VisionInjection(), (90, 6), ev.frame([ev.run_info()]))
    assert "waiting for the prompt" in text[1]
    events = [ev.run_info(), ev.prefill(tokens=("a", "b"), with_image=False)]
    text, _ = ev.render(VisionInjection(), (90, 6), ev.frame(events))
    assert "text-only prompt" in text[1]
