import numpy as np

from dash import theme
from dash.panels.attention_flow import AttentionFlow, cell_cols, normalised
from tests.dash import events as ev


def test_grid_window_groups_and_selected_cell():
    frame = ev.frame(ev.episode_events(steps=1), layer=5, head=6, window=3, layer_top=3)
    text, runs = ev.render(AttentionFlow(), (70, 9), frame)
    assert "8 layers × 8 heads" in text[0] and "max weight" in text[0]
    assert "kv0" in text[1] and "kv1" in text[1]
    layer_rows = [r for r in text if r.startswith("│L")]
    assert [r[1:4] for r in layer_rows] == ["L3 ", "L4 ", "L5 "]
    # 8 heads in 2 KV groups of 4, cells 3 wide: a gap between the groups
    cells = layer_rows[0][6 : 6 + 4 * 3 + 1 + 4 * 3]
    assert cells[12] == " " and set(cells[:12]) <= set(theme.RAMP)
    # the selected cell (L5, H6) is highlighted, the others carry heat colours
    selected = [chunk for row in runs for attr, chunk in row if attr == "selected"]
    assert len(selected) == 1 and len(selected[0]) == 3
    expected = ev.stats(seed=0).max_weight[5, 6]
    legend = next(r for r in text if "L5 H6 =" in r)
    assert f"L5 H6 = {expected:.3f}" in legend and "kv head 1" in legend
    heat = {attr for row in runs for attr, _ in row if str(attr).startswith("heat")}
    assert heat


def test_metric_switch_changes_values():
    events = ev.episode_events(steps=1)
    base, _ = ev.render(AttentionFlow(), (70, 9), ev.frame(events, layer=2, head=1, window=3))
    ent, _ = ev.render(
        AttentionFlow(), (70, 9), ev.frame(events, layer=2, head=1, window=3, metric=1)
    )
    assert "entropy" in ent[0]
    value = ev.stats(seed=0).entropy[2, 1]
    legend = next(r for r in ent if "L2 H1 =" in r)
    assert f"L2 H1 = {value:.3f}" in legend and legend not in base


def test_entropy_is_normalised_by_its_maximum():
    stats = ev.stats()
    n = normalised(stats, "entropy", context=np.e**2)
    np.testing.assert_allclose(n, stats.entropy / 2.0, rtol=1e-6)


def test_cells_shrink_to_fit():
    assert cell_cols(16, 4, 80) == 3 and cell_cols(32, 8, 80) == 2 and cell_cols(64, 8, 80) == 1


def test_waiting_without_matching_stats():
    text, _ = ev.render(AttentionFlow(), (70, 9), ev.frame([ev.run_info(num_layers=3)]))
    assert "waiting for per-head attention telemetry" in text[1]
    events = [ev.run_info(num_layers=3), ev.prefill()]  # stats are [8, 8], run says 3 layers
    text, _ = ev.render(AttentionFlow(), (70, 9), ev.frame(events))
    assert "waiting" in text[1]
