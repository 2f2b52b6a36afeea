"""Image preprocessing declared by a bundle and shared by calibration, eval and the runtime.

What training used, the way timm's data config says it: bilinear interpolation with or without
antialiasing (:mod:`veca_deploy.resize`), ``stretch`` to the tier's size or ``shorter`` side
resize to ``size / crop_pct`` and a centre crop, then ``scale``, ``mean``/``std``. Bundles written
before these keys existed read as bilinear, no antialias, stretch: what they were served with.
numpy (and Pillow when installed) only: the runtime path imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .resize import centre_crop, cover_size, resize, resize_bilinear

#: what :class:`Preprocess` implements (see its docstring)
RESIZES = ("bilinear",)
RESIZE_MODES = ("stretch", "shorter")
LAYOUTS = ("NCHW",)
COLOR_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become the network's ``images`` input: resized with ``resize``
    (interpolation; ``antialias``) to the tier's size (``resize_mode``: ``stretch``, or ``shorter``
    side to ``size / crop_pct`` then a centre crop), ``x * scale`` in ``color_order``, normalised by
    ``mean``/``std`` into ``layout``. Only what :meth:`__call__` really implements is accepted, so
    a bundle that declares another resize or layout is refused instead of being silently fed
    something else."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    layout: str = "NCHW"
    antialias: bool = False
    resize_mode: str = "stretch"
    crop_pct: float = 1.0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name, value, allowed in (("resize", self.resize, RESIZES), ("layout", self.layout, LAYOUTS),
                                     ("color_order", self.color_order, COLOR_ORDERS),
                                     ("resize_mode", self.resize_mode, RESIZE_MODES)):
            if value not in allowed:
                raise ValueError(f"preprocess {name} {value!r} is not implemented here (supported: "
                                 f"{', '.join(allowed)})")
        if not (0.0 < float(self.crop_pct) <= 1.0):
            raise ValueError(f"preprocess crop_pct must be in (0, 1], got {self.crop_pct}")

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "color_order": self.color_order,
                "resize": self.resize, "scale": self.scale, "layout": self.layout, "antialias": bool(self.antialias),
                "resize_mode": self.resize_mode, "crop_pct": float(self.crop_pct)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   color_order=str(d.get("color_order", "RGB")), resize=str(d.get("resize", "bilinear")),
                   scale=float(d.get("scale", 1 / 255)), layout=str(d.get("layout", "NCHW")),
                   antialias=bool(d.get("antialias", False)), resize_mode=str(d.get("resize_mode", "stretch")),
                   crop_pct=float(d.get("crop_pct", 1.0)))

    def resized(self, img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """One HxWxC image at ``size`` as float32 in the input's value range (before scale/mean/std)."""
        h, w = size
        if self.resize_mode == "shorter" and img.shape[:2] != (h, w):
            rh, rw = cover_size(img.shape[:2], size, self.crop_pct)
            return centre_crop(resize(img, rh, rw, self.antialias), h, w)
        return resize(img, h, w, self.antialias)

    def __call__(self, images, size: tuple[int, int]) -> np.ndarray:
        """uint8 images (one HWC/HW image or a list/array of them, any size) -> float32 NCHW."""
        batch = to_hwc_batch(images)
        h, w = size
        out = np.empty((len(batch), 3, h, w), dtype=np.float32)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        inv_std = (1.0 / np.asarray(self.std, np.float32))[:, None, None]
        for i, img in enumerate(batch):
            x = self.resized(img, (h, w)) * np.float32(self.scale)  # resize is linear: order is free
            if self.color_order == "BGR":
                x = x[..., ::-1]
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


__all__ = ["COLOR_ORDERS", "LAYOUTS", "RESIZES", "RESIZE_MODES", "Preprocess", "resize_bilinear", "to_hwc_batch"]
