import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from dash.safe_text import clip, safe, width

UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def test_controls_become_visible():
    assert safe("\x1b[2J") == "␛[2J"
    assert safe("a\nb\tc\x7f") == "a␊b␉c␡"
    assert safe("\x9b31m") == "\\x9b31m"
    assert safe("\u202eevil") == "\\u202eevil"  # right-to-left override
    assert safe("zero\u200bwidth\ufeff") == "zero\\u200bwidth\\ufeff"


def test_printable_text_is_kept():
    for text in ("hello", "naïve", "e\u0301", "中文", "😀", "Ω≈ç√"):
        assert safe(text) == text


def test_combining_mark_without_base_is_escaped():
    assert safe("\u0301x") == "\\u0301x"
    assert safe("\x1b\u0301") == "␛\\u0301"  # may not combine with an escape


def test_clip_measures_display_width():
    assert clip("中文中文abc", 5) == "中文…"
    assert width(clip("中文中文abc", 5)) == 5
    assert clip("abc", 3) == "abc" and clip("abcd", 3) == "ab…" and clip("abc", 0) == ""


@given(st.text(st.characters(exclude_categories=())))
def test_safe_output_has_no_unsafe_character(text):
    out = safe(text)
    assert not any(unicodedata.category(c) in UNSAFE_CATEGORIES for c in out)
    # each input character is either kept or escaped, never silently dropped
    assert len(out) >= len(text)


def test_every_control_byte_is_escaped():
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
        out = safe(f"a{chr(code)}b")
        assert out != f"a{chr(code)}b" and out.isprintable(), hex(code)
