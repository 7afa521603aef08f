import gzip
import struct

import numpy as np
import pytest
import torch

from sslaudit.idx import IDXError, read_idx


def write_idx(path, array: np.ndarray, type_code: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_reads_uint8_images_with_shape(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("img.gz" if compress else "img")
    write_idx(path, images, compress=compress)
    out = read_idx(path)
    assert out.dtype == torch.uint8 and out.shape == (5, 28, 28)
    assert torch.equal(out, torch.from_numpy(images))


def test_reads_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "v", values, type_code=0x0C)
    assert read_idx(tmp_path / "v").tolist() == [1, -2, 70000]


def test_rejects_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(IDXError, match="magic"):
        read_idx(tmp_path / "bad")


def test_rejects_truncated_file(tmp_path):
    write_idx(tmp_path / "t", np.zeros((4, 3), dtype=np.uint8))
    data = (tmp_path / "t").read_bytes()
    (tmp_path / "t").write_bytes(data[:-2])
    with pytest.raises(IDXError, match="header says"):
        read_idx(tmp_path / "t")
