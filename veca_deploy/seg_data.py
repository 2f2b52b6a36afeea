"""Deterministic segmentation samples built from Fashion-MNIST: real shapes, exact masks, offline.

Each sample is made from ``(seed, index)`` alone, so any slice can be regenerated anywhere (a
test, a calibration set, another machine) without storing it; ``write_split`` streams a split
to .npy files in chunks for tools that want files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data import fashion_mnist
from .errors import UsageError

#: item pixels above this are labelled (the class), everything else is background (0)
ITEM_THRESHOLD = 40
#: mask values: 0 = background, 1..10 = Fashion-MNIST class + 1
NUM_SEG_CLASSES = 11


class SegSampler:
    """Images ``uint8 [H, W, 3]`` with 1-3 Fashion-MNIST items (scaled 2-3x, random places, later
    ones on top) on a noisy background, and masks ``uint8 [H, W]`` (class + 1, 0 = background).

    ``sample(i)`` is a pure function of ``(split, size, seed, i)``; ``batch(n)`` returns the next
    ``n`` samples, so two samplers built alike yield the same sequence.
    """

    def __init__(self, split: str = "train", size: int = 224, seed: int = 0) -> None:
        if split not in ("train", "test"):
            raise UsageError(f"split must be 'train' or 'test', got {split!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 28:
            raise UsageError(f"size must be an int >= 28 (one Fashion-MNIST item), got {size!r}")
        self.split, self.size, self.seed = split, size, int(seed)
        self.images, self.labels = fashion_mnist(split)
        self.position = 0
        hi = min(3.0, size / 28.0)
        self.scale_range = (min(2.0, hi), hi)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``: (image uint8 [S, S, 3], mask uint8 [S, S])."""
        s = self.size
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, int(i)])
        base = rng.uniform(10, 50)
        img = np.clip(rng.normal(base, 12.0, size=(s, s, 3)), 0, 255)
        mask = np.zeros((s, s), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(0, len(self.labels)))
            item, label = self.images[j], int(self.labels[j])
            side = int(round(28 * rng.uniform(*self.scale_range)))
            side = max(28, min(side, s))
            idx = np.minimum((np.arange(side) * 28) // side, 27)
            big = item[idx][:, idx]  # nearest-neighbour scale: labels stay exact
            y, x = int(rng.integers(0, s - side + 1)), int(rng.integers(0, s - side + 1))
            on = big > ITEM_THRESHOLD
            gain = rng.uniform(0.6, 1.0, size=3)
            region = img[y:y + side, x:x + side]
            region[on] = big[on, None].astype(np.float64) * gain
            mask[y:y + side, x:x + side][on] = label + 1
        return img.astype(np.uint8), mask

    def samples(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``start..stop-1`` stacked: (images [n, S, S, 3], masks [n, S, S])."""
        n = max(0, stop - start)
        imgs = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        masks = np.empty((n, self.size, self.size), dtype=np.uint8)
        for k in range(n):
            imgs[k], masks[k] = self.sample(start + k)
        return imgs, masks

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` samples of this sampler's sequence."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"n must be a positive int, got {n!r}")
        out = self.samples(self.position, self.position + n)
        self.position += n
        return out


def write_split(folder: str | os.PathLike, n: int, split: str = "test", seed: int = 0, size: int = 224,
                chunk: int = 256) -> Path:
    """Write ``images.npy`` [n, S, S, 3] and ``masks.npy`` [n, S, S] (uint8) chunk by chunk
    through memory maps, so a large split never has to fit in memory."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a positive int, got {n!r}")
    sampler = SegSampler(split, size, seed)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    imgs = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    masks = np.lib.format.open_memmap(out / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    try:
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            imgs[a:b], masks[a:b] = sampler.samples(a, b)
        imgs.flush()
        masks.flush()
    finally:
        del imgs, masks
    return out


#: the built-in segmentation data as a calibration / evaluation source name: calibration draws
#: canvases from the Fashion-MNIST TRAIN images, evaluation from the TEST images
SEG_SOURCE = "seg-fashion-mnist"
#: canvas side of the built-in data (the reference seg model's training size)
SEG_SIZE = 224


class SegImages:
    """``n`` samples of one split, made when indexed (a pass holds one batch, never the split):
    ``images[a:b]`` is uint8 ``[b-a, S, S, 3]``; :attr:`masks` indexes the same samples' masks."""

    def __init__(self, n: int, split: str = "test", size: int = SEG_SIZE, seed: int = 0) -> None:
        self.sampler = SegSampler(split, size, seed)
        self.n = int(n)
        self.masks = _Masks(self)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for j in range(self.n):
            yield self.sampler.sample(j)[0]

    def _rows(self, i) -> list[int]:
        if isinstance(i, slice):
            return list(range(*i.indices(self.n)))
        if isinstance(i, (list, tuple, np.ndarray)):
            return [int(j) for j in i]
        raise TypeError("SegImages is indexed by a slice or an index array")

    def _pick(self, i, which: int) -> np.ndarray:
        rows = self._rows(i)
        s = self.sampler.size
        out = np.empty((len(rows), s, s, 3) if which == 0 else (len(rows), s, s), dtype=np.uint8)
        for k, j in enumerate(rows):
            if not 0 <= j < self.n:
                raise IndexError(j)
            out[k] = self.sampler.sample(j)[which]
        return out

    def __getitem__(self, i) -> np.ndarray:
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):  # one image [S, S, 3]
            return self._pick([i + self.n if i < 0 else i], 0)[0]
        return self._pick(i, 0)

    def __repr__(self) -> str:
        return f"SegImages({self.n} x {self.sampler.size} px, {self.sampler.split})"


class _Masks:
    def __init__(self, owner: SegImages) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return self.owner.n

    def __getitem__(self, i) -> np.ndarray:
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            return self.owner._pick([i + self.owner.n if i < 0 else i], 1)[0]
        return self.owner._pick(i, 1)
