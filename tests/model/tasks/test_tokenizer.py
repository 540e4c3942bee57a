"""model.tasks.tokenizer and the shipped assets/tiny-qwen3vl tokenizer + preprocessor files."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model.processor import Processor
from model.tasks import Task
from model.tasks.questions import all_answers, all_questions
from model.tasks.tokenizer import SPECIAL_TOKENS, main, write_processor_files

SHIPPED = Path(__file__).parents[3] / "assets" / "tiny-qwen3vl"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SHIPPED)


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory):
    return write_processor_files(tmp_path_factory.mktemp("fresh"))


def bpe_model(path):
    """(vocab, merges as pairs) of a tokenizer.json, independent of how merges are spelled."""
    model = json.loads((path / "tokenizer.json").read_text())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def test_shipped_files_are_what_the_generator_writes(fresh_dir):
    assert bpe_model(SHIPPED) == bpe_model(fresh_dir)
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        shipped, fresh = (json.loads((d / name).read_text()) for d in (SHIPPED, fresh_dir))
        assert shipped == fresh


def test_generation_is_deterministic(fresh_dir, tmp_path):
    again = write_processor_files(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (again / name).read_bytes() == (fresh_dir / name).read_bytes()


def test_special_tokens_have_fixed_single_ids(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == expected_id
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [expected_id]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_vocab_holds_bytes_specials_and_task_merges(tokenizer):
    assert 256 + len(SPECIAL_TOKENS) < len(tokenizer) <= 1024


@pytest.mark.parametrize("text", [*all_questions(), *all_answers()])
def test_task_text_round_trips_word_per_token(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text.split()) + text.count("?")  # every task word is one token


def test_any_text_round_trips(tokenizer):
    text = "Hello, wörld!\n  42 ✓ <|im_end|> tab\t"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids


def test_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many?"}]},
        {"role": "assistant", "content": "2"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>how many?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n"
    )


def test_processor_prepares_a_task_example():
    processor = Processor.from_pretrained(SHIPPED)
    example = Task("eval", seed=0).sample(0)
    batch = processor.prepare(example.question, [example.image])
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert batch["pixel_values"].shape == (256, 3 * 2 * 16 * 16)
    assert processor.eos_token_ids == [2, 0]
    texts = processor.token_texts(batch["input_ids"][0])
    assert texts.count("<|image_pad|>") == 64
    assert "".join(texts) == (
        "<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 64
        + f"<|vision_end|>{example.question}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_command_line(tmp_path, capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
    assert main([str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer.json").is_file()
