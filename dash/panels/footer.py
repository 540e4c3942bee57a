"""The footer: key hints generated from the key registry."""

from __future__ import annotations

from dash import keymap
from dash.panels.base import Row


def footer_row(cols: int) -> Row:
    """The hints that fit in ``cols``: when narrow, hints just before ``help`` and
    ``quit`` are left out first, so those two always show."""
    hints = keymap.footer_hints()
    while len(hints) > 2 and sum(len(k) + len(h) + 3 for k, h in hints) > cols:
        del hints[-3]
    row: Row = []
    for keys, hint in hints:
        row += [("footer_key", f" {keys}"), ("footer", f" {hint} ")]
    return row
