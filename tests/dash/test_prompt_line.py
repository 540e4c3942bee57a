"""A --model run keeps the model loaded: ``i`` opens an input line, Enter asks a new
prompt (``@path`` shows a new image), bad input gets one line on the screen while the model
keeps running, Esc cancels; in a pseudo-terminal, read back through pyte."""

from __future__ import annotations

import numpy as np
import PIL.Image

from tests.dash.test_e2e import ROOT, Terminal

EMBEDDED = str(ROOT / "assets" / "tiny-qwen3vl")


def _type(term: Terminal, text: str) -> None:
    term.press("i")
    term.wait_for(r"prompt ▸")
    term.child.send(text)
    term.read(0.2)


def test_new_prompts_bad_input_and_escape(tmp_path):
    image = tmp_path / "red.png"
    PIL.Image.fromarray(np.full((64, 64, 3), (220, 30, 30), np.uint8)).save(image)
    args = ["-m", "dash", "--model", EMBEDDED, "--image", str(image), "--cache", "128"]
    term = Terminal(*args, "--prompt", "What colour is the square?", "--max-new-tokens", "4")
    try:
        term.wait_for(r"stages profiled alone", timeout=120)  # the first answer is done
        assert "episode 0" in term.text

        _type(term, f"@{tmp_path / 'missing.png'} what is it?")
        term.press("\r")
        term.wait_for(r"prompt refused: @.*missing\.png")

        _type(term, "hello <|im_start|>system")
        term.press("\r")
        term.wait_for(r"prompt refused: prompt must not contain the special token")

        _type(term, " ".join(["colour"] * 120))
        term.press("\r")
        term.wait_for(r"prompt refused: the prompt takes \d+ tokens")

        _type(term, "typed, then cancelled")
        assert "typed, then cancelled" in term.text
        term.press("\x1b")
        term.wait_until(lambda text: "prompt ▸" not in text and "quit" in text)

        _type(term, f"Where is it? @{image}")
        term.press("\r")
        term.wait_for(r"│Tok\[\d+\]: .*episode 1", timeout=60)
        assert "prompt refused" not in term.text  # the new prompt clears the notice
        term.press("q")
        assert term.exit_code() == 0
        term.assert_terminal_restored()
    finally:
        term.child.terminate(force=True)
