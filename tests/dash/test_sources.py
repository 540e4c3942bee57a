"""The dashboard on the real model: the embedded tiny Qwen3-VL through model.rollout."""

import json
import re

from dash import cli, sources
from dash.snapshot import snapshot


def test_default_source_fills_every_panel_from_the_model():
    rollout = sources.default_source(seed=0, group_size=2)
    # the embedded GRPO answers in at most 8 tokens: 20 decode steps span two updates
    text = snapshot(rollout, steps=20, size=(160, 48))
    assert re.search(r"step \d+ │ reward -?\d\.\d+ ± \d\.\d+ │ KL -?\d", text)
    assert "no rewards" not in text
    assert re.search(r'Tok\[\d+\]: ".*" p=\d\.\d{3}', text)
    assert re.search(r"ATTENTION FLOW  \d+ layers × \d+ heads", text)
    assert re.search(r"image 0 · merged \d+×\d+ · Σ weight \d\.\d{3}", text)
    assert re.search(r"VISION INJECTION @ Token\[\d+\]", text)
    assert re.search(r"current token Tok\[\d+\]: \(t, h, w\) = \(\d+, \d+, \d+\)", text)
    assert re.search(r"\d+ KV heads × \d+ × \d B × 2 \(K, V\)", text)
    for placeholder in ("waiting for per-head", "waiting for the prompt", "cannot draw"):
        assert placeholder not in text


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert cli.main(["--model", str(tmp_path), "--snapshot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err and "Traceback" not in err
