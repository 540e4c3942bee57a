from dash import state
from dash.panels.header import Header, sparkline
from tests.dash import events as ev


def test_metrics_and_meters():
    meters = state.Meters(elapsed_s=83, dropped=7, receive_rate=120.4)
    events = [*ev.episode_events(steps=3), ev.train(3, 0.625)]
    text, runs = ev.render(Header(), (160, 2), ev.frame(events, meters))
    top, bottom = text
    for part in (
        "tiny-qwen3vl",
        "step 3",
        "reward 0.625 ± 0.250",
        "KL 0.0125",
        "loss -0.0312",
        "1000.0 tok/s",
        "elapsed 01:23",
    ):
        assert part in top, part
    assert "dropped 7" in bottom and "received 120/s" in bottom
    assert all(attr.startswith("header") for row in runs for attr, _ in row)


def test_waiting_values_are_dashes_not_numbers():
    text, _ = ev.render(Header(), (160, 2), ev.frame([ev.run_info()]))
    assert "step — │ reward — │ KL — │ loss — │ — tok/s" in text[0]


def test_random_weights_and_status_notices():
    meters = state.Meters(status="failed", source="replay x.jsonl ×2")
    frame = ev.frame([ev.run_info(random_init=True)], meters, paused=True)
    text, runs = ev.render(Header(), (160, 2), frame)
    assert "random weights" in text[1] and "FAILED" in text[1] and "PAUSED" in text[1]
    assert "replay x.jsonl ×2" in text[1]
    assert ev.attr_of(runs, "random weights") == "header_warn"


def test_narrow_header_keeps_the_meters():
    meters = state.Meters(dropped=3, source="a very long source label " * 5)
    text, _ = ev.render(Header(), (100, 2), ev.frame([ev.run_info(random_init=True)], meters))
    assert "dropped 3" in text[1]


def test_sparkline_scales_between_min_and_max():
    assert sparkline((0.0, 0.5, 1.0), 10) == "▁▅█"
    assert sparkline((), 10) == ""


def test_narrow_header_keeps_every_metric():
    meters = state.Meters(elapsed_s=83)
    events = [*ev.episode_events(steps=3), ev.train(3, 0.625)]
    text, _ = ev.render(Header(), (100, 2), ev.frame(events, meters))
    assert "QWEN3-VL DASH" not in text[0]
    assert "tok/s" in text[0] and "elapsed 01:23" in text[0]
