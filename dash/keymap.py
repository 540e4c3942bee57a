"""The one registry of key bindings: key handling, the ``?`` help screen and the footer
hints are all generated from ``BINDINGS``.

Each binding names a command; ``dash.state.apply`` carries out the commands that only
change what is shown, ``dash.app`` the ones that reach the rollout (pause, step, take
control, quit).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Binding:
    command: str
    keys: tuple[str, ...]  # urwid key names
    label: str  # the keys as shown to people
    help: str
    category: str
    hint: str = ""  # short footer hint; empty: not in the footer


BINDINGS: tuple[Binding, ...] = (
    Binding("layer_up", ("up", "k"), "↑ k", "previous layer", "Navigate", "layer"),
    Binding("layer_down", ("down", "j"), "↓ j", "next layer", "Navigate", "layer"),
    Binding("head_left", ("left", "h"), "← h", "previous query head", "Navigate", "head"),
    Binding("head_right", ("right", "l"), "→ l", "next query head", "Navigate", "head"),
    Binding("window_up", ("page up",), "PgUp", "scroll the layer window up", "Navigate", "window"),
    Binding(
        "window_down", ("page down",), "PgDn", "scroll the layer window down", "Navigate", "window"
    ),
    Binding(
        "metric",
        ("m",),
        "m",
        "attention metric: max weight / entropy / vision mass / sink mass",
        "View",
        "metric",
    ),
    Binding("sample_prev", ("[",), "[", "previous sample of the batch / group", "View", "sample"),
    Binding("sample_next", ("]",), "]", "next sample of the batch / group", "View", "sample"),
    Binding(
        "token_metric",
        ("e",),
        "e",
        "colour the group's answer tokens by log-prob / entropy",
        "View",
    ),
    Binding("traceback", ("t",), "t", "show / hide the rollout's traceback", "View"),
    Binding("pause", ("p",), "p", "pause / resume the rollout", "Rollout", "pause"),
    Binding(
        "step",
        ("s",),
        "s",
        "paused: one decode step; after the watched answer, the rest of the GRPO step",
        "Rollout",
        "step",
    ),
    Binding(
        "prompt",
        ("i",),
        "i",
        "a new prompt, optionally @path/to/image (--model: after the answer or while paused)",
        "Rollout",
        "ask",
    ),
    Binding("take_control", ("c",), "c", "take control of the producer (--attach)", "Rollout"),
    Binding("help", ("?",), "?", "this help", "App", "help"),
    Binding("close", ("esc",), "Esc", "close help / traceback", "App"),
    Binding(
        "quit",
        ("q", "ctrl c"),
        "q Ctrl-C",
        "quit (stops the rollout; --attach: detaches, the producer runs on)",
        "App",
        "quit",
    ),
)

_BY_KEY: dict[str, str] = {key: b.command for b in BINDINGS for key in b.keys}
COMMANDS: frozenset[str] = frozenset(b.command for b in BINDINGS)


def command_for(key: str) -> str | None:
    """The command bound to an urwid key name, or None."""
    return _BY_KEY.get(key)


def help_lines() -> list[tuple[str, str, str]]:
    """(category, keys, help) rows for the help screen, in registry order."""
    return [(b.category, b.label, b.help) for b in BINDINGS]


def footer_hints() -> list[tuple[str, str]]:
    """(keys, hint) pairs for the footer: bindings in a row that share a hint (layer
    up / down) are shown once with both keys."""
    hints: list[tuple[str, str]] = []
    for b in BINDINGS:
        if not b.hint:
            continue
        if hints and hints[-1][1] == b.hint:
            hints[-1] = (_pair_label(hints[-1][0], b.label), b.hint)
        else:
            hints.append((b.label, b.hint))
    return hints


def _pair_label(first: str, second: str) -> str:
    """'↑ k' + '↓ j' -> '↑↓ kj'; 'PgUp' + 'PgDn' -> 'PgUp/PgDn'."""
    a, b = first.split(), second.split()
    if len(a) == len(b) and all(len(x) == 1 for x in a + b):
        return " ".join(x + y for x, y in zip(a, b, strict=True))
    return f"{first}/{second}"
