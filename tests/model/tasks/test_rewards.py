"""model.tasks.rewards on hand-made answers."""

import pytest

from model.tasks.rewards import MALFORMED, normalize, reward


@pytest.mark.parametrize(
    ("qtype", "response", "answer", "expected"),
    [
        ("color", "red", "red", 1.0),
        ("color", "  Red. ", "red", 1.0),
        ("color", "blue", "red", 0.0),
        ("color", "purple", "red", MALFORMED),
        ("color", "red circle", "red", MALFORMED),
        ("color", "", "red", MALFORMED),
        ("where", "top left", "top left", 1.0),
        ("where", "TOP\tLeft!", "top left", 1.0),
        ("where", "top right", "top left", 0.5),
        ("where", "bottom left", "top left", 0.5),
        ("where", "bottom center", "top left", 0.0),
        ("where", "left top", "top left", MALFORMED),
        ("where", "top", "top left", MALFORMED),
        ("count", "2", "2", 1.0),
        ("count", " two ", "2", 1.0),
        ("count", "3", "2", 0.5),
        ("count", "1", "2", 0.5),
        ("count", "4", "2", 0.0),
        ("count", "0", "0", 1.0),
        ("count", "many", "2", MALFORMED),
        ("count", "-1", "0", MALFORMED),
        ("count", "²", "2", MALFORMED),
        ("left_of", "red circle", "red circle", 1.0),
        ("left_of", "Red  Circle.", "red circle", 1.0),
        ("left_of", "red square", "red circle", 0.5),
        ("left_of", "blue circle", "red circle", 0.5),
        ("left_of", "blue square", "red circle", 0.0),
        ("left_of", "circle", "red circle", MALFORMED),
        ("left_of", "the red circle", "red circle", MALFORMED),
    ],
)
def test_reward(qtype, response, answer, expected):
    assert reward(qtype, response, answer) == expected


def test_normalize():
    assert normalize("  Top \n  LEFT. ") == "top left"
    assert normalize("red!") == "red"


@pytest.mark.parametrize(
    ("qtype", "answer"),
    [("color", "red"), ("where", "top left"), ("count", "2"), ("left_of", "red circle")],
)
def test_a_sentence_answer_is_malformed_but_its_content_counts(qtype, answer):
    from model.tasks.questions import sentence
    from model.tasks.rewards import content_reward

    said = sentence(qtype, answer)
    assert said.endswith(answer) and said != answer
    assert reward(qtype, said, answer) == MALFORMED
    assert content_reward(qtype, said, answer) == 1.0
    assert content_reward(qtype, answer, answer) == 1.0  # the bare answer too
    assert content_reward(qtype, "it is", answer) == MALFORMED
