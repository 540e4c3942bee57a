"""model.processor against transformers' own Qwen3VLProcessor (same tokenizer and config files).

transformers' Qwen3VLProcessor insists on a video processor, which needs torchvision (not
installable here). Images never touch it, so the reference is built with the video-processor
class check skipped; everything on the image and text path is transformers' own code.
"""

from pathlib import Path

import numpy as np
import pytest

from tests.model.test_processor import make_checkpoint_dir, random_image

pytestmark = pytest.mark.parity
SHIPPED = Path(__file__).parents[2] / "assets" / "tiny-qwen3vl"


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return make_checkpoint_dir(tmp_path_factory.mktemp("ckpt"))


def transformers_processor(path):
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    check = ProcessorMixin.check_argument_for_proper_class

    def check_except_video(self, name, argument):
        return None if name == "video_processor" else check(self, name, argument)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ProcessorMixin, "check_argument_for_proper_class", check_except_video)
        return Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=tokenizer.chat_template,
        )


def reference_batch(reference_processor, prompt, images):
    """transformers' output for one user turn (images, then prompt) plus the assistant prefix."""
    content = [{"type": "image", "image": image} for image in images]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
    return reference_processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="np"
    )


def assert_same_batch(ours, reference):
    np.testing.assert_array_equal(ours["input_ids"], reference["input_ids"])
    if ours["pixel_values"] is None:
        assert ours["image_grid_thw"] is None and "pixel_values" not in reference
        return
    assert ours["pixel_values"].dtype == reference["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(ours["pixel_values"], reference["pixel_values"])
    np.testing.assert_array_equal(ours["image_grid_thw"], reference["image_grid_thw"])


@pytest.mark.parametrize(
    "sizes",
    [[], [(256, 256)], [(300, 200)], [(97, 413)], [(1000, 50)], [(256, 256), (480, 320)]],
    ids=lambda sizes: "+".join(f"{h}x{w}" for h, w in sizes) or "text-only",
)
def test_prepare_equals_transformers_processor(checkpoint_dir, sizes):
    from model.processor import Processor

    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    prompt = "which shape is left of the blue triangle?"
    ours = Processor.from_pretrained(checkpoint_dir).prepare(prompt, images)
    assert_same_batch(ours, reference_batch(transformers_processor(checkpoint_dir), prompt, images))


def test_shipped_tiny_checkpoint_equals_transformers_processor():
    from model.processor import Processor
    from model.tasks import Task

    ours = Processor.from_pretrained(SHIPPED)
    reference = transformers_processor(SHIPPED)
    for i in range(4):
        e = Task("train", seed=0).sample(i)
        assert_same_batch(
            ours.prepare(e.question, [e.image]), reference_batch(reference, e.question, [e.image])
        )
