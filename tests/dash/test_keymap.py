from dash import keymap
from dash.state import UiState, View, apply
from tests.dash.events import run_info


def test_required_bindings():
    expected = {
        "up": "layer_up",
        "k": "layer_up",
        "down": "layer_down",
        "j": "layer_down",
        "left": "head_left",
        "h": "head_left",
        "right": "head_right",
        "l": "head_right",
        "page up": "window_up",
        "page down": "window_down",
        "m": "metric",
        "e": "token_metric",
        "[": "sample_prev",
        "]": "sample_next",
        "p": "pause",
        "s": "step",
        "?": "help",
        "q": "quit",
        "ctrl c": "quit",
    }
    assert {k: keymap.command_for(k) for k in expected} == expected
    assert keymap.command_for("x") is None


def test_each_key_is_bound_once():
    keys = [k for b in keymap.BINDINGS for k in b.keys]
    assert len(keys) == len(set(keys))


def test_help_lists_every_binding_from_the_registry():
    rows = keymap.help_lines()
    assert len(rows) == len(keymap.BINDINGS)
    for (category, keys, text), b in zip(rows, keymap.BINDINGS, strict=True):
        assert (category, keys, text) == (b.category, b.label, b.help)


def test_footer_hints_come_from_the_registry_and_merge_pairs():
    hints = keymap.footer_hints()
    assert ("↑↓ kj", "layer") in hints and ("←→ hl", "head") in hints
    assert ("PgUp/PgDn", "window") in hints
    hinted = {b.hint for b in keymap.BINDINGS if b.hint}
    assert {h for _, h in hints} == hinted


def test_view_commands_change_the_ui_state():
    # every command that is not handled by the app itself changes some UI state
    app_commands = {"quit", "step", "take_control", "close"}
    view_commands = keymap.COMMANDS - app_commands
    start = UiState(layer=2, head=1, layer_top=1, window=3, sample=1)
    view = View(run=run_info())
    for command in view_commands:
        if command == "traceback":
            continue  # needs an error to show, tested in test_state
        assert apply(start, command, view) != start, command


def test_docs_list_every_binding():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for category, keys, text in keymap.help_lines():
        assert f"| {category} | `{keys}` | {text} |" in doc
