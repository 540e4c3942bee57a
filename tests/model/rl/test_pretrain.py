"""Pretraining batches: several questions about each scene, its image encoded once."""

import numpy as np

from model.rl import pretrain
from model.tasks import Task


def test_a_batch_asks_several_questions_about_each_scene(embedded_processor):
    config = pretrain.tiny_config(embedded_processor)
    task = Task("train", 0)
    seqs = pretrain.train_batch(config, embedded_processor, task, step=3)
    images, per = pretrain.IMAGES_PER_STEP, pretrain.QUESTIONS_PER_IMAGE
    assert seqs.input_ids.shape == (images * per, pretrain.LENGTH)
    assert seqs.pixels.shape[0] == images
    np.testing.assert_array_equal(seqs.image_of_row, np.arange(images * per) // per)
    rows = [ex for j in range(images) for ex in task.questions(3 * images + j, per)]
    texts = pretrain.supervised_answers(task, 3, rows)
    for j in range(images):
        examples = task.questions(3 * images + j, per)
        for q in range(len(examples)):
            row = j * per + q
            answer = pretrain.answer_ids(embedded_processor, texts[row])
            # the mask covers exactly the answer tokens, which are the targets there
            np.testing.assert_array_equal(seqs.targets[row][seqs.mask[row] == 1], answer)
        # the image of the scene is the one packed for its rows
        first = embedded_processor.prepare(examples[0].question, [examples[0].image])
        np.testing.assert_array_equal(seqs.pixels[j], first["pixel_values"])


def test_supervised_answers_mix_sentences_and_answers(embedded_processor):
    from model.tasks.questions import sentence

    task = Task("train", 0)
    said = []
    for step in range(20):
        examples = [task.sample(step * 8 + j) for j in range(8)]
        texts = pretrain.supervised_answers(task, step, examples)
        assert texts == pretrain.supervised_answers(task, step, examples)  # reproducible
        for ex, text in zip(examples, texts, strict=True):
            assert text in (ex.answer, sentence(ex.qtype, ex.answer))
            said.append(text != ex.answer)
        # the longest sentence still fits the batch length
        for ex, text in zip(examples, texts, strict=True):
            n = embedded_processor.prepare(ex.question, [ex.image])["input_ids"].shape[1]
            assert n + len(pretrain.answer_ids(embedded_processor, text)) <= pretrain.LENGTH
    assert abs(np.mean(said) - pretrain.SENTENCE_SHARE) < 0.1
