"""Reader for the IDX format of (Fashion-)MNIST, gzipped or raw.

>>> images = read_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
>>> images.shape, images.dtype  # doctest: +SKIP
(torch.Size([60000, 28, 28]), torch.uint8)
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

# Third byte of the magic number → element type (big-endian on disk).
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """The file is not a well-formed IDX file."""


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file into a tensor with the file's shape and element type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise IDXError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXError(f"{path}: header says {shape} ({expected} bytes), file has {len(raw) - header}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
