from dash.snapshot import snapshot
from tests.dash import events as ev
from tests.dash.live_rollout import rollout


def test_snapshot_runs_the_rollout_for_n_steps_and_prints_plain_text():
    text = snapshot(rollout(rate=1000), steps=5, size=(160, 48))
    rows = text.splitlines()
    assert len(rows) == 48 and "\x1b" not in text
    assert 'Tok[4]: "w4"' in text  # five decode steps: 0..4
    for title in ("DECODE LIVE", "ATTENTION FLOW", "HEAD DETAIL L0 H0", "KV CACHE MEMORY"):
        assert title in text


def test_snapshot_shows_n_steps_of_a_rollout_that_stops_late():
    """A rollout that decodes in chunks still delivers the rest of a chunk after the stop."""

    def chunked(sink, control):
        for event in ev.episode_events(8):
            sink.emit(event)

    text = snapshot(chunked, steps=5, size=(160, 48))
    assert 'Tok[4]: "t4"' in text


def test_snapshot_of_a_failing_rollout_shows_the_error(tmp_path):
    out = tmp_path / "rec.jsonl"
    text = snapshot(rollout(rate=1000, fail_after=2), steps=50, size=(120, 40), record=str(out))
    assert "ROLLOUT FAILED" in text and "test rollout failed at step 2" in text
    assert "FAILED" in text.splitlines()[1]
    assert '"type": "decode"' in out.read_text()
