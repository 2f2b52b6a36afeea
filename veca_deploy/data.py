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


# ------------------------------------------------------------------------------ real photos
#: Folders of real photos that install offline (Debian ``mate-backgrounds``: 12 nature photos at
#: 1280-2560 px); ``VECA_PHOTOS`` adds folders (``os.pathsep``-separated).
PHOTO_DIRS = ("/usr/share/backgrounds/mate/nature",)
PHOTOS = "photos"


def photo_sources() -> list[str]:
    """Names of the real photos available here: ``skimage:<name>`` and image file paths."""
    names = [f"skimage:{n}" for n, _ in sample_photos()]
    dirs = [*PHOTO_DIRS, *[d for d in os.environ.get("VECA_PHOTOS", "").split(os.pathsep) if d]]
    for d in dirs:
        p = Path(d)
        if p.is_dir():
            names += sorted(str(f) for f in p.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return names


@lru_cache(maxsize=2)
def _photo(name: str) -> np.ndarray:
    if name.startswith("skimage:"):
        return dict(sample_photos())[name.split(":", 1)[1]]
    from PIL import Image

    with Image.open(name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class PhotoCrops:
    """``n`` seeded random crops (35-100 % of the short side, aspect 3:4 to 4:3, random flip) of
    the real photos in :func:`photo_sources`, made when indexed: crop ``i`` comes from photo
    ``i * P // n``, so a pass decodes each photo once and at most two are held, whatever ``n``.
    ``crops[a:b]`` is a list of uint8 HxWx3 arrays."""

    def __init__(self, n: int, seed: int = 0, sources: list[str] | None = None) -> None:
        self.sources = list(sources if sources is not None else photo_sources())
        if not self.sources:
            raise UsageError("no real photos installed: pip install scikit-image, or apt install mate-backgrounds")
        self.n, self.seed = int(n), int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if isinstance(i, (list, tuple, np.ndarray)):
            return [self[int(j)] for j in i]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        img = _photo(self.sources[i * len(self.sources) // self.n])
        rng = np.random.default_rng([self.seed, i])
        h, w = img.shape[:2]
        side = rng.uniform(0.35, 1.0) * min(h, w)
        aspect = rng.uniform(0.75, 4 / 3)
        ch, cw = int(min(h, side * np.sqrt(aspect))), int(min(w, side / np.sqrt(aspect)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y:y + ch, x:x + cw]
        return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)

    def __iter__(self):
        return (self[i] for i in range(self.n))

    def __repr__(self) -> str:
        return f"PhotoCrops({self.n} crops of {len(self.sources)} photos)"
