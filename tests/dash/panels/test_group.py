import dataclasses

import numpy as np
import pytest

from dash.layout import Dashboard
from dash.panels.group import Group, intensity, token_values, zero_spread
from tests.dash import events as ev


def _events(**group):
    return [*ev.episode_events(steps=2), ev.group(**group)]


def test_answers_with_reward_advantage_length_and_the_cut_one():
    text, runs = ev.render(Group(), (78, 10), ev.frame(_events()))
    assert "GROUP  step 3 · 4 answers" in text[0]
    assert "q: What colour is the circle?" in text[1]
    assert "▶0 r +1.00 A +1.30 n  2  blue<|im_end|>" in text[2]
    assert " 3 r -0.50 A -1.30 n  4✂ ␛[31mredredredred" in text[5]  # sanitised
    assert ev.attr_of(runs, "▶0") == "selected"
    assert ev.attr_of(runs, "✂") == "warn"
    assert "no gradient" not in text[0]


def test_equal_rewards_are_flagged_as_no_gradient():
    text, runs = ev.render(Group(), (78, 10), ev.frame(_events(rewards=(0.5,) * 4)))
    assert "⚠ equal rewards: no gradient" in text[0]
    assert ev.attr_of(runs, "⚠ equal rewards") == "warn"
    assert zero_spread(ev.group(rewards=(1.0, 1.0, 1.0, 1.0)))
    assert not zero_spread(ev.group())


def test_selected_answer_tokens_by_log_prob_or_entropy():
    g = ev.group()
    frame = ev.frame(_events(), sample=2)
    text, runs = ev.render(Group(), (78, 10), frame)
    assert "▶2 r +0.50" in "\n".join(text)
    line = text[6]
    # answer 2's tokens with their log-probs (row 2 of the 4-column table: -(8 + j) / 8)
    assert line.startswith("│2 by log-prob (e): top -1.00   left -1.12  <|im_end|> -1.25")
    # the colour is the token's probability: exp(-1) = 0.37 -> heat2 of heat0..7
    assert ev.attr_of(runs[6:], "top") == "heat2"
    frame = ev.frame(_events(), sample=2, token_metric=1)
    text, runs = ev.render(Group(), (78, 10), frame)
    assert "2 by entropy (e): top 0.50   left 0.56" in text[6]
    values = token_values(g, 2, "entropy")
    np.testing.assert_allclose(values, g.entropies[2, :3])
    peak = max(float(g.entropies[i, j]) for i, t in enumerate(g.tokens) for j in range(len(t)))
    assert intensity(1.0, "entropy", peak) == pytest.approx(1.0 / peak)
    assert intensity(-0.5, "logprob", 0.0) == pytest.approx(np.exp(-0.5))


def test_selection_scrolls_a_short_panel_and_missing_values_are_said():
    frame = ev.frame(_events(), sample=3)
    text, _ = ev.render(Group(), (78, 5), frame)  # 3 rows: no question, 2 answers, tokens
    assert "▶3" in "\n".join(text) and " 0 r" not in "\n".join(text)
    bare = dataclasses.replace(ev.group(), logprobs=None, entropies=None)
    text, _ = ev.render(Group(), (78, 10), ev.frame([*ev.episode_events(0), bare]))
    assert "0: no per-token log-prob in this group" in "\n".join(text)


def test_waiting_and_inference():
    text, _ = ev.render(Group(), (78, 5), ev.frame([]))
    assert "waiting for the first scored group" in text[1]
    text, _ = ev.render(Group(), (78, 5), ev.frame([ev.run_info(mode="inference")]))
    assert "inference run: no groups" in text[1]


@pytest.mark.parametrize("size", [(160, 48), (100, 30)])
def test_group_on_the_screen(size):
    d = Dashboard()
    d.show(ev.frame([*_events(), ev.train(), ev.credit()], sample=1))
    screen = "\n".join(line.decode() for line in d.render(size).text)
    assert "GROUP  step 3" in screen and "▶1 r +0.00 A -0.40" in screen
    assert "1 by log-prob (e): red" in screen
    if size == (160, 48):  # the question and all four answers
        assert "q: What colour is the circle?" in screen
        assert all(f"{i} r " in screen for i in range(4))
