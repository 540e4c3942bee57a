from dash import state
from dash.panels.kv_cache import KVCache, human_bytes
from model import telemetry as tm
from tests.dash import events as ev


def test_bytes_status_and_kv_head_read():
    meters = state.Meters(writing=True)
    frame = ev.frame(ev.episode_events(steps=2), meters, layer=1, head=5, window=3)
    text, runs = ev.render(KVCache(), (100, 7), frame)
    # 2 KV heads x 16 dims x 4 bytes x 2 (K, V) = 256 B per token per layer
    assert "= 256 B/token/layer" in text[0] and "⚡ WRITE" in text[0]
    rows = [r for r in text if r.startswith("│L")]
    assert len(rows) == 3
    assert "29/256 tok 7.2 KiB/64.0 KiB" in rows[0] and "⚡ WRITE" in rows[0]
    # head 5 of 8 reads KV head 1 (4 query heads per KV head), on the selected layer only
    assert "[1]" in rows[1] and "[1]" not in rows[0]
    assert ev.attr_of(runs, "[1]") == "kv_read"
    assert "allocated for 4 sample(s)" in "\n".join(text)


def test_cleared_active():
    text, _ = ev.render(KVCache(), (100, 7), ev.frame([ev.run_info()]))
    assert "CLEARED" in text[1]
    text, _ = ev.render(KVCache(), (100, 7), ev.frame(ev.episode_events(steps=1)))
    assert "ACTIVE" in text[1]
    cleared = ev.frame([*ev.episode_events(steps=1), tm.PhaseEvent("prefill", True, 0.0)])
    text, _ = ev.render(KVCache(), (100, 7), cleared)
    assert "CLEARED" in text[1]


def test_unknown_sizes_show_dashes():
    text, _ = ev.render(KVCache(), (100, 5), ev.frame([ev.run_info(head_dim=None)]))
    assert "= —/token/layer" in text[0]
    assert human_bytes(2048) == "2.0 KiB" and human_bytes(None) == "—"
