"""model.processor: chat template, image-token expansion, smart resize, patch layout (no torch)."""

import json

import numpy as np
import PIL.Image
import pytest
from tokenizers import pre_tokenizers
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from model.processor import Processor, ProcessorError, load_image

SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL's published preprocessor_config.json.
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def make_checkpoint_dir(path):
    """A byte-level Qwen2 tokenizer (saved by transformers) + Qwen3-VL preprocessor config."""
    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], extra_special_tokens=SPECIALS, eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR))
    return path


def random_image(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return make_checkpoint_dir(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def processor(checkpoint_dir):
    return Processor.from_pretrained(checkpoint_dir)


def image_token_runs(processor, ids):
    """Lengths of the consecutive runs of <|image_pad|> in ids [T]."""
    is_pad = np.concatenate([[0], (ids == processor.image_token_id).astype(int), [0]])
    starts = np.flatnonzero(np.diff(is_pad) == 1)
    ends = np.flatnonzero(np.diff(is_pad) == -1)
    return list(ends - starts)


def test_one_image_shapes_and_placeholders(processor):
    batch = processor.prepare("what color is the circle?", [random_image(256, 256)])
    ids = batch["input_ids"]
    assert ids.dtype == np.int32 and ids.ndim == 2 and ids.shape[0] == 1
    assert batch["pixel_values"].dtype == np.float32
    assert batch["pixel_values"].shape == (16 * 16, 3 * 2 * 16 * 16)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert image_token_runs(processor, ids[0]) == [16 * 16 // 4]
    texts = processor.token_texts(ids[0])
    first = texts.index("<|image_pad|>")
    assert texts[first - 1] == "<|vision_start|>"
    assert texts[first + 64] == "<|vision_end|>"
    assert "".join(texts[: first - 1]) == "<|im_start|>user\n"
    assert "".join(texts[first + 65 :]) == (
        "what color is the circle?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_two_images_each_get_their_own_token_count(processor):
    batch = processor.prepare("compare", [random_image(256, 256, 1), random_image(300, 200, 2)])
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16], [1, 20, 14]]
    assert batch["pixel_values"].shape == (16 * 16 + 20 * 14, 1536)
    assert image_token_runs(processor, batch["input_ids"][0]) == [64, 70]


def test_text_only_prompt(processor):
    batch = processor.prepare("hi")
    assert batch["pixel_values"] is None and batch["image_grid_thw"] is None
    text = "".join(processor.token_texts(batch["input_ids"][0]))
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_decode_drops_special_tokens_and_eos_ids(processor):
    ids = processor.prepare("hi")["input_ids"]
    assert processor.decode(ids) == "user\nhi\nassistant\n"
    vocab = processor.tokenizer.get_vocab()
    assert processor.eos_token_ids == [vocab["<|im_end|>"], vocab["<|endoftext|>"]]


@pytest.mark.parametrize(
    ("height", "width", "min_pixels", "max_pixels", "grid_hw"),
    [
        (256, 256, 65536, 16777216, (16, 16)),  # already a multiple of 32, inside the budget
        (480, 640, 65536, 16777216, (30, 40)),  # multiples of 32: unchanged
        (300, 200, 65536, 16777216, (20, 14)),  # rounds to 288x192 < min: scaled up to 320x224
        (1000, 50, 65536, 16777216, (72, 4)),  # tall: scaled up to 1152x64
        (20, 30, 65536, 16777216, (14, 20)),  # tiny: scaled up to 224x320
        (300, 200, 1024, 16384, (8, 6)),  # over max: scaled down to 128x96
    ],
)
def test_smart_resize_known_cases(processor, height, width, min_pixels, max_pixels, grid_hw):
    image_processor = Qwen2VLImageProcessorPil(
        **{
            **QWEN3_VL_PREPROCESSOR,
            "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        }
    )
    small = Processor(processor.tokenizer, image_processor)
    batch = small.prepare("x", [random_image(height, width)])
    assert batch["image_grid_thw"].tolist() == [[1, *grid_hw]]
    assert batch["pixel_values"].shape[0] == grid_hw[0] * grid_hw[1]
    assert image_token_runs(small, batch["input_ids"][0]) == [grid_hw[0] * grid_hw[1] // 4]


def expected_pixel_values(image, grid_h, grid_w, patch=16, merge=2, temporal=2):
    """Independent reference: resize, normalise with mean/std 0.5, then walk the patches in
    merge-window order, writing each as [C, temporal, P, P] with the frame repeated."""
    resized = image.resize((grid_w * patch, grid_h * patch), PIL.Image.Resampling.BICUBIC)
    pixels = (np.asarray(resized, dtype=np.float32) / 255.0 - 0.5) / 0.5  # [H, W, C]
    rows = []
    for block_row in range(grid_h // merge):
        for block_col in range(grid_w // merge):
            for dy in range(merge):
                for dx in range(merge):
                    r = (block_row * merge + dy) * patch
                    c = (block_col * merge + dx) * patch
                    tile = pixels[r : r + patch, c : c + patch].transpose(2, 0, 1)  # [C, P, P]
                    frames = np.stack([tile] * temporal, axis=1)  # [C, temporal, P, P]
                    rows.append(frames.ravel())
    return np.stack(rows)


@pytest.mark.parametrize(("height", "width"), [(256, 256), (300, 200), (64, 96)])
def test_pixel_values_match_direct_patchify(processor, height, width):
    image = random_image(height, width, seed=height + width)
    batch = processor.prepare("x", [image])
    _, grid_h, grid_w = batch["image_grid_thw"][0]
    expected = expected_pixel_values(image, int(grid_h), int(grid_w))
    np.testing.assert_allclose(batch["pixel_values"], expected, atol=1e-6)
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0


def test_load_image_errors(tmp_path):
    with pytest.raises(ProcessorError, match="image not found"):
        load_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    with pytest.raises(ProcessorError, match="cannot read image"):
        load_image(garbage)
    good = tmp_path / "good.png"
    random_image(10, 20).convert("L").save(good)
    loaded = load_image(good)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_checkpoint_directory_errors(tmp_path):
    with pytest.raises(ProcessorError, match="not a checkpoint directory"):
        Processor.from_pretrained(tmp_path / "nope")
    with pytest.raises(ProcessorError, match="missing preprocessor_config.json"):
        Processor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR))
    with pytest.raises(ProcessorError, match="missing tokenizer.json"):
        Processor.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ProcessorError, match="cannot load processor"):
        Processor.from_pretrained(tmp_path)


def test_chat_template_from_legacy_chat_template_json(tmp_path, processor):
    path = make_checkpoint_dir(tmp_path)
    (path / "chat_template.jinja").unlink()
    with pytest.raises(ProcessorError, match="no chat template"):
        Processor.from_pretrained(path)
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    legacy = Processor.from_pretrained(path)
    np.testing.assert_array_equal(
        legacy.prepare("hi")["input_ids"], processor.prepare("hi")["input_ids"]
    )


def test_bad_prompts_and_images(processor):
    with pytest.raises(ProcessorError, match="must not contain"):
        processor.prepare("look: <|image_pad|>", [])
    with pytest.raises(ProcessorError, match="PIL images"):
        processor.prepare("x", [np.zeros((8, 8, 3))])
    with pytest.raises(ProcessorError, match="aspect ratio"):
        processor.prepare("x", [random_image(1, 300)])


def test_token_texts_ask_the_tokenizer_once_per_new_id(checkpoint_dir, monkeypatch):
    processor = Processor.from_pretrained(checkpoint_dir)
    decode, asked = processor.tokenizer.batch_decode, []

    def batch_decode(ids):
        asked.append([i for (i,) in ids])
        return decode(ids)

    monkeypatch.setattr(processor.tokenizer, "batch_decode", batch_decode)
    ids = processor.prepare("what color is the circle?", [])["input_ids"][0]
    first = processor.token_texts(ids)
    assert asked == [sorted(set(ids.tolist()))]
    assert processor.token_texts(ids[::-1]) == first[::-1] and len(asked) == 1
    new = int(ids.max()) + 1
    assert processor.token_texts([new, ids[0]])[1] == first[0]
    assert asked[1:] == [[new]]
    assert first == tuple(decode([[i] for i in ids.tolist()]))  # the tokenizer's own texts
