"""model.tasks: deterministic examples, disjoint splits, each question answerable from its scene."""

import re

import numpy as np
import pytest

from model.tasks import QTYPES, Task, split_of
from model.tasks.questions import all_answers, all_questions
from model.tasks.scenes import BACKGROUND, COLORS, COLUMNS, IMAGE_SIZE, ROWS, cell_center

N = 200


@pytest.fixture(scope="module")
def examples():
    return {split: [Task(split, seed=0).sample(i) for i in range(N)] for split in ("train", "eval")}


def test_sampling_is_deterministic(examples):
    again = Task("train", seed=0)
    for i in (0, 1, 7, 123):
        a, b = examples["train"][i], again.sample(i)
        assert (a.question, a.answer, a.qtype, a.scene) == (b.question, b.answer, b.qtype, b.scene)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_seed_changes_the_examples(examples):
    other = [Task("train", seed=1).sample(i).scene for i in range(20)]
    assert other != [e.scene for e in examples["train"][:20]]


def test_first_examples_are_pinned():
    """Guards the generator against drift across Python versions (random.Random with str seeds)."""
    got = [(e.question, e.answer) for e in (Task("train", 0).sample(i) for i in range(4))]
    assert got == [
        ("what color is the square?", "yellow"),
        ("where is the blue square?", "middle left"),
        ("how many red shapes are there?", "0"),
        ("which shape is left of the yellow square?", "green square"),
    ]


def test_splits_are_disjoint(examples):
    train = {e.scene.key() for e in examples["train"]}
    eval_ = {e.scene.key() for e in examples["eval"]}
    assert not train & eval_
    assert all(split_of(e.scene) == "train" for e in examples["train"])
    assert all(split_of(e.scene) == "eval" for e in examples["eval"])


def test_question_types_cycle(examples):
    assert [e.qtype for e in examples["train"][:8]] == list(QTYPES) * 2


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="split must be one of"):
        Task("test")


def solve(scene, question):
    """Answer ``question`` from the scene alone; asserts the answer is unique."""
    shapes = scene.shapes
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (shape,) = [s for s in shapes if s.kind == m[1]]
        return shape.color
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
        (shape,) = [s for s in shapes if (s.color, s.kind) == (m[1], m[2])]
        return f"{ROWS[shape.row]} {COLUMNS[shape.col]}"
    if m := re.fullmatch(r"how many (?:(\w+) )?shapes are there\?", question):
        return str(sum(m[1] in (None, s.color) for s in shapes))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(s.kind == m[1] for s in shapes))
    if m := re.fullmatch(r"which shape is left of the (\w+) (\w+)\?", question):
        (ref,) = [s for s in shapes if (s.color, s.kind) == (m[1], m[2])]
        (left,) = [s for s in shapes if s.col < ref.col]
        return f"{left.color} {left.kind}"
    raise AssertionError(f"unknown question form: {question}")


def test_every_question_is_answered_by_its_scene(examples):
    for e in examples["train"] + examples["eval"]:
        assert solve(e.scene, e.question) == e.answer, (e.scene.key(), e.question)


def test_questions_and_answers_are_in_the_enumerated_sets(examples):
    questions, answers = set(all_questions()), set(all_answers())
    for e in examples["train"] + examples["eval"]:
        assert e.question in questions and e.answer in answers


def test_questions_about_one_scene():
    task = Task("train", seed=0)
    for i in range(40):
        qs = task.questions(i, 4)
        assert len(qs) == 4 and qs[0] == task.sample(i)
        assert qs == task.questions(i, 4)  # deterministic
        assert all(q.scene == qs[0].scene and q.image is qs[0].image for q in qs)
        for q in qs:
            assert solve(q.scene, q.question) == q.answer
        # no type asked twice, except count, which fills up when the scene supports few types
        others = [q.qtype for q in qs if q.qtype != "count"]
        assert len(others) == len(set(others)) and "count" in [q.qtype for q in qs]


def test_image_shows_the_scene(examples):
    for e in examples["train"][:40]:
        pixels = np.asarray(e.image)
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        occupied = {(s.row, s.col): COLORS[s.color] for s in e.scene.shapes}
        for row in range(3):
            for col in range(3):
                x, y = cell_center(row, col)
                assert tuple(pixels[y, x]) == occupied.get((row, col), BACKGROUND)


def test_scenes_cover_every_shape_count_colour_kind_and_cell(examples):
    shapes = [s for e in examples["train"] for s in e.scene.shapes]
    assert {len(e.scene.shapes) for e in examples["train"]} == {1, 2, 3, 4}
    assert {s.color for s in shapes} == set(COLORS)
    assert {s.kind for s in shapes} == {"circle", "square", "triangle"}
    assert {(s.row, s.col) for s in shapes} == {(r, c) for r in range(3) for c in range(3)}


def test_targets_are_the_shapes_the_answer_is_read_from(examples):
    from model.tasks.scenes import shape_cells

    for ex in examples["train"][:40]:
        names = {s.name for s in ex.targets}
        if ex.qtype in ("color", "where"):
            assert len(ex.targets) == 1
            assert ex.answer in (ex.targets[0].color, ex.targets[0].place)
        elif ex.qtype == "count":
            assert len(ex.targets) == int(ex.answer)
        else:  # the named shape and the one left of it, which is the answer
            ref, left = ex.targets
            assert left.name == ex.answer and left.col < ref.col and ref.name in ex.question
        assert names <= {s.name for s in ex.scene.shapes}
        cells = ex.target_cells(8)
        mask = shape_cells(ex.targets, 8)
        assert cells.dtype == np.int32 and len(cells) == mask.sum()
        assert all(mask[r, c] for r, c in cells)


def test_shape_cells_cover_the_drawn_shape():
    from model.tasks.scenes import Scene, Shape, draw_scene, shape_cells

    shape = Shape(1, 2, "red", "square")  # middle right
    mask = shape_cells((shape,), 8)
    pixels = np.asarray(draw_scene(Scene((shape,))))
    drawn = (pixels != BACKGROUND).any(-1).reshape(8, 32, 8, 32).mean(axis=(1, 3))
    np.testing.assert_array_equal(mask, drawn >= 0.1)
    assert mask[:, :5].sum() == 0 and mask[3:5, 6:8].all()
    assert shape_cells((), 8).sum() == 0
