import numpy as np
import pytest

from dash import state
from dash.sink import EventSink
from model import telemetry as tm
from tests.dash.test_record import ListSink


def test_conveniences_build_contract_events_and_measure_step_time():
    target = ListSink()
    sink = EventSink(target)
    for step in range(3):
        sink.decode(
            step=step,
            token_id=5,
            token_text="a",
            prob=0.5,
            cache_len=10 + step,
            cache_capacity=64,
            top_ids=[5, 6],
            top_probs=[0.5, 0.2],
            top_texts=["a", "b"],
        )
    sink.train(step=1, reward_mean=0.5, kl=0.01)
    sink.credit(["a", "b"], [0.3, -0.1], step=1)
    decodes = [e for e in target.events if isinstance(e, tm.DecodeChunk)]
    assert [len(d) for d in decodes] == [1, 1, 1]
    assert decodes[0].elapsed_ms is None and decodes[1].elapsed_ms >= 0
    assert decodes[0].top_ids.dtype == np.int32 and decodes[0].top_ids.shape == (1, 2)
    assert decodes[0].stats is None and decodes[0].top_texts == (("a", "b"),)
    train = target.events[3]
    assert isinstance(train, tm.TrainEvent) and train.loss is None and train.kl == 0.01
    credit = target.events[4]
    assert credit.tokens == ("a", "b") and credit.credits.dtype == np.float32
    # the view model takes them, and missing values stay missing
    view = state.View()
    for e in target.events:
        view = state.reduce(view, e)
    assert view.decode.last_step == 2 and view.train.loss is None
    assert view.tokens_per_s is None or view.tokens_per_s > 0


def test_round_trip_of_convenience_events_through_json():
    import json

    target = ListSink()
    EventSink(target).decode(
        step=0, token_id=1, token_text="x", prob=1.0, cache_len=1, cache_capacity=4
    )
    (record,) = tm.records(target.events[0])
    back = tm.from_record(json.loads(json.dumps(record)))
    assert back.positions is None and back.attn_row() is None and back.stats is None


def test_conveniences_name_a_wrong_keyword_and_a_wrong_type():
    sink = EventSink(ListSink())
    with pytest.raises(TypeError, match="unknown field.*token_idz"):
        sink.decode(step=0, token_idz=1, token_text="x", prob=1.0, cache_len=1, cache_capacity=4)
    with pytest.raises(tm.RecordError, match="prob"):
        sink.decode(step=0, token_id=1, token_text="x", prob="high", cache_len=1, cache_capacity=4)
    with pytest.raises(tm.RecordError, match="missing field.*reward_mean"):
        sink.train(step=1)
