"""Reading a ``.safetensors`` file with positioned reads, slice by slice.

The format: an 8-byte little-endian header length ``N``, a JSON header of ``N`` bytes naming
each tensor's ``dtype``, ``shape`` and ``data_offsets`` [begin, end) into the data that
follows (row-major). The ``safetensors`` package maps the whole file into memory, and the
pages it touches count as the process's resident memory until the file is closed: loading
a checkpoint that way holds the checkpoint's bytes besides the model. Reading with
``os.pread`` into the array being built leaves them in the kernel's page cache, which is
not the process's memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
MAX_HEADER = 100 << 20  # the format's own limit on the header's size


class FormatError(ValueError):
    """A file that is not a complete safetensors file (one line)."""


class SafetensorsFile:
    """One open ``.safetensors`` file: its tensors' names, dtypes and shapes, and ``read``
    of any slice of one of them. A context manager (closes the file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._tensors, self._data = _header(self._fd, os.fstat(self._fd).st_size)
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def names(self) -> list[str]:
        """The tensors' names, in the header's order."""
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name][1]

    def dtype(self, name: str) -> str:
        """The tensor's dtype in the format's spelling (``"BF16"``, ``"F32"``, ...)."""
        return self._tensors[name][0]

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """The slice ``index`` (one slice per leading axis, steps of 1) of tensor ``name``:
        only its rows along the first axis are read from the file."""
        kind, shape, begin = self._tensors[name]
        dtype = DTYPES[kind]
        if not shape:
            return self._pread(begin, dtype.itemsize, dtype).reshape(())
        first = range(shape[0])[index[0] if index else slice(None)]
        row = math.prod(shape[1:]) * dtype.itemsize
        flat = self._pread(begin + first.start * row, len(first) * row, dtype)
        rows = flat.reshape(len(first), *shape[1:])
        rest = index[1:]
        return np.ascontiguousarray(rows[(slice(None), *rest)]) if rest else rows

    def _pread(self, offset: int, size: int, dtype: np.dtype) -> np.ndarray:
        """``size`` bytes of the data from ``offset`` as a flat array of ``dtype``."""
        buffer = bytearray(size)
        view, done = memoryview(buffer), 0
        while done < size:
            n = os.preadv(self._fd, [view[done:]], self._data + offset + done)
            if n == 0:
                raise FormatError("truncated: a tensor ends past the end of the file")
            done += n
        return np.frombuffer(buffer, dtype)


def _header(fd: int, file_size: int) -> tuple[dict, int]:
    """``{name: (dtype, shape, begin)}`` and where the data starts, checked against the
    file's size."""
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise FormatError("too short for a safetensors header")
    (length,) = struct.unpack("<Q", head)
    if length > min(MAX_HEADER, file_size - 8):
        raise FormatError(f"header length {length} does not fit the file")
    try:
        header = json.loads(os.pread(fd, length, 8))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    data, size = 8 + length, file_size - 8 - length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            kind, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            nbytes = math.prod(shape) * DTYPES[kind].itemsize
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"tensor {name}: bad header entry ({e})") from None
        if end - begin != nbytes or begin < 0:
            raise FormatError(f"tensor {name}: offsets {begin}..{end} for {nbytes} bytes")
        if end > size:
            raise FormatError(f"truncated: tensor {name} ends past the end of the file")
        tensors[name] = (kind, shape, begin)
    return tensors, data
