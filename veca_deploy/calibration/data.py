"""Calibration data: where images come from, separated from who consumes them.

A :class:`CalibrationSet` is a deterministic, seeded sample of raw images from one source (a
folder of jpg/png, a ``.npy``/``.npz`` array or the built-in ``fashion-mnist`` TRAIN split),
preprocessed with the bundle's own :class:`~veca_deploy.preprocess.Preprocess`. Backends read it
through :class:`CalibrationReader`, the ``get_next()``/``rewind()`` protocol of
``onnxruntime.quantization.CalibrationDataReader``, or iterate it (NNCF). numpy only; Pillow
is imported when a folder is read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, QuantizationError
from ..preprocess import Preprocess, resize_bilinear, to_hwc_batch

#: Images drawn by default, and the fewest accepted without ``force`` (ranges from fewer
#: images are noisy: the tails that set activation scales are barely sampled).
DEFAULT_COUNT = 512
MIN_COUNT = 300
DEFAULT_SEED = 0
BUILTIN = "fashion-mnist"
#: Calibration uses this split; accuracy is measured on the other one, so they never overlap.
CALIB_SPLIT, EVAL_SPLIT = "train", "test"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Smallest image side we resize from: below that the upscaled image carries no real statistics.
MIN_SIDE = 4


@dataclass
class CalibrationSet:
    """Preprocessed calibration images plus the provenance recorded in the manifest."""

    images: np.ndarray  # float32 NCHW, normalized
    source: str
    kind: str  # "fashion-mnist" | "folder" | "array"
    seed: int
    requested: int
    forced: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(len(self.images))

    @property
    def digest(self) -> str:
        """sha256 of the exact tensors fed to calibration: any change of data, sampling,
        preprocessing or size changes it, so cached statistics are never served stale."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "count": self.count, "requested": self.requested,
                "seed": self.seed, "forced_below_minimum": self.forced, "min_count": MIN_COUNT,
                "sha256": self.digest, **self.info}

    def reader(self, batch_size: int = 16, extra: dict[str, np.ndarray] | None = None,
               input_name: str = "images") -> "CalibrationReader":
        return CalibrationReader(self.images, batch_size=batch_size, extra=extra, input_name=input_name)


class CalibrationReader:
    """``get_next() -> feed | None`` and ``rewind()`` over fixed batches (ORT's reader protocol),
    also iterable. ``extra`` holds constant feeds (e.g. the elastic graph's ``core_select``);
    a list of them is cycled batch by batch so every tier contributes statistics."""

    def __init__(self, images: np.ndarray, batch_size: int = 16,
                 extra: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None = None,
                 input_name: str = "images") -> None:
        if batch_size < 1:
            raise QuantizationError(f"calibration batch size must be >= 1, got {batch_size}")
        self.images = images
        self.batch_size = batch_size
        self.extras = extra if isinstance(extra, list) else [extra or {}]
        self.input_name = input_name
        self._i = 0

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self):
            return None
        b = self._i
        self._i += 1
        x = np.ascontiguousarray(self.images[b * self.batch_size:(b + 1) * self.batch_size])
        return {self.input_name: x, **self.extras[b % len(self.extras)]}

    def rewind(self) -> None:
        self._i = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed


# ------------------------------------------------------------------------------ sources
def load_calibration(source: str | Path | np.ndarray, pre: Preprocess, size: tuple[int, int], *,
                     count: int | None = None, seed: int = DEFAULT_SEED, force: bool = False,
                     channels: int = 3) -> CalibrationSet:
    """Sample ``count`` images (default 512) from ``source`` and preprocess them to ``size``.

    Refuses (QuantizationError) empty or mismatched data, and fewer than 300 images unless
    ``force`` (which is recorded).
    """
    requested = DEFAULT_COUNT if count is None else int(count)
    if requested < 1:
        raise QuantizationError(f"calibration count must be positive, got {requested}")
    if not force and requested < MIN_COUNT:
        raise QuantizationError(f"{requested} calibration images requested, fewer than the minimum {MIN_COUNT}: "
                                "scales from so few images are unreliable (pass --allow-small-calib to accept, it is recorded)")
    x, kind, name, info = read_source(source, requested, seed, channels)
    n = len(x)
    if n == 0:
        raise QuantizationError(f"calibration source {name} is empty")
    if n < MIN_COUNT and not force:
        raise QuantizationError(f"calibration source {name} has only {n} images, fewer than the minimum {MIN_COUNT} "
                                "(pass --allow-small-calib to quantize anyway; it is recorded in the manifest)")
    images = preprocess_raw(x, pre, size, name, channels)
    return CalibrationSet(images=images, source=name, kind=kind, seed=seed, requested=requested,
                          forced=n < MIN_COUNT, info=info)


def read_source(source: str | Path | np.ndarray, count: int, seed: int = DEFAULT_SEED, channels: int = 3
                ) -> tuple[Any, str, str, dict[str, Any]]:
    """Raw sampled data (uint8 images or float32 NCHW), its kind, display name and provenance."""
    requested = count
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {}
    if isinstance(source, np.ndarray):
        kind, name, x = "array", f"array{list(source.shape)}", _validate_array(source, "array", channels)
        x, info["indices_sha256"] = _sample_rows(x, requested, rng)
    elif str(source) == BUILTIN:
        from ..data import fashion_mnist

        kind, name = "fashion-mnist", f"{BUILTIN}:{CALIB_SPLIT}"
        raw, _ = fashion_mnist(CALIB_SPLIT)
        x, info["indices_sha256"] = _sample_rows(raw, requested, rng)
        info.update(split=CALIB_SPLIT, eval_split=EVAL_SPLIT, identical_to_test_images=_test_duplicates(x))
        assert CALIB_SPLIT != EVAL_SPLIT  # calibration never sees the images accuracy is measured on
    else:
        path = Path(source)
        if path.is_dir():
            kind, name = "folder", str(path)
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise QuantizationError(f"calibration folder {path} holds no .jpg/.jpeg/.png images")
            pick = np.sort(rng.permutation(len(files))[:requested]) if len(files) > requested else np.arange(len(files))
            x = [_read_image(files[i]) for i in pick]
            info["files_sha256"] = hashlib.sha256("\n".join(str(files[i].relative_to(path)) for i in pick)
                                                  .encode()).hexdigest()
        elif path.suffix.lower() in (".npy", ".npz") and path.is_file():
            kind, name = "array", str(path)
            x, info["indices_sha256"] = _sample_rows(_validate_array(_read_array(path), path.name, channels),
                                                     requested, rng)
        elif path.exists():
            raise QuantizationError(f"calibration source {path} is neither a folder of images nor a .npy/.npz file")
        else:
            raise QuantizationError(f"calibration source {str(source)!r} not found: give a folder of images, "
                                    f"a .npy/.npz file or '{BUILTIN}'")
    return x, kind, name, info


def _sample_rows(x: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A seeded, order-preserving sample of rows; returns it and a hash of the picked indices."""
    if len(x) > count:
        idx = np.sort(rng.permutation(len(x))[:count])
    else:
        idx = np.arange(len(x))
    return x[idx], hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:16]


def _read_array(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise QuantizationError(f"{path.name}: cannot read the array ({e})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        key = next((k for k in ("images", "x", "data") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise QuantizationError(f"{path.name}: .npz with arrays {keys}; name the image array 'images'")
        return data[key]
    return data


def _validate_array(x: np.ndarray, name: str, channels: int) -> np.ndarray:
    """Accept uint8 NHW / NHWC raw images or float32 NCHW normalized tensors."""
    if x.size == 0 or len(x) == 0:
        raise QuantizationError(f"calibration data {name} is empty (shape {list(x.shape)})")
    if x.dtype == np.uint8:
        if x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3)):
            return x
        raise QuantizationError(f"calibration data {name}: uint8 images must be NxHxW or NxHxWxC with C in (1, 3), "
                                f"got shape {list(x.shape)}")
    if x.dtype == np.float32:
        if x.ndim == 4 and x.shape[1] == channels:
            if not np.isfinite(x).all():
                raise QuantizationError(f"calibration data {name} contains NaN or Inf")
            return x
        raise QuantizationError(f"calibration data {name}: float32 data must be normalized NCHW with {channels} "
                                f"channels, got shape {list(x.shape)}")
    raise QuantizationError(f"calibration data {name}: dtype {x.dtype} not accepted (uint8 raw images or "
                            "float32 normalized NCHW)")


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise QuantizationError("reading an image folder needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types for corrupt files
        raise QuantizationError(f"{path}: not a readable image ({type(e).__name__})") from None


def _check_side(shape: tuple[int, ...], name: str) -> None:
    if min(shape) < MIN_SIDE:
        raise QuantizationError(f"calibration data {name}: images of {shape[0]}x{shape[1]} px cannot be resized "
                                f"meaningfully (smallest side must be >= {MIN_SIDE})")


def preprocess_raw(x, pre: Preprocess, size: tuple[int, int], name: str, channels: int) -> np.ndarray:
    h, w = size
    if isinstance(x, np.ndarray) and x.dtype == np.float32:  # already normalized NCHW: resize only
        _check_side(x.shape[2:], name)
        if x.shape[2:] == (h, w):
            return np.ascontiguousarray(x)
        return np.stack([resize_bilinear(img.transpose(1, 2, 0), h, w).transpose(2, 0, 1) for img in x]
                        ).astype(np.float32)
    for img in (x if isinstance(x, list) else x[:1]):
        _check_side(np.asarray(img).shape[:2], name)
    if channels != 3:
        raise QuantizationError(f"the model takes {channels} channels; raw-image calibration produces RGB")
    try:
        return pre(list(x) if isinstance(x, np.ndarray) else x, (h, w))
    except InputError as e:
        raise QuantizationError(f"calibration data {name}: {e}") from None


def _test_duplicates(raw: np.ndarray) -> int:
    """Exact calibration images that also occur in the test split (Fashion-MNIST has a few
    byte-identical images across splits): recorded, not assumed away."""
    from ..data import fashion_mnist

    test, _ = fashion_mnist(EVAL_SPLIT)
    seen = {hashlib.sha1(t.tobytes()).digest() for t in test}
    return int(sum(hashlib.sha1(np.ascontiguousarray(r).tobytes()).digest() in seen for r in raw))


__all__ = ["BUILTIN", "CalibrationReader", "CalibrationSet", "DEFAULT_COUNT", "MIN_COUNT", "load_calibration",
           "preprocess_raw", "read_source", "to_hwc_batch"]
