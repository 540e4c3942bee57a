import urwid

from dash import state
from dash.panels.head_detail import HeadDetail, image_grid, pool
from tests.dash import events as ev


def _events(layer=2, head=3):
    return [*ev.episode_events(steps=0), ev.decode(0, "blue", layer=layer, head=head)]


def test_title_is_the_selected_head_and_the_image_heatmap_is_hot_at_the_right_cell():
    frame = ev.frame(_events(), state.Meters(colors=1), layer=2, head=3)
    text, runs = ev.render(HeadDetail(), (80, 24), frame)
    assert "HEAD DETAIL L2 H3 · kv head 0" in text[0]
    grid_rows = [r for r in text if r.startswith("│ ") and set(r[2:10]) <= set("░▒▓█")]
    assert len(grid_rows) >= 4
    # the row's image mass sits on merged cell (1, 2): one hot cell, row 1, column 2
    scale = len(grid_rows) // 4
    hot = [i for i, r in enumerate(grid_rows) if "█" in r]
    assert hot == list(range(scale, 2 * scale))
    col = grid_rows[scale].index("█")
    assert (col - 2) // (2 * scale) == 2
    assert ev.attr_of(runs, "█" * 2) == "heat7"
    assert "Σ weight 0.500" in "\n".join(text)
    assert "▀" not in "\n".join(text)  # no thumbnail without colours


def test_thumbnail_in_half_blocks_with_pixel_colours():
    frame = ev.frame(_events(), state.Meters(colors=256), layer=2, head=3)
    _, runs = ev.render(HeadDetail(), (80, 24), frame)
    pixels = [attr for row in runs for attr, chunk in row if "▀" in chunk]
    assert pixels and all(isinstance(a, urwid.AttrSpec) for a in pixels)


def test_context_strip_shows_token_texts_and_image_chunk():
    text, _ = ev.render(HeadDetail(), (80, 24), ev.frame(_events(), layer=2, head=3))
    screen = "\n".join(text)
    assert "[img0 Σ0.50]" in screen and "circle" in screen and "blue" in screen
    assert "28 positions" in screen


def test_row_of_another_head_is_labelled():
    text, runs = ev.render(HeadDetail(), (80, 24), ev.frame(_events(0, 0), layer=2, head=3))
    assert "showing L0 H0" in text[1]
    assert ev.attr_of(runs, "showing L0 H0") == "warn"


def test_replayed_row_of_another_head_says_so():
    frame = ev.frame(_events(0, 0), state.Meters(replay=True), layer=2, head=3)
    text, _ = ev.render(HeadDetail(), (80, 24), frame)
    assert "showing L0 H0: the row the recording holds" in text[1]


def test_waiting_before_a_decode_step():
    text, _ = ev.render(HeadDetail(), (80, 10), ev.frame(ev.episode_events(steps=0)))
    assert "waiting for the first decode step" in text[1]


def test_image_grid_and_pool():
    import numpy as np

    row = ev.decode(0).attn_row()
    grid = image_grid(row, ev.image())
    assert grid.shape == (4, 4) and grid[1, 2] == 0.5
    np.testing.assert_allclose(pool(grid, 2), [[0, 0.5], [0, 0]], atol=1e-7)
    assert image_grid(row[:10], ev.image()) is None  # span outside the row


def test_target_cells_are_outlined_with_their_share_of_the_image_weight():
    import dataclasses

    import numpy as np

    from dash.panels.head_detail import target_mask

    prefill = ev.prefill()
    image = dataclasses.replace(prefill.images[0], target_cells=np.array([[1, 2], [3, 3]]))
    events = [ev.run_info(), dataclasses.replace(prefill, images=(image,)), ev.decode(0)]
    frame = ev.frame(events, state.Meters(colors=1), layer=0, head=0)
    text, _ = ev.render(HeadDetail(), (80, 24), frame)
    screen = "\n".join(text)
    # the row puts 0.5 of its 0.5 image weight on cell (1, 2): a share of 1.00
    assert "image 0 · merged 4×4 · Σ weight 0.500 · [ ] asked shapes 1.00" in screen
    grid_rows = [r for r in text if r.startswith("│ ") and set(r[2:6]) <= set("░▒▓█[]")]
    scale = len(grid_rows) // 4
    cell = 2 * scale
    hot = grid_rows[scale][2 + 2 * cell : 2 + 3 * cell]  # row 1, column 2: hot and outlined
    assert hot[0] == "[" and hot[-1] == "]" and set(hot[1:-1]) <= {"█"}
    cold = grid_rows[3 * scale][2 + 3 * cell : 2 + 4 * cell]  # row 3, column 3: cold, outlined
    assert cold[0] == "[" and set(cold[1:-1]) <= {"░"}
    assert "[" not in grid_rows[0]
    mask = target_mask(image, (4, 4))
    assert mask.sum() == 2 and mask[1, 2] and mask[3, 3]
    assert target_mask(dataclasses.replace(image, target_cells=np.array([[4, 0]])), (4, 4)) is None
