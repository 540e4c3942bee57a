"""Questions about a scene, each with exactly one correct answer.

Question types and answer formats:

- ``color``   "what color is the circle?"               -> "red"       (that kind occurs once)
- ``where``   "where is the red square?"                -> "top left"  (row, then column)
- ``count``   "how many shapes are there?", "how many red shapes are there?",
              "how many circles are there?"             -> "2"         (digits, may be "0")
- ``left_of`` "which shape is left of the blue triangle?" -> "red circle": the one shape in a
  column further left than the blue triangle, in any row (asked only when there is exactly one).

``make_question`` returns None when the scene cannot support a question of the given type
(for example no kind occurs exactly once); the caller then draws another scene.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

from model.tasks.scenes import COLORS, COLUMNS, KINDS, MAX_SHAPES, ROWS, Scene

QTYPES = ("color", "where", "count", "left_of")
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


def make_question(scene: Scene, qtype: str, rng: random.Random) -> tuple[str, str] | None:
    """(question, answer) of type ``qtype`` about ``scene``, or None if it has none."""
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
    return TEMPLATES["color"].format(kind=shape.kind), shape.color


def where_question(scene: Scene, rng: random.Random):
    candidates = unique_by_name(scene)
    if not candidates:
        return None
    shape = rng.choice(candidates)
    return TEMPLATES["where"].format(color=shape.color, kind=shape.kind), shape.place


def count_question(scene: Scene, rng: random.Random):
    form = rng.randrange(3)
    if form == 0:
        return TEMPLATES["count_all"], str(len(scene.shapes))
    if form == 1:
        color = rng.choice(list(COLORS))
        n = sum(s.color == color for s in scene.shapes)
        return TEMPLATES["count_color"].format(color=color), str(n)
    kind = rng.choice(KINDS)
    n = sum(s.kind == kind for s in scene.shapes)
    return TEMPLATES["count_kind"].format(kind=kind), str(n)


def left_of_question(scene: Scene, rng: random.Random):
    pairs = []
    for ref in unique_by_name(scene):
        left = [s for s in scene.shapes if s.col < ref.col]
        if len(left) == 1:
            pairs.append((ref, left[0]))
    if not pairs:
        return None
    ref, left = rng.choice(pairs)
    return TEMPLATES["left_of"].format(color=ref.color, kind=ref.kind), left.name


QUESTION_MAKERS = {
    "color": color_question,
    "where": where_question,
    "count": count_question,
    "left_of": left_of_question,
}
