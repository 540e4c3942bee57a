from dash import keymap
from dash.panels.error import ErrorPanel, TracebackOverlay
from dash.panels.footer import footer_row
from dash.panels.help import HelpOverlay
from model import telemetry as tm
from tests.dash import events as ev

ERROR = tm.ErrorEvent("ValueError: bad\x1b[31m shape\nsecond", "Traceback\n  line 1\n  line 2")


def test_error_panel_message_and_traceback():
    text, runs = ev.render(ErrorPanel(), (80, 4), ev.frame([ERROR]))
    assert "ROLLOUT FAILED" in text[0]
    assert "ValueError: bad␛[31m shape …" in text[1] and "t shows the traceback" in text[2]
    text, _ = ev.render(TracebackOverlay(), (60, 6), ev.frame([ERROR]))
    assert [r[1:9] for r in text[1:4]] == ["Traceback"[:8], "  line 1", "  line 2"]


def test_help_and_footer_come_from_the_registry():
    text, _ = ev.render(HelpOverlay(), HelpOverlay.size(), ev.frame())
    screen = "\n".join(text)
    for b in keymap.BINDINGS:
        assert b.label in screen and b.help in screen
    row = "".join(t for _, t in footer_row(160))
    for keys, hint in keymap.footer_hints():
        assert f"{keys} {hint}" in row
    narrow = "".join(t for _, t in footer_row(60))
    assert "? help" in narrow and "quit" in narrow and len(narrow) <= 60
