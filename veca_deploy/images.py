"""Image files as uint8 arrays, for applications and calibration folders (device side: numpy,
with Pillow imported only when a file other than ``.npy`` is read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

#: what an application's image folder may hold (Pillow decodes all but ``.npy``)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".npy")
PILLOW_HINT = "reading PNG/JPEG/BMP/WebP images needs Pillow: pip install pillow"
_GREY_MODES = ("L", "I", "I;16", "1")


def pillow_available() -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return Image is not None


def image_files(folder: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """The images directly in ``folder``, sorted by name (hidden files and other types skipped)."""
    if not Path(folder).is_dir():
        raise InputError(f"{folder} is not a folder of images")
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file())


def read_image(path: str | Path, *, keep_grey: bool = False) -> np.ndarray:
    """uint8 HxWx3, or HxW for a grey file with ``keep_grey``; a ``.npy`` is returned as stored
    (never unpickled). A missing Pillow or an unreadable file is one :class:`InputError` line."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable .npy array ({type(e).__name__})") from None
    try:
        from PIL import Image
    except ImportError:
        raise InputError(PILLOW_HINT) from None
    try:
        with Image.open(path) as im:
            mode = "L" if keep_grey and im.mode in _GREY_MODES else "RGB"
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except Exception as e:  # Pillow raises many types for corrupt or truncated files
        raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None
