"""Prompt preparation for Qwen3-VL: chat template, image patches and token ids, as transformers.

``Processor.prepare(prompt, images)`` returns exactly what transformers' ``Qwen3VLProcessor``
returns for one user turn (the images, then the text) followed by the assistant prefix:

- ``input_ids`` int32 ``[1, T]``: the chat template rendered by the checkpoint's own template,
  each ``<|image_pad|>`` expanded to ``t * h * w / merge**2`` copies, one per merged vision token.
- ``pixel_values`` float32 ``[N, C * temporal_patch * P * P]``: N = sum of ``t * h * w`` patches.
- ``image_grid_thw`` int64 ``[n_images, 3]``: the patch grid (t, h, w) of each image.

Images go through transformers' own torch-free image processor (``Qwen2VLImageProcessorPil``,
the class Qwen3-VL checkpoints name): smart resize to multiples of ``patch_size * merge_size``
within the configured pixel budget, rescale to [0, 1], normalise with the checkpoint's mean/std
(0.5 for Qwen3-VL), and patchify. A still image fills both temporal slots of a patch with the
same frame, and the rows of ``pixel_values`` run merge window by merge window: the 2x2 patches
that the vision merger fuses into one token are consecutive rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


class ProcessorError(ValueError):
    """A checkpoint directory, image or prompt the processor cannot use."""


def load_image(path: str | Path) -> PIL.Image.Image:
    """Open an image file as RGB; a missing or unreadable file raises ProcessorError."""
    path = Path(path)
    if not path.is_file():
        raise ProcessorError(f"image not found: {path}")
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise ProcessorError(f"cannot read image {path}: {e}") from None


class Processor:
    """Tokenizer + image processor of one checkpoint directory."""

    def __init__(self, tokenizer, image_processor: Qwen2VLImageProcessorPil):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.merge_size = int(image_processor.merge_size)
        vocab = tokenizer.get_vocab()
        for token in (IMAGE_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN):
            if token not in vocab:
                raise ProcessorError(f"tokenizer has no {token} token")
        self.image_token_id = vocab[IMAGE_TOKEN]
        self.eos_token_ids = [vocab[t] for t in EOS_TOKENS if t in vocab]
        # texts that tokenize as control tokens (chat turns, images), not as words
        self.special_tokens = sorted(
            {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
            | set(tokenizer.all_special_tokens)
        )
        self._texts: dict[int, str] = {}  # token_texts, by id

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Processor:
        """Read tokenizer files, the chat template and preprocessor_config.json from ``path``."""
        path = Path(path)
        if not path.is_dir():
            raise ProcessorError(f"not a checkpoint directory: {path}")
        if not (path / "preprocessor_config.json").is_file():
            raise ProcessorError(f"missing preprocessor_config.json in {path}")
        if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
            raise ProcessorError(f"missing tokenizer.json in {path}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProcessorError(f"cannot load processor from {path}: {first_line}") from None
        if tokenizer.chat_template is None:
            # Older Qwen-VL checkpoints keep the template in a processor-level chat_template.json.
            legacy = path / "chat_template.json"
            if not legacy.is_file():
                raise ProcessorError(f"no chat template in {path}")
            tokenizer.chat_template = json.loads(legacy.read_text())["chat_template"]
        return cls(tokenizer, image_processor)

    def prepare(self, prompt: str, images: list[PIL.Image.Image] = ()) -> dict:
        """One user turn (images, then ``prompt``) plus the assistant prefix, ready for the model.

        Raises ``ProcessorError`` for a prompt holding a special token or an unusable image.

        Returns:
            by name: ``input_ids`` int32 ``[1, T]``, ``pixel_values`` float32
            ``[N, C * temporal_patch * P * P]`` and ``image_grid_thw`` int64
            ``[n_images, 3]`` (both ``None`` without images).
        """
        for token in (IMAGE_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN):
            if token in prompt:
                raise ProcessorError(f"prompt must not contain {token}; pass images instead")
        for token in self.special_tokens:
            if token in prompt:
                raise ProcessorError(f"prompt must not contain the special token {token}")
        for image in images:
            if not isinstance(image, PIL.Image.Image):
                raise ProcessorError(f"images must be PIL images, got {type(image).__name__}")
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        if text.count(IMAGE_TOKEN) != len(images):
            raise ProcessorError(
                f"chat template wrote {text.count(IMAGE_TOKEN)} image placeholders "
                f"for {len(images)} images"
            )
        pixel_values = image_grid_thw = None
        if images:
            try:
                out = self.image_processor(images=list(images))
            except ValueError as e:  # e.g. an aspect ratio above 200
                raise ProcessorError(f"cannot preprocess image: {e}") from None
            pixel_values = np.asarray(out["pixel_values"], dtype=np.float32)
            image_grid_thw = np.asarray(out["image_grid_thw"], dtype=np.int64)
            text = self._expand_image_tokens(text, image_grid_thw)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return {
            "input_ids": np.asarray([ids], dtype=np.int32),
            "pixel_values": pixel_values,
            "image_grid_thw": image_grid_thw,
        }

    def _expand_image_tokens(self, text: str, image_grid_thw: np.ndarray) -> str:
        """Replace the i-th ``<|image_pad|>`` by one copy per merged vision token of image i."""
        pieces = text.split(IMAGE_TOKEN)
        out = [pieces[0]]
        for grid, piece in zip(image_grid_thw, pieces[1:], strict=True):
            out.append(IMAGE_TOKEN * int(np.prod(grid) // self.merge_size**2))
            out.append(piece)
        return "".join(out)

    def decode(self, ids) -> str:
        """Text of ``ids`` (any shape, read in order) without special tokens."""
        return self.tokenizer.decode(np.asarray(ids).ravel().tolist(), skip_special_tokens=True)

    def token_texts(self, ids) -> tuple[str, ...]:
        """Display text of each token of ``ids`` (any shape, read in order), special tokens
        included (``'<|im_end|>'``). Memoised by id for the processor's lifetime: a rollout
        asks for every sampled token and its alternatives, and a tokenizer call per token is
        slow."""
        ids = np.asarray(ids).ravel().tolist()
        try:
            return tuple(map(self._texts.__getitem__, ids))
        except KeyError:  # first sight of some ids: one tokenizer call for all of them
            missing = sorted({i for i in ids if i not in self._texts})
            texts = self.tokenizer.batch_decode([[i] for i in missing])
            self._texts.update(zip(missing, texts, strict=True))
        return tuple(map(self._texts.__getitem__, ids))
