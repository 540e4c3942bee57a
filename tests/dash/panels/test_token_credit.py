from dash import state
from dash.panels.token_credit import TokenCredit
from tests.dash import events as ev


def test_sorted_by_credit_with_proportional_bars_and_flashing_top():
    text, runs = ev.render(TokenCredit(), (80, 8), ev.frame([ev.credit()]))
    assert "step 3 · sample 0 · reward 1.000 · advantage +0.840" in text[0]
    rows = text[1:5]
    assert [r[1:].split("  ")[0] for r in rows] == ['" blue"', '"The"', '" is"', '" circle"']
    full = [r.count("█") for r in rows]
    assert full[0] > full[3] > full[1] > full[2]  # |0.8| > |-0.2| > |0.1| > |0.05|
    assert ev.attr_of(runs, '" blue"') == "flash_active"
    assert ev.attr_of(runs, "-0.2000") == "value"
    dark = ev.frame([ev.credit()], state.Meters(flash_on=False))
    _, runs = ev.render(TokenCredit(), (80, 8), dark)
    assert ev.attr_of(runs, '" blue"') == "token"


def test_selected_sample_and_overflow():
    frame = ev.frame([ev.credit(3, 0), ev.credit(3, 1)], sample=1)
    text, _ = ev.render(TokenCredit(), (80, 4), frame)
    assert "sample 1" in text[0] and "… 3 more tokens" in text[2]


def test_waiting():
    text, _ = ev.render(TokenCredit(), (80, 4), ev.frame([]))
    assert "waiting for the first finished episode" in text[1]


def test_inference_runs_say_there_is_no_credit():
    text, _ = ev.render(TokenCredit(), (80, 4), ev.frame([ev.run_info(mode="inference")]))
    assert "inference run: no rewards" in text[1]
