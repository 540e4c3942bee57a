import math

import urwid.testing

from dash import theme


def test_color_depth_from_the_environment():
    assert theme.color_depth({"NO_COLOR": "1", "COLORTERM": "truecolor"}) == 1
    assert theme.color_depth({"COLORTERM": "truecolor", "TERM": "xterm"}) == 2**24
    assert theme.color_depth({"COLORTERM": "24bit"}) == 2**24
    assert theme.color_depth({"TERM": "xterm-256color"}) == 256
    assert theme.color_depth({"TERM": "xterm"}) == 16
    assert theme.color_depth({}) == 16


def test_ramp_matches_the_design_quartiles():
    assert [theme.ramp_char(x) for x in (0.0, 0.24, 0.25, 0.49, 0.5, 0.74, 0.75, 1.0)] == list(
        "░░▒▒▓▓██"
    )
    assert theme.ramp_char(-3) == "░" and theme.ramp_char(7) == "█"
    assert theme.ramp_char(math.nan) == "·"
    assert theme.heat_attr(0.0) == "heat0" and theme.heat_attr(1.0) == "heat7"


def test_palette_resolves_at_every_depth():
    pal = theme.palette()
    for colors in (1, 16, 256, 2**24):
        spec = urwid.testing.resolve_attr("flash_active", pal, colors=colors)
        assert spec is not None
    assert urwid.testing.resolve_attr("flash_active", pal, colors=16).foreground.startswith(
        "yellow"
    )
    assert "standout" in str(urwid.testing.resolve_attr("selected", pal, colors=1))


def test_pixel_attr_uses_the_pixel_colours():
    spec = theme.pixel_attr((255, 0, 0), (0, 0, 255), 2**24)
    assert spec.foreground == "#ff0000" and spec.background == "#0000ff"
    assert theme.pixel_attr((255, 0, 0), (0, 0, 255), 256).foreground.startswith("#")


def test_monochrome_palette_has_no_colours():
    pal = theme.palette()
    for entry in pal:
        spec = urwid.testing.resolve_attr(entry[0], pal, colors=1)
        assert spec.foreground.split(",")[0] == spec.background == "default", entry[0]
