"""Questions about a scene, each with exactly one correct answer.

Question types and answer formats:

- ``color``   "what color is the circle?"               -> "red"       (that kind occurs once)
- ``where``   "where is the red square?"                -> "top left"  (row, then column)
- ``count``   "how many shapes are there?", "how many red shapes are there?",
              "how many circles are there?"             -> "2"         (digits, may be "0")
- ``left_of`` "which shape is left of the blue triangle?" -> "red circle": the one shape in a
  column further left than the blue triangle, in any row (asked only when there is exactly one).

``make_question`` returns None when the scene cannot support a question of the given type
(for example no kind occurs exactly once); the caller then draws another scene. Otherwise it
returns the question, its answer and the shapes the answer is read from (``targets``): the
asked shape (``color``, ``where``), the shapes counted (``count``, none for "0"), the named
shape and the one left of it (``left_of``).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

from model.tasks.scenes import COLORS, COLUMNS, KINDS, MAX_SHAPES, ROWS, Scene, Shape

QTYPES = ("color", "where", "count", "left_of")
# an answer said as a sentence ending with it: fine for a person, malformed for the reward
SENTENCES = {
    "color": "it is {}",
    "where": "it is {}",
    "count": "there are {}",
    "left_of": "it is {}",
}
TEMPLATES = {
    "color": "what color is the {kind}?",
    "where": "where is the {color} {kind}?",
    "count_all": "how many shapes are there?",
    "count_color": "how many {color} shapes are there?",
    "count_kind": "how many {kind}s are there?",
    "left_of": "which shape is left of the {color} {kind}?",
}


def all_questions() -> list[str]:
    """Every question text the task can ask, sorted."""
    combos = itertools.product(COLORS, KINDS)
    return sorted(
        {t.format(color=c, kind=k) for (c, k), t in itertools.product(combos, TEMPLATES.values())}
    )


def all_answers() -> list[str]:
    """Every correct answer the task can expect, sorted."""
    names = [f"{c} {k}" for c, k in itertools.product(COLORS, KINDS)]
    places = [f"{r} {c}" for r, c in itertools.product(ROWS, COLUMNS)]
    counts = [str(n) for n in range(MAX_SHAPES + 1)]
    return sorted({*COLORS, *names, *places, *counts})


QA = tuple[str, str, tuple[Shape, ...]]  # question, answer, targets


def sentence(qtype: str, answer: str) -> str:
    """``answer`` said as a sentence that ends with it: 'red' -> 'it is red'."""
    return SENTENCES[qtype].format(answer)


def make_question(scene: Scene, qtype: str, rng: random.Random) -> QA | None:
    """(question, answer, targets) of type ``qtype`` about ``scene``, or None if it has none."""
    return QUESTION_MAKERS[qtype](scene, rng)


def unique_by_name(scene: Scene):
    """Shapes whose 'colour kind' occurs once in the scene: the ones a name picks out."""
    names = Counter(s.name for s in scene.shapes)
    return [s for s in scene.shapes if names[s.name] == 1]


def color_question(scene: Scene, rng: random.Random):
    kinds = Counter(s.kind for s in scene.shapes)
    candidates = [s for s in scene.shapes if kinds[s.kind] == 1]
    if not candidates:
        return None
    shape = rng.choice(candidates)
    return TEMPLATES["color"].format(kind=shape.kind), shape.color, (shape,)


def where_question(scene: Scene, rng: random.Random):
    candidates = unique_by_name(scene)
    if not candidates:
        return None
    shape = rng.choice(candidates)
    return TEMPLATES["where"].format(color=shape.color, kind=shape.kind), shape.place, (shape,)


def count_question(scene: Scene, rng: random.Random):
    form = rng.randrange(3)
    if form == 0:
        return TEMPLATES["count_all"], str(len(scene.shapes)), scene.shapes
    if form == 1:
        color = rng.choice(list(COLORS))
        counted = tuple(s for s in scene.shapes if s.color == color)
        return TEMPLATES["count_color"].format(color=color), str(len(counted)), counted
    kind = rng.choice(KINDS)
    counted = tuple(s for s in scene.shapes if s.kind == kind)
    return TEMPLATES["count_kind"].format(kind=kind), str(len(counted)), counted


def left_of_question(scene: Scene, rng: random.Random):
    pairs = []
    for ref in unique_by_name(scene):
        left = [s for s in scene.shapes if s.col < ref.col]
        if len(left) == 1:
            pairs.append((ref, left[0]))
    if not pairs:
        return None
    ref, left = rng.choice(pairs)
    return TEMPLATES["left_of"].format(color=ref.color, kind=ref.kind), left.name, (ref, left)


QUESTION_MAKERS = {
    "color": color_question,
    "where": where_question,
    "count": count_question,
    "left_of": left_of_question,
}
