"""The synthetic visual question task the embedded tiny Qwen3-VL learns: shapes on a 3x3 grid.

``Task(split, seed).sample(i)`` is a pure function of (split, seed, i): the i-th example's
question type cycles through QTYPES, and its scene is drawn from a random stream named by
(seed, split, i). Train and eval never share a scene: every scene belongs to exactly one split,
fixed by a hash of its canonical text (1 in EVAL_ONE_IN scenes is an eval scene), and each split
only keeps its own scenes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

import numpy as np
import PIL.Image

from model.tasks.questions import QTYPES, make_question
from model.tasks.rewards import reward
from model.tasks.scenes import MAX_SHAPES, Scene, Shape, draw_scene, sample_scene, shape_cells

SPLITS = ("train", "eval")
EVAL_ONE_IN = 8


@dataclasses.dataclass(frozen=True)
class Example:
    image: PIL.Image.Image  # 256x256 RGB
    question: str  # "where is the red square?"
    answer: str  # "top left"
    qtype: str  # one of QTYPES
    scene: Scene
    targets: tuple[Shape, ...] = ()  # the shapes the answer is read from (model.tasks.questions)

    def target_cells(self, grid: int) -> np.ndarray:
        """``[m, 2]`` int32 (row, column) of the ``grid`` x ``grid`` image blocks (merged
        vision tokens) the target shapes cover (``scenes.shape_cells``)."""
        return np.argwhere(shape_cells(self.targets, grid)).astype(np.int32)


def split_of(scene: Scene) -> str:
    """'eval' for 1 in EVAL_ONE_IN scenes (by a hash of the scene's text), else 'train'."""
    digest = hashlib.sha256(scene.key().encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % EVAL_ONE_IN == 0 else "train"


class Task:
    """Deterministic examples of one split; ``sample(i)`` for any i >= 0."""

    def __init__(self, split: str = "train", seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.seed = seed

    def sample(self, i: int) -> Example:
        rng = random.Random(f"{self.seed}/{self.split}/{i}")
        qtype = QTYPES[i % len(QTYPES)]
        while True:
            scene = sample_scene(rng, rng.randint(1, MAX_SHAPES))
            if split_of(scene) != self.split:
                continue
            qa = make_question(scene, qtype, rng)
            if qa is not None:
                return Example(draw_scene(scene), *qa[:2], qtype, scene, qa[2])

    def questions(self, i: int, n: int) -> list[Example]:
        """``n`` examples about the scene of ``sample(i)``: that one first, then one of each
        other question type the scene supports (in a seeded random order), then count
        questions (every scene has them). Pretraining asks them together, so an answer
        cannot come from the question alone."""
        first = self.sample(i)
        rng = random.Random(f"{self.seed}/{self.split}/{i}/questions")
        others = [q for q in QTYPES if q != first.qtype]
        rng.shuffle(others)
        more = []
        for qtype in others:
            qa = make_question(first.scene, qtype, rng)
            if qa is not None:
                more.append((qtype, qa))
        while len(more) < n - 1:
            more.append(("count", make_question(first.scene, "count", rng)))
        extra = [Example(first.image, *qa[:2], qtype, first.scene, qa[2]) for qtype, qa in more]
        return [first, *extra][:n]

    def reward(self, example: Example, response: str) -> float:
        """Reward of the model's ``response`` to ``example`` (see model.tasks.rewards)."""
        return reward(example.qtype, response, example.answer)
