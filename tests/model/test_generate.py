"""``python -m model generate`` (called in-process)."""

import shutil

import numpy as np
import PIL.Image
import pytest

from model.checkpoint import save_pretrained
from model.cli import main
from tests.model.conftest import ASSETS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, random_model):
    """The tiny random model saved with the embedded tokenizer and processor files."""
    path = tmp_path_factory.mktemp("ckpt")
    save_pretrained(random_model, path)
    for f in ASSETS.iterdir():
        if f.is_file() and f.suffix == ".json" and f.name != "config.json":
            shutil.copy(f, path / f.name)
    return path


def test_prints_the_generated_text(checkpoint, tmp_path, capsys):
    from model.decode import generate
    from model.processor import Processor

    image = tmp_path / "img.png"
    PIL.Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(image)
    args = ["generate", "--model", str(checkpoint), "--prompt", "what is it?"]
    assert main([*args, "--image", str(image), "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out

    from model.checkpoint import load_pretrained

    processor = Processor.from_pretrained(checkpoint)
    inputs = processor.prepare("what is it?", [PIL.Image.open(image).convert("RGB")])
    gen = generate(
        load_pretrained(checkpoint),
        inputs["input_ids"],
        inputs["pixel_values"],
        inputs["image_grid_thw"],
        max_new_tokens=5,
        eos_token_ids=processor.eos_token_ids,
    )
    assert out == processor.decode(gen.tokens[0, : gen.lengths[0]]) + "\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperature", "-1"], "temperature"),
        (["--image", "/nonexistent.png"], "image not found"),
    ],
)
def test_bad_options_exit_2(checkpoint, capsys, extra, message):
    assert main(["generate", "--model", str(checkpoint), "--prompt", "x", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_checkpoint_exits_2(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and err.count("\n") == 1
