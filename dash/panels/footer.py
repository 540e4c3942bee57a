"""The footer: key hints generated from the key registry; while the input line for a new
prompt is open, that line instead."""

from __future__ import annotations

from dash import keymap, state
from dash.panels.base import Row, fit
from dash.safe_text import safe

PROMPT_HELP = "  Enter asks · Esc cancels · @path/to/image shows a new image"


def footer_row(cols: int, ui: state.UiState | None = None) -> Row:
    """The input line when open, else the hints that fit in ``cols``: when narrow, hints
    just before ``help`` and ``quit`` are left out first, so those two always show; a
    hint of why the last key did nothing comes first."""
    if ui is not None and ui.prompt is not None:
        text = safe(ui.prompt)
        room = max(8, cols - len(PROMPT_HELP) - 12)
        shown = text if len(text) <= room else "…" + text[-(room - 1) :]
        return fit(
            [("footer_key", " prompt ▸ "), ("footer", shown + "▏"), ("footer", PROMPT_HELP)],
            cols,
            pad_attr="footer",
        )
    hints = keymap.footer_hints()
    lead: Row = []
    if ui is not None and ui.hint:
        lead = [("footer_key", f" {safe(ui.hint)} ")]
    width = sum(len(t) for _, t in lead)
    while len(hints) > 2 and width + sum(len(k) + len(h) + 3 for k, h in hints) > cols:
        del hints[-3]
    row: Row = list(lead)
    for keys, hint in hints:
        row += [("footer_key", f" {keys}"), ("footer", f" {hint} ")]
    return row
