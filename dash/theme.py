"""Colours and the intensity ramp.

The ramp ``░ ▒ ▓ █`` carries intensity on every terminal, so a monochrome screen
(``NO_COLOR``) still reads; colour adds a heat scale on top. The colour depth comes
from the terminal: 24-bit when ``COLORTERM`` says so, 256 when ``TERM`` does, else 16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import urwid

RAMP = "░▒▓█"  # 0-.25, .25-.5, .5-.75, .75-1
HEAT_LEVELS = 8  # palette entries heat0 .. heat7
MONO, COLORS_16, COLORS_256, COLORS_24BIT = 1, 16, 256, 2**24


def color_depth(environ: Mapping[str, str] | None = None) -> int:
    """Colours the terminal shows: 1 (``NO_COLOR`` set), 2**24, 256 or 16."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return MONO
    if env.get("COLORTERM", "").lower() in ("truecolor", "24bit"):
        return COLORS_24BIT
    if "256color" in env.get("TERM", ""):
        return COLORS_256
    return COLORS_16


def unit(x: float) -> float:
    """``x`` clamped to [0, 1]; NaN stays NaN."""
    return x if math.isnan(x) else min(1.0, max(0.0, x))


def ramp_char(x: float) -> str:
    """The ramp glyph of an intensity in [0, 1]; ``·`` for NaN (no value)."""
    if math.isnan(x):
        return "·"
    return RAMP[min(len(RAMP) - 1, int(unit(x) * len(RAMP)))]


def heat_attr(x: float) -> str:
    """Palette name of an intensity in [0, 1]: ``heat0`` (cold) .. ``heat7`` (hot)."""
    if math.isnan(x):
        return "dim"
    return f"heat{min(HEAT_LEVELS - 1, int(unit(x) * HEAT_LEVELS))}"


# Heat scale for 256 / 24-bit terminals (dark blue -> purple -> orange -> yellow) and
# the 16-colour fallback of each level.
_HEAT_HIGH = ("#236", "#339", "#64a", "#a4a", "#d46", "#f73", "#fa2", "#ff6")
_HEAT_16 = (
    "dark blue",
    "dark blue",
    "dark magenta",
    "dark magenta",
    "dark red",
    "light red",
    "yellow",
    "yellow",
)

# (name, 16-colour fg, 16-colour bg, mono, high fg, high bg)
_BASE = [
    (None, "default", "default", "", "default", "default"),
    ("header", "white,bold", "dark blue", "standout", "#fff,bold", "#126"),
    ("header_dim", "light gray", "dark blue", "standout", "#bbb", "#126"),
    ("header_warn", "yellow,bold", "dark blue", "standout,bold", "#ff0,bold", "#126"),
    ("title", "light cyan,bold", "default", "bold", "#6df,bold", "default"),
    ("border", "dark gray", "default", "", "#567", "default"),
    ("label", "light gray", "default", "", "#9ab", "default"),
    ("value", "white,bold", "default", "bold", "#fff,bold", "default"),
    ("dim", "dark gray", "default", "", "#678", "default"),
    ("token", "light green", "default", "underline", "#8f8", "default"),
    ("warn", "yellow,bold", "default", "bold", "#fd0,bold", "default"),
    ("error", "light red,bold", "default", "bold,standout", "#f55,bold", "default"),
    ("error_box", "white", "dark red", "standout", "#fff", "#600"),
    ("selected", "black,bold", "light gray", "standout", "#000,bold", "#fff"),
    ("kv_read", "black,bold", "light green", "standout", "#000,bold", "#4d4"),
    ("bar", "light cyan", "default", "", "#4bd", "default"),
    ("bar_negative", "light red", "default", "", "#e55", "default"),
    ("bar_empty", "dark gray", "default", "", "#345", "default"),
    ("flash_active", "yellow,bold", "default", "bold,standout", "#ff0,bold", "default"),
    ("flash_write", "light green,bold", "default", "bold,standout", "#3f3,bold", "default"),
    ("flash_sampling", "light cyan,bold", "default", "bold,standout", "#0ff,bold", "default"),
    ("footer", "light gray", "dark gray", "standout", "#ccc", "#334"),
    ("footer_key", "white,bold", "dark gray", "standout,bold", "#ff6,bold", "#334"),
    ("help", "white", "dark blue", "standout", "#eee", "#124"),
    ("help_key", "yellow,bold", "dark blue", "standout,bold", "#ff6,bold", "#124"),
]


def palette() -> list[tuple]:
    """Palette entries for ``urwid.MainLoop``: each carries 16-colour, mono and high-colour
    specs, so one palette serves every colour depth."""
    heat = [
        (f"heat{i}", _HEAT_16[i], "default", "", _HEAT_HIGH[i], "default")
        for i in range(HEAT_LEVELS)
    ]
    return _BASE + heat


def pixel_attr(top: tuple[int, int, int], bottom: tuple[int, int, int], depth: int):
    """Display attribute for a ``▀`` half block: foreground = upper pixel, background =
    lower pixel. Needs 256 or 24-bit colour (thumbnails are not drawn otherwise)."""
    if depth >= COLORS_24BIT:
        fg = "#{:02x}{:02x}{:02x}".format(*top)
        bg = "#{:02x}{:02x}{:02x}".format(*bottom)
    else:
        fg = "#{:x}{:x}{:x}".format(*(c >> 4 for c in top))
        bg = "#{:x}{:x}{:x}".format(*(c >> 4 for c in bottom))
    return urwid.AttrSpec(fg, bg, depth)
