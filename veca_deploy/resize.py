"""Image resizing for the bundle's preprocessing: bilinear, with or without antialiasing.

Two kernels, both with half-pixel centres (``align_corners=False``):

* ``antialias=False``: plain bilinear, what ``torch.nn.functional.interpolate(mode="bilinear")``
  does; it reads 2 source pixels per output pixel, so a large downscale aliases (a 4000x3000
  photo to 28x28 samples ~1 in 100 source pixels per row).
* ``antialias=True``: the triangle filter widened by the scale factor (every source pixel
  contributes), what Pillow's ``Image.resize(BILINEAR)`` and ``interpolate(..., antialias=True)``
  compute, i.e. what timm / torchvision training pipelines feed a model. Pillow does it in C on
  uint8 (used when it is installed: the ``data`` / ``dev`` extras); without Pillow a numpy
  separable-matrix version computes the same filter in float32 (slower on large photos).

numpy only on the default path; no torch.
"""

from __future__ import annotations

import numpy as np


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize (no antialias) of an HxWxC image to float32: half-pixel centres, edge
    clamp. Only the rows it reads are converted to float, so a large uint8 photo costs little."""
    y0, y1, fy = _bilinear_taps(x.shape[0], h)
    x0, x1, fx = _bilinear_taps(x.shape[1], w)
    top, bottom = x[y0].astype(np.float32, copy=False), x[y1].astype(np.float32, copy=False)
    rows = top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def antialias_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` float32 weights of the antialiased bilinear (triangle) filter, each row
    normalised to 1: support 1 source pixel when upscaling, ``n_in / n_out`` when downscaling."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    src = np.arange(n_in, dtype=np.float64) + 0.5
    wts = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    wts /= wts.sum(axis=1, keepdims=True)
    return wts.astype(np.float32)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def resize_antialias(x: np.ndarray, h: int, w: int, use_pillow: bool | None = None) -> np.ndarray:
    """Antialiased bilinear resize of an HxWx3 image to float32 (values in the input's range).
    uint8 input goes through Pillow when it is installed (``use_pillow=None``), else numpy."""
    image = _pillow() if use_pillow is not False else None
    if use_pillow and image is None:
        raise ImportError("Pillow is not installed (pip install pillow)")
    if image is not None and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3:
        return np.asarray(image.fromarray(x).resize((w, h), image.BILINEAR), dtype=np.float32)
    wy, wx = antialias_weights(x.shape[0], h), antialias_weights(x.shape[1], w)
    out = np.empty((h, w, x.shape[2]), np.float32)
    for c in range(x.shape[2]):
        plane = x[..., c].astype(np.float32, copy=False)
        # the cheaper order of the two separable passes
        if h * x.shape[1] * (x.shape[0] + w) <= w * x.shape[0] * (x.shape[1] + h):
            out[..., c] = (wy @ plane) @ wx.T
        else:
            out[..., c] = wy @ (plane @ wx.T)
    return out


def resize(x: np.ndarray, h: int, w: int, antialias: bool = False) -> np.ndarray:
    """``x`` (HxWxC) at ``h x w`` as float32; unchanged size is only converted."""
    if x.shape[:2] == (h, w):
        return x.astype(np.float32, copy=False)
    if antialias and (x.shape[0] > h or x.shape[1] > w):
        return resize_antialias(x, h, w)
    return resize_bilinear(x, h, w)


def cover_size(src: tuple[int, int], dst: tuple[int, int], crop_pct: float = 1.0) -> tuple[int, int]:
    """The size that keeps ``src``'s aspect ratio and covers ``dst / crop_pct`` (resize the shorter
    side, then centre-crop ``dst``: timm's eval transform)."""
    (hs, ws), (h, w) = src, dst
    s = max(h / hs, w / ws) / crop_pct
    return max(h, int(round(hs * s))), max(w, int(round(ws * s)))


def centre_crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = int(round((x.shape[0] - h) / 2.0)), int(round((x.shape[1] - w) / 2.0))
    return x[top:top + h, left:left + w]


__all__ = ["antialias_weights", "centre_crop", "cover_size", "resize", "resize_antialias", "resize_bilinear"]
