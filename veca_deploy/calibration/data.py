"""Calibration data: where images come from, separated from who consumes them.

A :class:`CalibrationSet` is a deterministic, seeded sample of raw images from one source (a
folder of jpg/png, a ``.npy``/``.npz`` array or the built-in ``fashion-mnist`` TRAIN split),
preprocessed with the bundle's own :class:`~veca_deploy.preprocess.Preprocess` **batch by batch
when it is read**: the set holds only the sampled raw images (uint8 at their source size, the
float array as given, or for a folder just the file list), so memory is bounded by one batch,
not by the number of images. Backends read it through :class:`CalibrationReader`, the
``get_next()``/``rewind()``/``set_range()`` protocol of
``onnxruntime.quantization.CalibrationDataReader``, or iterate :meth:`CalibrationSet.samples`
(NNCF, one image per item, re-iterable). numpy only; Pillow is imported when a folder is read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError, QuantizationError
from ..images import PILLOW_HINT, read_image
from ..preprocess import Preprocess, resize_bilinear, to_hwc_batch
from ..seg_data import SEG_SOURCE

#: Images drawn by default, and the fewest accepted without ``force`` (ranges from fewer
#: images are noisy: the tails that set activation scales are barely sampled).
DEFAULT_COUNT = 512
MIN_COUNT = 300
DEFAULT_SEED = 0
BUILTIN = "fashion-mnist"
PHOTOS = "photos"  # real high-resolution photos (veca_deploy.data.PhotoCrops), seeded crops
#: The held-out photo stream of the accuracy gates: crops from a seed no calibration sample may
#: use (refused below), so a gate never sees a calibration crop. New crops of the same photos,
#: not new scenes: enough for a parity (feature-cosine) gate, not for a task-accuracy claim.
EVAL_PHOTO_SEED = 2**31 - 1
#: Calibration uses this split; accuracy is measured on the other one, so they never overlap.
CALIB_SPLIT, EVAL_SPLIT = "train", "test"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Smallest image side we resize from: below that the upscaled image carries no real statistics.
MIN_SIDE = 4


def preprocess_batch(height: int, width: int) -> int:
    """Images preprocessed at a time when a whole set is streamed (digest, NNCF, eval): the
    comparator's resolution-sized batch, so one batch of tensors is what is ever held."""
    from ..compare.comparator import default_batch

    return default_batch(int(height), int(width))


class ImageFiles(Sequence):
    """A list of image files decoded only when indexed: ``files[i]`` is a uint8 HxWx3 array,
    ``files[a:b]`` another lazy list. A folder source keeps this instead of decoded images."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ImageFiles(self.files[i])
        if isinstance(i, (list, tuple, np.ndarray)):
            return ImageFiles([self.files[int(j)] for j in i])
        return _read_image(self.files[i])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (_read_image(f) for f in self.files)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.files)} files)"


class CalibrationSet:
    """A seeded calibration sample plus the provenance recorded in the manifest.

    Holds the sampled raw data (``raw``: uint8 images, float32 NCHW as given, or
    :class:`ImageFiles`) and preprocesses it to ``size`` with ``pre`` per batch when read
    (:meth:`batch`, :meth:`batches`, :meth:`reader`, :meth:`samples`). ``digest`` is computed
    from those same batches once, streaming. ``images`` still gives the whole preprocessed
    tensor, but materialises it: for tests and small sets only, no backend uses it.
    ``CalibrationSet(images=x, ...)`` (an already preprocessed float32 NCHW array) still works.
    """

    def __init__(self, images: np.ndarray | None = None, source: str = "array", kind: str = "array",
                 seed: int = DEFAULT_SEED, requested: int | None = None, forced: bool = False,
                 info: dict[str, Any] | None = None, *, raw: Any = None, pre: Preprocess | None = None,
                 size: tuple[int, int] | None = None, channels: int = 3) -> None:
        if images is not None:
            if raw is not None:
                raise ValueError("give either images (preprocessed) or raw, not both")
            raw = images
        if raw is None:
            raise ValueError("a CalibrationSet needs images or raw data")
        if size is None:
            if not (isinstance(raw, np.ndarray) and raw.dtype == np.float32 and raw.ndim == 4):
                raise ValueError("size is required unless the data is float32 NCHW")
            size = (int(raw.shape[2]), int(raw.shape[3]))
        self.raw = raw
        self.pre = pre
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.source = source
        self.kind = kind
        self.seed = seed
        self.requested = len(raw) if requested is None else int(requested)
        self.forced = forced
        self.info = dict(info or {})
        self._digest: str | None = None

    def __repr__(self) -> str:
        return (f"CalibrationSet(source={self.source!r}, kind={self.kind!r}, count={self.count}, "
                f"size={self.size}, seed={self.seed})")

    @property
    def count(self) -> int:
        return int(len(self.raw))

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the (never materialised) preprocessed tensor, NCHW."""
        c = int(self.raw.shape[1]) if _is_float(self.raw) else 3
        return (self.count, c, *self.size)

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` preprocessed: float32 NCHW, exactly what calibration is fed."""
        return preprocess_raw(self.raw[start:stop], self.pre, self.size, self.source, self.channels)

    def batches(self, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """The whole set, one preprocessed batch at a time (default size from the resolution)."""
        bs = int(batch_size or preprocess_batch(*self.size))
        for i in range(0, self.count, bs):
            yield self.batch(i, i + bs)

    @property
    def images(self) -> np.ndarray:
        """The whole preprocessed set as one float32 NCHW array. Materialises every image:
        for tests and small sets; backends read :meth:`batches` / :meth:`reader`."""
        if _is_float(self.raw) and tuple(self.raw.shape[2:]) == self.size:
            return np.ascontiguousarray(self.raw)
        return np.concatenate(list(self.batches()))

    @property
    def digest(self) -> str:
        """sha256 of the exact tensors fed to calibration: any change of data, sampling,
        preprocessing or size changes it, so cached statistics are never served stale.
        Computed once, streaming over preprocessed batches; equal to the sha256 of
        ``str(images.shape)`` + ``images.tobytes()`` of the materialised tensor."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(str(self.shape).encode())
            for xb in self.batches():
                h.update(memoryview(np.ascontiguousarray(xb, dtype=np.float32)).cast("B"))  # no copy
            self._digest = h.hexdigest()
        return self._digest

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "count": self.count, "requested": self.requested,
                "seed": self.seed, "forced_below_minimum": self.forced, "min_count": MIN_COUNT,
                "sha256": self.digest, **self.info}

    def reader(self, batch_size: int = 16, extra: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None = None,
               input_name: str = "images", progress: Callable[[int, int], None] | None = None) -> "CalibrationReader":
        return CalibrationReader(self, batch_size=batch_size, extra=extra, input_name=input_name, progress=progress)

    def samples(self, progress: Callable[[int, int], None] | None = None) -> "CalibrationSamples":
        """One preprocessed image (1xCxHxW) per item, re-iterable (NNCF's data source)."""
        return CalibrationSamples(self, progress)


class CalibrationSamples:
    """Re-iterable, sized view of a :class:`CalibrationSet`, one image per item.

    Every ``iter()`` starts a fresh pass (NNCF iterates its dataset once per statistics pass:
    min/max, then bias correction), preprocessing one resolution-sized batch at a time. No
    ``__getitem__`` on purpose: NNCF then iterates instead of preprocessing image by image."""

    def __init__(self, cal: CalibrationSet, progress: Callable[[int, int], None] | None = None) -> None:
        self.cal = cal
        self.progress = progress  # (images handed out in this pass, count) after every batch

    def __len__(self) -> int:
        return self.cal.count

    def __iter__(self) -> Iterator[np.ndarray]:
        done = 0
        for xb in self.cal.batches():
            for i in range(len(xb)):
                yield xb[i:i + 1]
            done += len(xb)
            if self.progress is not None:
                self.progress(done, self.cal.count)


class CalibrationReader:
    """``get_next() -> feed | None``, ``rewind()`` and ``set_range()`` over fixed batches (ORT's
    reader protocol; ``len()`` is the number of batches), also iterable. ``images`` is a
    :class:`CalibrationSet` (preprocessed lazily, batch by batch) or a float32 NCHW array.
    ``extra`` holds constant feeds (e.g. the elastic graph's ``core_select``); a list of them
    is cycled batch by batch so every tier contributes statistics."""

    def __init__(self, images: np.ndarray | CalibrationSet, batch_size: int = 16,
                 extra: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None = None,
                 input_name: str = "images", progress: Callable[[int, int], None] | None = None) -> None:
        if batch_size < 1:
            raise QuantizationError(f"calibration batch size must be >= 1, got {batch_size}")
        self.images = images
        self.batch_size = batch_size
        self.extras = extra if isinstance(extra, list) else [extra or {}]
        self.input_name = input_name
        self.progress = progress  # (images handed out, total) after every batch
        self._i = 0
        self._end = len(self)

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def _take(self, start: int, stop: int) -> np.ndarray:
        if isinstance(self.images, CalibrationSet):
            return np.ascontiguousarray(self.images.batch(start, stop))
        return np.ascontiguousarray(self.images[start:stop])

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            return None
        b = self._i
        self._i += 1
        x = self._take(b * self.batch_size, (b + 1) * self.batch_size)
        if self.progress is not None:
            self.progress(min(len(self.images), (b + 1) * self.batch_size), len(self.images))
        return {self.input_name: x, **self.extras[b % len(self.extras)]}

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches ``start_index:end_index`` only (ORT's ``CalibStridedMinMax`` calls this)."""
        self._i = max(0, int(start_index))
        self._end = min(len(self), int(end_index))

    def rewind(self) -> None:
        self._i = 0
        self._end = len(self)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed


def _is_float(x: Any) -> bool:
    return hasattr(x, "shape") and getattr(x, "dtype", None) == np.float32


# ------------------------------------------------------------------------------ sources
def load_calibration(source: str | Path | np.ndarray, pre: Preprocess, size: tuple[int, int], *,
                     count: int | None = None, seed: int = DEFAULT_SEED, force: bool = False,
                     channels: int = 3) -> CalibrationSet:
    """Sample ``count`` images (default 512) from ``source``, to be preprocessed to ``size``
    batch by batch when read.

    Refuses (QuantizationError) empty or mismatched data, and fewer than 300 images unless
    ``force`` (which is recorded). Every image is read and preprocessed once here, streaming,
    to compute the digest, so unreadable or unusable images are refused now, not mid-way
    through a backend's calibration.
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
    _check_raw(x, name, channels)
    cal = CalibrationSet(raw=x, pre=pre, size=size, channels=channels, source=name, kind=kind, seed=seed,
                         requested=requested, forced=n < MIN_COUNT, info=info)
    cal.digest  # noqa: B018  one streaming pass: validates every image and fixes the cache key
    return cal


def read_source(source: str | Path | np.ndarray, count: int, seed: int = DEFAULT_SEED, channels: int = 3
                ) -> tuple[Any, str, str, dict[str, Any]]:
    """Raw sampled data, its kind, display name and provenance. The data is uint8 images or
    float32 NCHW (arrays: only the sampled rows are copied; a ``.npy`` is memory-mapped and its
    sampled rows read batch by batch, :class:`MappedRows`) or, for a folder, an :class:`ImageFiles` list that decodes
    an image only when it is indexed."""
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
    elif str(source) == SEG_SOURCE:
        from ..seg_data import SegImages

        x = SegImages(requested, CALIB_SPLIT, seed=seed)
        kind, name = SEG_SOURCE, f"{SEG_SOURCE}:{CALIB_SPLIT}"
        info.update(split=CALIB_SPLIT, eval_split=EVAL_SPLIT, size=x.sampler.size,
                    made_by="veca_deploy.seg_data (Fashion-MNIST items on a canvas, seeded per sample)")
    elif str(source) == PHOTOS:
        from ..data import PhotoCrops

        if seed == EVAL_PHOTO_SEED:
            raise QuantizationError(f"calibration seed {seed} is the accuracy gate's held-out photo stream: choose another --seed")

        x = PhotoCrops(requested, seed)
        kind, name = PHOTOS, f"{PHOTOS}:{len(x.sources)}"
        info.update(photos=[Path(s).name for s in x.sources], crops="seeded random crops, 35-100% of the short side",
                    sources_sha256=hashlib.sha256("\n".join(x.sources).encode()).hexdigest()[:16])
    else:
        path = Path(source)
        if path.is_dir():
            kind, name = "folder", str(path)
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise QuantizationError(f"calibration folder {path} holds no .jpg/.jpeg/.png images")
            pick = np.sort(rng.permutation(len(files))[:requested]) if len(files) > requested else np.arange(len(files))
            x = ImageFiles([files[i] for i in pick])
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


class MappedRows:
    """The sampled rows of a memory-mapped ``.npy``, read only when sliced: a calibration file
    larger than memory is never loaded whole (``rows[a:b]`` is an ndarray of those rows)."""

    def __init__(self, x: np.ndarray, idx: np.ndarray) -> None:
        self.x, self.idx = x, idx
        self.dtype, self.ndim = x.dtype, x.ndim
        self.shape = (len(idx), *x.shape[1:])

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i) -> np.ndarray:
        return np.asarray(self.x[self.idx[i]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.x[self.idx], dtype=dtype)

    def __repr__(self) -> str:
        return f"MappedRows({len(self)} of {len(self.x)} rows)"


def _sample_rows(x: np.ndarray, count: int, rng: np.random.Generator) -> tuple[Any, str]:
    """A seeded, order-preserving sample of rows; returns it and a hash of the picked indices.
    In-memory arrays: the picked rows are copied (the set does not depend on the caller's
    array). Memory-mapped files: :class:`MappedRows`, read batch by batch."""
    if len(x) > count:
        idx = np.sort(rng.permutation(len(x))[:count])
    else:
        idx = np.arange(len(x))
    digest = hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:16]
    if isinstance(x, np.memmap):
        return MappedRows(x, idx), digest
    return x[idx], digest


def _read_array(path: Path) -> np.ndarray:
    try:
        data = np.load(path, mmap_mode="r" if path.suffix.lower() == ".npy" else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise QuantizationError(f"{path.name}: cannot read the array ({e})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        key = next((k for k in ("images", "x", "data") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise QuantizationError(f"{path.name}: .npz with arrays {keys}; name the image array 'images'")
        return data[key]
    return data


def _all_finite(x: np.ndarray, rows: int = 256) -> bool:
    """``np.isfinite(x).all()`` a few rows at a time (no full-size temporary)."""
    return all(bool(np.isfinite(x[i:i + rows]).all()) for i in range(0, len(x), rows))


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
            if not _all_finite(x):
                raise QuantizationError(f"calibration data {name} contains NaN or Inf")
            return x
        raise QuantizationError(f"calibration data {name}: float32 data must be normalized NCHW with {channels} "
                                f"channels, got shape {list(x.shape)}")
    raise QuantizationError(f"calibration data {name}: dtype {x.dtype} not accepted (uint8 raw images or "
                            "float32 normalized NCHW)")


def _read_image(path: Path) -> np.ndarray:
    """A calibration folder's image; its failures are the calibration's (exit code and wording)."""
    try:
        return read_image(path)
    except InputError as e:
        raise QuantizationError(str(e).replace(PILLOW_HINT, "reading an image folder needs Pillow: pip install pillow")) from None


def _check_side(shape: tuple[int, ...], name: str) -> None:
    if min(shape) < MIN_SIDE:
        raise QuantizationError(f"calibration data {name}: images of {shape[0]}x{shape[1]} px cannot be resized "
                                f"meaningfully (smallest side must be >= {MIN_SIDE})")


def _check_raw(x: Any, name: str, channels: int) -> None:
    """The cheap refusals, before any image is preprocessed (arrays: one shape for all)."""
    if _is_float(x):
        _check_side(x.shape[2:], name)
    elif hasattr(x, "shape"):  # uint8 array or MappedRows
        _check_side(x.shape[1:3], name)
        if channels != 3:
            raise QuantizationError(f"the model takes {channels} channels; raw-image calibration produces RGB")
    elif channels != 3:
        raise QuantizationError(f"the model takes {channels} channels; raw-image calibration produces RGB")


def preprocess_raw(x, pre: Preprocess | None, size: tuple[int, int], name: str, channels: int) -> np.ndarray:
    """Raw sampled data (or a slice of it) -> float32 NCHW at ``size``: float32 NCHW is only
    resized; uint8 images (an array, a list, or :class:`ImageFiles`, decoded here) go through
    ``pre``. Call it per batch: the result holds every image given."""
    h, w = size
    if _is_float(x):  # already normalized NCHW: resize only
        _check_side(x.shape[2:], name)
        if x.shape[2:] == (h, w):
            return np.ascontiguousarray(x)
        return np.stack([resize_bilinear(img.transpose(1, 2, 0), h, w).transpose(2, 0, 1) for img in x]
                        ).astype(np.float32)
    if isinstance(x, ImageFiles):
        x = list(x)
    for img in (x if isinstance(x, list) else x[:1]):
        _check_side(np.asarray(img).shape[:2], name)
    if channels != 3:
        raise QuantizationError(f"the model takes {channels} channels; raw-image calibration produces RGB")
    if pre is None:
        raise QuantizationError(f"calibration data {name}: raw images need the bundle's Preprocess")
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


__all__ = ["BUILTIN", "CalibrationReader", "CalibrationSamples", "CalibrationSet", "DEFAULT_COUNT", "ImageFiles",
           "MIN_COUNT", "MappedRows", "load_calibration", "preprocess_batch", "preprocess_raw", "read_source", "to_hwc_batch"]
