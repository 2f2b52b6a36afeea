"""Real data that installs offline: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and the
photos bundled with scikit-image. numpy only, so the runtime side can use it too."""

from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import UsageError

FASHION_MNIST_DIR = Path(os.environ.get("VECA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UsageError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UsageError(f"{path}: truncated IDX file")
    return body.reshape(dims)


def fashion_mnist_available() -> bool:
    return all((FASHION_MNIST_DIR / f).is_file() for pair in _FILES.values() for f in pair)


@lru_cache(maxsize=2)
def fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the ``train`` (60k) or ``test`` (10k) split."""
    if split not in _FILES:
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    if not fashion_mnist_available():
        raise UsageError(f"Fashion-MNIST not found under {FASHION_MNIST_DIR}: "
                         "install the Debian package dataset-fashion-mnist")
    img_f, lbl_f = _FILES[split]
    images = read_idx(FASHION_MNIST_DIR / img_f)
    labels = read_idx(FASHION_MNIST_DIR / lbl_f).astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """Real RGB photos (uint8 HWC, 512-1411 px) bundled with scikit-image, if it is installed."""
    try:
        from skimage import data as skd
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        try:
            img = getattr(skd, name)()
        except Exception:  # a missing optional data file: skip that photo
            continue
        if img.ndim == 3 and img.shape[2] == 3:
            out.append((name, np.ascontiguousarray(img)))
    return out
