"""The embedded model's tokenizer: a small byte-level BPE trained on the task's text.

Same pipeline as Qwen's own tokenizer (NFC, Qwen's pre-tokenisation regex, byte-level BPE, so
any text encodes), with Qwen's special tokens at fixed ids 0..6 (SPECIAL_TOKENS order) and a
Qwen-style chat template. ``write_processor_files(dir)`` writes tokenizer.json,
tokenizer_config.json and preprocessor_config.json (256x256 images, patch 16, merge 2), which
``transformers.AutoTokenizer`` and ``model.processor.Processor`` load. Training is
deterministic: the same files every run.

    python -m model.tasks.tokenizer OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers import processors as post_processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from model.tasks.questions import all_answers, all_questions
from model.tasks.scenes import IMAGE_SIZE

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
MAX_VOCAB_SIZE = 1024  # an upper bound: training stops once every task word is one token
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- else %}"
    "{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' %}"
    "{{- item['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
PREPROCESSOR_CONFIG = {
    "size": {"shortest_edge": IMAGE_SIZE * IMAGE_SIZE, "longest_edge": IMAGE_SIZE * IMAGE_SIZE},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessor",
}


def training_texts() -> list[str]:
    """The text between special tokens in the task's chats: role lines, questions, answers."""
    return ["user\n", "assistant\n", "system\n", "\n", *all_questions(), *all_answers()]


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE on training_texts(), special tokens at ids 0..len(SPECIAL_TOKENS)-1."""
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = post_processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=MAX_VOCAB_SIZE,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts(), trainer)
    return tokenizer


def tokenizer_config() -> dict:
    """tokenizer_config.json: Qwen2Tokenizer settings, special tokens and the chat template."""
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "backend": "tokenizers",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "extra_special_tokens": list(SPECIAL_TOKENS[1:]),
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def write_processor_files(out_dir: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and preprocessor_config.json to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer().save(str(out_dir / "tokenizer.json"), pretty=True)
    for name, content in [
        ("tokenizer_config.json", tokenizer_config()),
        ("preprocessor_config.json", PREPROCESSOR_CONFIG),
    ]:
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n")
    return out_dir


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m model.tasks.tokenizer OUT_DIR", file=sys.stderr)
        return 2
    out_dir = write_processor_files(argv[0])
    print(f"wrote tokenizer and preprocessor files to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
