"""Image preprocessing declared by a bundle and shared by calibration, eval and the runtime.

numpy only (the runtime path imports no torch). The resize is bilinear with half-pixel centres
(``align_corners=False``, no antialias), i.e. what ``torch.nn.functional.interpolate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


#: what :class:`Preprocess` implements (see its docstring)
RESIZES = ("bilinear",)
LAYOUTS = ("NCHW",)
COLOR_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become the network's ``images`` input: ``x * scale`` in ``color_order``,
    resized with ``resize`` to the tier's size, normalised by ``mean``/``std`` into ``layout``.
    Only what :meth:`__call__` really implements is accepted, so a bundle that declares another
    resize or layout is refused instead of being silently fed something else."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    layout: str = "NCHW"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name, value, allowed in (("resize", self.resize, RESIZES), ("layout", self.layout, LAYOUTS),
                                     ("color_order", self.color_order, COLOR_ORDERS)):
            if value not in allowed:
                raise ValueError(f"preprocess {name} {value!r} is not implemented here (supported: "
                                 f"{', '.join(allowed)})")

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "color_order": self.color_order,
                "resize": self.resize, "scale": self.scale, "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   color_order=str(d.get("color_order", "RGB")), resize=str(d.get("resize", "bilinear")),
                   scale=float(d.get("scale", 1 / 255)), layout=str(d.get("layout", "NCHW")))

    def __call__(self, images, size: tuple[int, int]) -> np.ndarray:
        """uint8 images (one HWC/HW image or a list/array of them, any size) -> float32 NCHW."""
        batch = to_hwc_batch(images)
        h, w = size
        out = np.empty((len(batch), 3, h, w), dtype=np.float32)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        inv_std = (1.0 / np.asarray(self.std, np.float32))[:, None, None]
        for i, img in enumerate(batch):
            x = img.astype(np.float32) * np.float32(self.scale)
            if self.color_order == "BGR":
                x = x[..., ::-1]
            if x.shape[0] != h or x.shape[1] != w:
                x = resize_bilinear(x, h, w)
            out[i] = (x.transpose(2, 0, 1) - mean) * inv_std
        return out


def to_hwc_batch(images) -> list[np.ndarray]:
    """Normalize the accepted raw forms into a list of uint8 HxWx3 arrays (grey is replicated)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise InputError(f"raw images must be uint8, got {images.dtype}")
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3)):
            items = [images]  # one HxW or HxWxC image
        elif images.ndim in (3, 4):  # a batch: BxHxW (grey) or BxHxWxC
            items = list(images)
        else:
            raise InputError(f"raw images must be HxW, HxWxC or BxHxWxC, got shape {images.shape}")
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise InputError(f"expected a numpy array or a list of arrays, got {type(images).__name__}")
    if not items:
        raise InputError("empty batch")
    out = []
    for img in items:
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise InputError(f"raw images must be uint8, got {img.dtype}")
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[2] not in (1, 3):
            raise InputError(f"each raw image must be HxW, HxWx1 or HxWx3, got shape {img.shape}")
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise InputError(f"empty image of shape {img.shape}")
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        out.append(img)
    return out


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an HxWxC float32 image (half-pixel centres, edge clamp)."""
    y0, y1, fy = _axis_weights(x.shape[0], h)
    x0, x1, fx = _axis_weights(x.shape[1], w)
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
