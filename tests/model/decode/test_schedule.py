"""The decode loop's host side: EOS bookkeeping and the chunks' steps."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from model.decode.schedule import Schedule, Tokens

EOS = np.array([9], np.int32)


def test_tokens_keep_each_row_up_to_its_eos():
    kept = Tokens(batch=2, max_new_tokens=4, eos=EOS)
    kept.record(0, np.array([[1, 2], [9, 3]], np.int32))  # row 0 ends at step 1
    before = kept.record(2, np.array([[4, 9], [5, 6]], np.int32))
    np.testing.assert_array_equal(kept.out, [[1, 9, 9, 9], [2, 3, 9, 9]])
    np.testing.assert_array_equal(kept.lengths, [2, 3])
    np.testing.assert_array_equal(before, [[True, False], [True, True]])


def test_steps_advance_by_the_dispatched_chunk_not_the_proposed_one():
    """With several processes every process runs process 0's chunk size, which may differ
    from the size this process proposed: the next chunk starts after the steps that ran."""
    firsts = []

    def deliver(first, selection, results, seconds):
        firsts.append(first)
        return len(results[0])

    schedule = Schedule(Tokens(1, 8, EOS), 8, None, deliver)
    agreed = iter([3, 2, 1, 1])
    for proposed in schedule.chunks():
        count = min(next(agreed), 8 - schedule.step)
        assert proposed >= 1
        schedule.dispatched(count, np.zeros(3, np.int32), (jnp.zeros((count, 1), jnp.int32),))
    assert firsts == [1, 4, 6, 7]
    assert schedule.steps_run == 7
