"""Make untrusted text safe to draw: nothing a model, tokenizer, checkpoint or recording
wrote may reach the terminal as a control sequence or break the layout.

Every string from outside goes through ``safe`` before it becomes urwid markup:

- C0 controls and DEL become their visible Unicode control pictures (ESC -> ``␛``,
  newline -> ``␊``, tab -> ``␉``, DEL -> ``␡``);
- C1 controls, bidi overrides and isolates, zero-width and other format characters,
  line/paragraph separators, surrogates, private-use, unassigned code points and
  variation selectors become escapes such as ``\\x9b`` or ``\\u202e``;
- a combining mark is kept only after a printable base character of the same string
  (so it cannot combine with our borders), otherwise it is escaped too;
- any other zero-width character is escaped.

Widths are measured with urwid's own ``str_util`` so the screen layout and the
measured layout agree; ``clip`` cuts a string to a display width.
"""

from __future__ import annotations

import functools
import unicodedata

from urwid.str_util import calc_text_pos, calc_width

# Categories never drawn raw: controls, format characters (bidi, zero-width joiners,
# soft hyphen...), surrogates, private use, unassigned, line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_COMBINING_CATEGORIES = frozenset({"Mn", "Me", "Mc"})


def _is_variation_selector(code: int) -> bool:
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def escape_char(ch: str) -> str:
    """The visible stand-in of one character: a control picture or a backslash escape."""
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ .. ␟
    if code == 0x7F:
        return "\u2421"  # ␡
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


@functools.lru_cache(maxsize=65536)
def _char_class(ch: str) -> str:
    """'escape', 'combining' or 'base' for one character."""
    code = ord(ch)
    category = unicodedata.category(ch)
    if category in _ESCAPED_CATEGORIES or _is_variation_selector(code):
        return "escape"
    if category in _COMBINING_CATEGORIES and calc_width(ch, 0, 1) == 0:
        return "combining"
    if calc_width(ch, 0, 1) == 0:
        return "escape"  # zero width but not a combining mark (e.g. Hangul fillers)
    return "base"


@functools.lru_cache(maxsize=8192)
def safe(text: str) -> str:
    """``text`` with every character that could act on the terminal or shift the layout
    shown as a visible escape. Pure; cached because token texts repeat every frame."""
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    after_base = False  # the previous output character is a raw printable base
    for ch in text:
        kind = _char_class(ch)
        if kind == "base":
            out.append(ch)
            after_base = True
        elif kind == "combining" and after_base:
            out.append(ch)
        else:
            out.append(escape_char(ch))
            after_base = False
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def width(text: str) -> int:
    """Display columns of ``text`` as urwid lays it out (memoised: a frame measures
    thousands of segments, most of them cells and labels drawn every frame)."""
    return calc_width(text, 0, len(text))


def clip(text: str, columns: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``columns`` display columns, ending in ``ellipsis`` when cut."""
    if columns <= 0:
        return ""
    if width(text) <= columns:
        return text
    end, _ = calc_text_pos(text, 0, len(text), columns - width(ellipsis))
    return text[:end] + ellipsis
