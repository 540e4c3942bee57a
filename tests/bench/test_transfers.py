import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.transfers import DeviceToHost, group_bytes, steady_groups


def test_notes_device_arrays_fetched_by_asarray_array_and_device_get_in_order():
    x = jnp.ones((3, 4), jnp.float32)
    y = jnp.arange(5, dtype=jnp.int32)
    with DeviceToHost() as seen:
        np.asarray(x + 1)
        np.array(y * 2)
        jax.device_get({"a": y, "b": 3})
        np.asarray(np.ones(7))  # already on the host: not a transfer
    assert seen.transfers == [
        ((3, 4), "float32", 48),
        ((5,), "int32", 20),
        ((5,), "int32", 20),
    ]


def test_restores_numpy_and_jax_on_exit():
    before = (np.asarray, np.array, jax.device_get)
    with pytest.raises(RuntimeError), DeviceToHost():
        raise RuntimeError("inside")
    assert (np.asarray, np.array, jax.device_get) == before


def test_steady_groups_are_the_last_steps_of_the_longer_run():
    prefill = [((4,), "int32", 16), ((128, 128), "float32", 65536)]
    step = [((198,), "float32", 792), ((26,), "int32", 104)]
    short = prefill + step
    long = prefill + step * 4
    groups = steady_groups(short, long, 3)
    assert groups == [step] * 3
    assert group_bytes(groups[0]) == 896


def test_steady_groups_refuse_uneven_or_changing_steps():
    step = [((8,), "float32", 32)]
    with pytest.raises(ValueError, match="fixed group"):
        steady_groups(step, step * 4, 2)  # 3 more transfers in 2 more steps
    with pytest.raises(ValueError, match="same arrays"):
        steady_groups(step, step + [((8,), "float32", 32), ((9,), "float32", 36)], 2)
