"""Reward of a model's answer, per question type.

Answers are compared after normalisation (lower case, whitespace collapsed, one trailing '.'
or '!' dropped). An answer that does not parse as an answer of the question's type gets
MALFORMED; a parsable but wrong answer gets 0.0 or partial credit:

- ``color``:   1.0 right colour, 0.0 another colour.
- ``where``:   1.0 right cell, 0.5 right row or right column only.
- ``count``:   1.0 exact, 0.5 off by one. Digits or a number word ("two").
- ``left_of``: 1.0 right colour and kind, 0.5 one of the two.
"""

from __future__ import annotations

from model.tasks.scenes import COLORS, COLUMNS, KINDS, ROWS

MALFORMED = -0.5
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def normalize(text: str) -> str:
    """'  Top   Left. ' -> 'top left'"""
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith((".", "!")) else text


def two_words(text: str, first: tuple[str, ...], second: tuple[str, ...]):
    """('top', 'left') if text is one word of ``first`` then one of ``second``, else None."""
    words = normalize(text).split()
    if len(words) == 2 and words[0] in first and words[1] in second:
        return words[0], words[1]
    return None


def parse_count(text: str) -> int | None:
    text = normalize(text)
    if text.isascii() and text.isdigit():
        return int(text)
    return NUMBER_WORDS.index(text) if text in NUMBER_WORDS else None


def color_reward(response: str, answer: str) -> float:
    color = normalize(response)
    if color not in COLORS:
        return MALFORMED
    return 1.0 if color == answer else 0.0


def where_reward(response: str, answer: str) -> float:
    return pair_reward(two_words(response, ROWS, COLUMNS), answer)


def count_reward(response: str, answer: str) -> float:
    n = parse_count(response)
    if n is None:
        return MALFORMED
    return {0: 1.0, 1: 0.5}.get(abs(n - int(answer)), 0.0)


def left_of_reward(response: str, answer: str) -> float:
    return pair_reward(two_words(response, tuple(COLORS), KINDS), answer)


def pair_reward(pair: tuple[str, str] | None, answer: str) -> float:
    """1.0 if both words match ``answer``, 0.5 if one does, MALFORMED if unparsable."""
    if pair is None:
        return MALFORMED
    matches = sum(a == b for a, b in zip(pair, answer.split(), strict=True))
    return {2: 1.0, 1: 0.5}.get(matches, 0.0)


REWARD_FUNCTIONS = {
    "color": color_reward,
    "where": where_reward,
    "count": count_reward,
    "left_of": left_of_reward,
}


def reward(qtype: str, response: str, answer: str) -> float:
    """Reward of ``response`` to a question of type ``qtype`` whose correct answer is ``answer``."""
    return REWARD_FUNCTIONS[qtype](response, answer)


def content_reward(qtype: str, response: str, answer: str) -> float:
    """The reward of what ``response`` says, its form aside: of its last words, as many as
    ``answer`` has ('it is red' is rewarded as 'red'). For reports, never for training."""
    words = normalize(response).split()
    return reward(qtype, " ".join(words[-len(answer.split()) :]), answer)
