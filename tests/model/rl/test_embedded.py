"""The shipped checkpoint (assets/tiny-qwen3vl) is what ``python -m model pretrain`` writes."""

import json

from model.checkpoint import load_pretrained
from model.rl.pretrain import tiny_config
from tests.model.conftest import ASSETS


def test_shipped_checkpoint_loads_with_the_pretrain_config(embedded_processor):
    m = load_pretrained(ASSETS)
    assert m.config == tiny_config(embedded_processor)
    written = json.loads((ASSETS / "config.json").read_text())
    assert written["text_config"]["vocab_size"] == len(embedded_processor.tokenizer.get_vocab())
    assert written["image_token_id"] == embedded_processor.image_token_id


def test_assets_stay_under_20_mb():
    total = sum(f.stat().st_size for f in ASSETS.parent.rglob("*") if f.is_file())
    assert total < 20 * 2**20
