"""Task heads as data, like timm's registry: ``HEADS[name](dim=D, **kwargs)`` builds one.

Every head takes ``(global [B, D], patches [B, N, D], hp, wp, image_hw)`` and returns a dict of
named tensors. Only ops that trace to ONNX opset 17 and run in onnxruntime and OpenVINO are
used (linear, reshape/permute, conv2d, GELU, bilinear resize with ``align_corners=False``); no
Python control flow depends on tensor values, and ``hp, wp, image_hw`` come from static shapes.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError

#: name -> builder(dim, **config) -> head module
HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str) -> Callable:
    def deco(cls):
        HEADS[name] = cls
        cls.head_name = name
        return cls
    return deco


def _grid(patches: Tensor, hp: int, wp: int) -> Tensor:
    """[B, N, D] patch tokens (row-major) -> [B, D, Hp, Wp] feature map."""
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], hp, wp)


@register_head("linear_cls")
class LinearClassifier(nn.Module):
    """Linear classifier on the global token -> ``logits`` [B, K]."""

    outputs = {"logits": {"kind": "logits", "layout": "B,K", "meaning": "class scores (pre-softmax)"}}

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, glob: Tensor, patches: Tensor, hp: int, wp: int, image_hw: tuple[int, int]) -> dict[str, Tensor]:
        return {"logits": self.fc(glob)}


@register_head("linear_seg")
class LinearSegmentation(nn.Module):
    """Per-patch linear classifier -> [B, K, Hp, Wp], bilinear to the input -> ``mask_logits``."""

    outputs = {"mask_logits": {"kind": "mask_logits", "layout": "B,K,H,W",
                               "meaning": "per-pixel class scores at input resolution (pre-softmax)"}}

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, glob: Tensor, patches: Tensor, hp: int, wp: int, image_hw: tuple[int, int]) -> dict[str, Tensor]:
        grid = _grid(self.fc(self.norm(patches)), hp, wp)
        return {"mask_logits": F.interpolate(grid, size=image_hw, mode="bilinear", align_corners=False)}


@register_head("conv_decoder")
class ConvDecoder(nn.Module):
    """A light conv decoder over the patch grid: conv3x3+GELU, 2x bilinear upsample, conv3x3+GELU,
    1x1 classifier, bilinear to the input -> ``mask_logits``. Local context VECA's patches lack
    (they never attend to each other)."""

    outputs = LinearSegmentation.outputs

    def __init__(self, dim: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.hidden = hidden
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.cls = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, glob: Tensor, patches: Tensor, hp: int, wp: int, image_hw: tuple[int, int]) -> dict[str, Tensor]:
        x = F.gelu(self.conv1(_grid(patches, hp, wp)))
        x = F.interpolate(x, size=(2 * hp, 2 * wp), mode="bilinear", align_corners=False)
        x = self.cls(F.gelu(self.conv2(x)))
        return {"mask_logits": F.interpolate(x, size=image_hw, mode="bilinear", align_corners=False)}


def create_head(dim: int, config: dict[str, Any]) -> nn.Module:
    """Build a head from its JSON config ``{"name": ..., **kwargs}``."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in HEADS:
        raise UsageError(f"unknown head {name!r}; known: {', '.join(sorted(HEADS))}")
    try:
        return HEADS[name](dim, **cfg)
    except TypeError as e:
        raise UsageError(f"bad head config for {name}: {e}") from None
