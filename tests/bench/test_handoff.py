import numpy as np

from bench.handoff import copy_event, event_bytes
from model import telemetry as tm
from tests.dash import events as ev


def _decode_event() -> tm.DecodeEvent:
    grid = np.zeros((4, 4), np.float32)
    stats = tm.HeadStats(grid, grid, grid, grid, np.zeros((4, 4), np.int32))
    return tm.DecodeEvent(
        episode=0, sample=0, step=3, token_id=7, token_text="x", prob=0.5,
        top_ids=np.zeros(5, np.int32), top_probs=np.zeros(5, np.float32), top_texts=("x",) * 5,
        cache_len=90, cache_capacity=128, position=(1, 1, 1), stats=stats, layer=0, head=0,
        attn_row=np.zeros(90, np.float32), elapsed_ms=1.0, done=False,
    )  # fmt: skip


def test_event_bytes_counts_every_array_of_the_event():
    # 5 [4, 4] stats grids of 4-byte values, top-5 ids and probabilities, a 90-slot row
    assert event_bytes(_decode_event()) == 5 * 16 * 4 + 5 * 4 + 5 * 4 + 90 * 4


def test_copy_event_has_fresh_arrays_and_the_new_step():
    event = _decode_event()
    copy = copy_event(event, 11)
    assert copy.step == 11 and event.step == 3
    assert not np.shares_memory(copy.attn_row, event.attn_row)
    assert not np.shares_memory(copy.stats.entropy, event.stats.entropy)
    assert event_bytes(copy) == event_bytes(event)


def test_copy_event_copies_a_chunk_with_its_new_first_step():
    chunk = ev.chunk([ev.decode(step) for step in range(4)])
    copy = copy_event(chunk, 40)
    assert copy.first == 40 and chunk.first == 0
    assert not np.shares_memory(copy.attn_rows, chunk.attn_rows)
    assert not np.shares_memory(copy.stats.argmax, chunk.stats.argmax)
    assert event_bytes(copy) == event_bytes(chunk)
