"""Our config reader against configs written by transformers itself."""

import pytest

pytestmark = pytest.mark.parity


def test_reads_config_written_by_transformers(tmp_path):
    from transformers import Qwen3VLConfig as HFConfig

    from model.config import Qwen3VLConfig

    hf = HFConfig(
        text_config={
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 96,
            "vocab_size": 300,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1234.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        },
        vision_config={"depth": 2, "hidden_size": 32, "num_heads": 2, "out_hidden_size": 64},
        tie_word_embeddings=True,
    )
    hf.save_pretrained(tmp_path)
    c = Qwen3VLConfig.from_json(tmp_path / "config.json")
    assert c.text.num_hidden_layers == 3
    assert c.text.rope_theta == 1234.0
    assert c.text.mrope_section == (2, 3, 3)
    assert c.vision.deepstack_visual_indexes == tuple(hf.vision_config.deepstack_visual_indexes)
    assert c.tie_word_embeddings is True

    # and transformers reads what we write
    (tmp_path / "config.json").write_text(__import__("json").dumps(c.to_dict()))
    back = HFConfig.from_pretrained(tmp_path)
    assert back.text_config.num_key_value_heads == 2
    assert list(back.text_config.rope_parameters["mrope_section"]) == [2, 3, 3]
    assert back.tie_word_embeddings is True
