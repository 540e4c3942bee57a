import pytest

from dash import state
from dash.layout import MIN_SIZE, Dashboard
from dash.safe_text import width
from model import telemetry as tm
from tests.dash import events as ev

TITLES = (
    "DECODE LIVE",
    "COMPUTATION FLOW",
    "ATTENTION FLOW",
    "KV CACHE MEMORY",
    "HEAD DETAIL",
    "VISION INJECTION",
    "mRoPE",
    "TOKEN CREDIT",
    "GROUP",
    "TRAIN",
)
FULL = [*ev.episode_events(steps=4), ev.train(), ev.group(), ev.credit(), ev.profile()]


def _screen(frame, size):
    d = Dashboard()
    d.show(frame)
    canvas = d.render(size)
    rows = [line.decode("utf-8") for line in canvas.text]
    assert (canvas.cols(), canvas.rows()) == size
    assert all(width(r) == size[0] for r in rows)
    return rows


@pytest.mark.parametrize("size", [(160, 48), (120, 40), MIN_SIZE])
def test_every_panel_fits(size):
    screen = "\n".join(_screen(ev.frame(FULL, layer=2, head=3), size))
    for title in TITLES:
        assert title in screen, (size, title)
    assert "L2 H3" in screen and "cannot draw" not in screen


def test_attention_window_has_six_layers_at_full_size():
    rows = _screen(ev.frame(FULL), (160, 48))
    assert sum(1 for r in rows if r.startswith("│L") and "kv" not in r[:40]) >= 6


def test_too_small_asks_to_enlarge():
    rows = _screen(ev.frame(FULL), (80, 24))
    assert any("enlarge the terminal (need 100×30, have 80×24)" in r for r in rows)


def test_help_overlay_and_error_panel():
    screen = "\n".join(_screen(ev.frame(FULL, help=True), (160, 48)))
    assert "KEYS (? or Esc closes)" in screen and "pause / resume the rollout" in screen
    failed = [*FULL, tm.ErrorEvent("RuntimeError: device lost", "Traceback...\nRuntimeError")]
    screen = "\n".join(_screen(ev.frame(failed), (160, 48)))
    assert "ROLLOUT FAILED" in screen and "RuntimeError: device lost" in screen
    assert "DECODE LIVE" in screen  # the rest stays
    screen = "\n".join(_screen(ev.frame(failed, traceback=True), (160, 48)))
    assert "TRACEBACK" in screen


def test_footer_hints_on_the_last_row():
    rows = _screen(ev.frame(), (160, 48))
    assert "? help" in rows[-1] and "p pause" in rows[-1] and "↑↓ kj layer" in rows[-1]


def test_frame_renders_within_budget():
    import time

    d = Dashboard()
    frame = ev.frame(FULL, layer=2, head=3)
    times = []
    for i in range(20):
        d.show(state.Frame(frame.view, frame.ui, state.Meters(flash_on=bool(i % 2))))
        t0 = time.perf_counter()
        d.render((160, 48))
        times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < 0.05  # the 20 FPS frame budget


def test_an_inference_run_has_no_group_or_train_panels():
    events = [ev.run_info(mode="inference", batch_size=1), *ev.episode_events(steps=4)[1:]]
    screen = "\n".join(_screen(ev.frame(events), (160, 48)))
    assert "DECODE LIVE" in screen and "GROUP" not in screen and "TRAIN " not in screen
