import json

import pytest

from model.config import ConfigError, Qwen3VLConfig


def _hf_dict(**text_overrides):
    text = {
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rope_parameters": {"rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        **text_overrides,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "deepstack_visual_indexes": [0],
    }
    return {"model_type": "qwen3_vl", "text_config": text, "vision_config": vision}


def test_reads_fields():
    c = Qwen3VLConfig.from_dict(_hf_dict())
    assert c.text.num_key_value_heads == 2
    assert c.text.mrope_section == (2, 3, 3)
    assert c.text.rope_theta == 10000.0
    assert c.vision.deepstack_visual_indexes == (0,)
    assert not c.tie_word_embeddings


def test_reads_older_rope_scaling_spelling():
    d = _hf_dict(rope_parameters=None, rope_theta=5.0, rope_scaling={"mrope_section": [4, 2, 2]})
    c = Qwen3VLConfig.from_dict(d)
    assert c.text.mrope_section == (4, 2, 2)
    assert c.text.rope_theta == 5.0


def test_round_trip():
    c = Qwen3VLConfig.from_dict(_hf_dict())
    assert Qwen3VLConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_wrong_model_type():
    with pytest.raises(ConfigError, match="model_type is 'llama'"):
        Qwen3VLConfig.from_dict({**_hf_dict(), "model_type": "llama"})


def test_missing_key():
    d = _hf_dict()
    del d["text_config"]["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        Qwen3VLConfig.from_dict(d)


def test_mrope_section_must_cover_head_dim():
    with pytest.raises(ConfigError, match="mrope_section"):
        Qwen3VLConfig.from_dict(_hf_dict(rope_parameters={"mrope_section": [2, 2, 2]}))


def test_unreadable_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        Qwen3VLConfig.from_json(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no such file"):
        Qwen3VLConfig.from_json(tmp_path / "absent.json")
