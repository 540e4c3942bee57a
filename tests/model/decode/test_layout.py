"""The packed telemetry's layout: packing inside a compiled program and unpacking on the
host are generated from one table and give every column back."""

import jax
import numpy as np

from model.decode.layout import COLUMNS, F32, Layout


def test_every_column_round_trips_through_pack_and_unpack():
    layout = Layout(layers=3, heads=4, batch=2, capacity=7)
    rng = np.random.default_rng(0)
    n = 5
    values = {}
    for column in COLUMNS:
        shape = (n, *layout.shape(column))
        if column.dtype == F32:
            values[column.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            values[column.name] = rng.integers(-1000, 1000, shape, dtype=np.int32)
    floats, ints = jax.jit(layout.pack)(values)
    assert floats.dtype == np.float32 and ints.dtype == np.int32
    for packed in (floats, ints):
        width = sum(np.prod(layout.shape(c)) for c in COLUMNS if c.dtype == packed.dtype)
        assert packed.shape == (n, width)
    unpacked = layout.unpack(np.asarray(floats), np.asarray(ints))
    assert unpacked.keys() == values.keys()
    for name, value in values.items():
        assert unpacked[name].dtype == value.dtype, name
        np.testing.assert_array_equal(unpacked[name], value, err_msg=name)


def test_dimensions_come_from_the_run():
    layout = Layout(layers=28, heads=16, batch=8, capacity=4096)
    shapes = {c.name: layout.shape(c) for c in COLUMNS}
    assert shapes["max_weight"] == (28, 16) and shapes["argmax"] == (28, 16)
    assert shapes["row"] == (4096,) and shapes["tokens"] == (8,)
    assert shapes["top_ids"] == (5,) and shapes["position"] == (3,) and shapes["prob"] == ()
