"""Reading safetensors files slice by slice with positioned reads: the same values as the
safetensors package's own reader, and one-line errors for files that are not whole."""

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from model.safetensors_file import FormatError, SafetensorsFile


@pytest.fixture
def tensors(tmp_path):
    rng = np.random.default_rng(0)
    values = {
        "matrix": rng.standard_normal((7, 5)).astype(np.float32),
        "half": rng.standard_normal((4, 3, 2)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(9, dtype=np.int64),
        "scalar": np.array(3.5, np.float32),
    }
    path = tmp_path / "x.safetensors"
    save_file(values, path)
    return path, values


def test_every_slice_reads_as_numpy_slices_it(tensors):
    path, values = tensors
    with SafetensorsFile(path) as f:
        assert sorted(f.names()) == sorted(values)
        assert f.shape("half") == (4, 3, 2) and f.dtype("half") == "BF16"
        for name, value in values.items():
            got = f.read(name)
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
        for index in [(slice(2, 5),), (slice(0, 7), slice(1, 4)), (slice(6, 7), slice(0, 5))]:
            np.testing.assert_array_equal(f.read("matrix", index), values["matrix"][index])
        index = (slice(1, 3), slice(2, 3), slice(0, 2))
        np.testing.assert_array_equal(f.read("half", index), values["half"][index])


def test_files_that_are_not_whole_are_refused(tensors, tmp_path):
    path, _ = tensors
    data = path.read_bytes()
    for name, content in [
        ("short", data[:5]),
        ("cut", data[: len(data) - 8]),
        ("header", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
        ("huge", b"\xff" * 8 + data[8:]),
    ]:
        broken = tmp_path / f"{name}.safetensors"
        broken.write_bytes(content)
        with pytest.raises(FormatError):
            SafetensorsFile(broken)
