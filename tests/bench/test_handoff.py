import numpy as np

from bench.handoff import copy_event, event_bytes
from model import telemetry as tm
from tests.dash import events as ev


def _decode_event() -> tm.DecodeChunk:
    grid = np.zeros((1, 4, 4), np.float32)
    stats = tm.HeadStats(grid, grid, grid, grid, np.zeros((1, 4, 4), np.int32))
    return tm.DecodeChunk(
        first=3,
        token_ids=np.array([7], np.int32),
        token_texts=("x",),
        probs=np.array([0.5], np.float32),
        top_ids=np.zeros((1, 5), np.int32),
        top_probs=np.zeros((1, 5), np.float32),
        top_texts=(("x",) * 5,),
        cache_lens=np.array([90], np.int32),
        cache_capacity=128,
        positions=np.ones((1, 3), np.int32),
        stats=stats,
        attn_rows=np.zeros((1, 90), np.float32),
        elapsed_ms=1.0,
    )


def test_event_bytes_counts_every_array_of_the_event():
    # 5 [4, 4] stats grids of 4-byte values, top-5 ids and probabilities, a 90-slot row, the
    # token's id, probability, cache length and position
    assert event_bytes(_decode_event()) == 5 * 16 * 4 + 5 * 4 + 5 * 4 + 90 * 4 + 4 * (3 + 3)


def test_copy_event_has_fresh_arrays_and_the_new_step():
    event = _decode_event()
    copy = copy_event(event, 11)
    assert copy.first == 11 and event.first == 3
    assert not np.shares_memory(copy.attn_rows, event.attn_rows)
    assert not np.shares_memory(copy.stats.entropy, event.stats.entropy)
    assert event_bytes(copy) == event_bytes(event)


def test_copy_event_copies_a_chunk_with_its_new_first_step():
    chunk = ev.chunk([ev.decode(step) for step in range(4)])
    copy = copy_event(chunk, 40)
    assert copy.first == 40 and chunk.first == 0
    assert not np.shares_memory(copy.attn_rows, chunk.attn_rows)
    assert not np.shares_memory(copy.stats.argmax, chunk.stats.argmax)
    assert event_bytes(copy) == event_bytes(chunk)
