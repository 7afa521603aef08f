"""Image datasets as uint8 tensors, read from disk.

Fashion-MNIST is read from its original IDX files, looked for in, in order:
``$SSLAUDIT_DATA/fashion-mnist``, ``$SSLAUDIT_DATA/FashionMNIST/raw`` (a
torchvision root), ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist``) and ``~/.cache/sslaudit/fashion-mnist``.
``digits`` comes from scikit-learn and is always present.

>>> train = load_dataset("fashion-mnist", split="train")  # doctest: +SKIP
>>> train.images.shape, train.images.dtype  # doctest: +SKIP
(torch.Size([60000, 1, 28, 28]), torch.uint8)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sslaudit.idx import read_idx


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message says how to get it."""


@dataclass(frozen=True)
class ImageData:
    """Images ``(N, C, H, W)`` uint8 with int64 labels (``-1`` when unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("ImageData.images must be a uint8 tensor (N, C, H, W)")
        if len(self.labels) != len(self.images):
            raise ValueError("ImageData needs one label per image")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> "ImageData":
        """Rows ``index`` (a slice or an index tensor) as a new dataset."""
        return ImageData(self.images[index], self.labels[index], name or self.name)

    def as_float(self) -> torch.Tensor:
        """Images as float32 in ``[0, 1]``."""
        return self.images.float().div_(255)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1


def data_roots() -> list[Path]:
    """Folders searched for datasets, most specific first."""
    roots = []
    if os.environ.get("SSLAUDIT_DATA"):
        roots.append(Path(os.environ["SSLAUDIT_DATA"]))
    roots += [Path("/usr/share/datasets"), Path.home() / ".cache" / "sslaudit"]
    return roots


_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET_FMNIST = (
    "Fashion-MNIST was not found. Install it with `sudo apt-get install dataset-fashion-mnist`"
    " (Debian/Ubuntu), or put the four original IDX files (train-images-idx3-ubyte.gz, ...)"
    " in $SSLAUDIT_DATA/fashion-mnist, or run `sslaudit data download fashion-mnist`"
    " (needs torchvision and internet). Searched: "
)


def download_fashion_mnist(root: Path | None = None) -> Path:
    """Fetch the IDX files with torchvision (needs internet and ``sslaudit[zoo]``) into ``root``."""
    root = root or Path.home() / ".cache" / "sslaudit"
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as err:
        raise ImportError("downloading needs torchvision: pip install 'sslaudit[zoo]' "
                          "(or sudo apt-get install dataset-fashion-mnist)") from err
    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def _find_idx(stem: str) -> Path | None:
    for root in data_roots():
        for folder in (root / "fashion-mnist", root / "FashionMNIST" / "raw"):
            for candidate in (folder / f"{stem}.gz", folder / stem):
                if candidate.is_file():
                    return candidate
    return None


def load_fashion_mnist(split: str = "train") -> ImageData:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) from its IDX files."""
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    paths = [_find_idx(stem) for stem in _FMNIST_FILES[split]]
    if None in paths:
        searched = ", ".join(str(r / "fashion-mnist") for r in data_roots())
        raise DataNotFoundError(_HOW_TO_GET_FMNIST + searched)
    images, labels = (read_idx(p) for p in paths)
    return ImageData(images.unsqueeze(1).contiguous(), labels.long(), f"fashion-mnist:{split}")


def load_digits(size: int = 28) -> ImageData:
    """scikit-learn's 1,797 8x8 digits, rescaled to uint8 and resized to ``size``."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    return ImageData(images, torch.from_numpy(bunch.target).long(), "digits")


def load_dataset(name: str, split: str = "train", size: int = 28) -> ImageData:
    """Load a dataset by name: ``fashion-mnist`` or ``digits``."""
    if name in ("fashion-mnist", "fmnist"):
        return load_fashion_mnist(split)
    if name == "digits":
        return load_digits(size)
    raise ValueError(f"unknown dataset {name!r}; choose 'fashion-mnist' or 'digits'")
