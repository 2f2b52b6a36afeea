"""Task models: a VECA backbone plus a head from ``heads.HEADS``, with named dict outputs.

The export side relies on this contract: ``forward(images, cores=None) -> dict[str, Tensor]``
(the tier is the core count passed down to the backbone), ``backbone``, ``cfg``,
``num_params()``, ``output_specs()`` and ``head_config``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..errors import UsageError
from .config import VecaConfig
from .heads import create_head


class TaskModel(nn.Module):
    """VECA backbone + head. Outputs: ``global`` [B, D], ``patches`` [B, N, D] and the head's."""

    def __init__(self, backbone: nn.Module, head_config: dict[str, Any]) -> None:
        super().__init__()
        if "name" not in head_config:
            raise UsageError("head config needs a 'name' (one of veca_deploy.model.heads.HEADS)")
        self.backbone = backbone
        self.head_config: dict[str, Any] = copy.deepcopy(dict(head_config))
        self.head = create_head(backbone.cfg.output_dim, self.head_config)

    @property
    def cfg(self) -> VecaConfig:
        return self.backbone.cfg

    def forward(self, images: Tensor, cores: int | None = None) -> dict[str, Tensor]:
        c = self.cfg.check_cores(cores)
        p = self.cfg.patch_size
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"images must be [B, {self.cfg.in_channels}, H, W], got {list(images.shape)}")
        h, w = int(images.shape[-2]), int(images.shape[-1])
        if h % p or w % p:
            raise ValueError(f"H and W must be multiples of the patch size {p}, got {[h, w]}")
        x, lead = self.backbone.forward_tokens(images, None if self.cfg.attention == "full" else c)
        glob, patches = x[:, 0], x[:, lead:]
        out = {"global": glob, "patches": patches}
        out.update(self.head(glob, patches, h // p, w // p, (h, w)))
        return out

    def output_specs(self) -> dict[str, dict[str, str]]:
        """Per output: kind, layout and meaning, in the order ``forward`` returns them."""
        specs = {"global": {"kind": "global", "layout": "B,D", "meaning": "first core token (image summary)"},
                 "patches": {"kind": "patches", "layout": "B,N,D", "meaning": "patch tokens, row-major"}}
        specs.update(copy.deepcopy(self.head.outputs))
        return specs

    def num_params(self) -> int:
        return sum(t.numel() for t in self.parameters())


def create_task_model(backbone: str | VecaConfig | nn.Module, head: dict[str, Any], **overrides: Any) -> TaskModel:
    """A TaskModel from a registry name (with config overrides), a config, or a built backbone."""
    from .families import model_config
    from .veca import VECA

    if isinstance(backbone, str):
        bb = VECA(model_config(backbone, **overrides))
    elif isinstance(backbone, VecaConfig):
        bb = VECA(VecaConfig.from_dict({**backbone.to_dict(), **overrides}))
    elif isinstance(backbone, nn.Module) and hasattr(backbone, "forward_tokens"):
        bb = backbone
    else:
        raise UsageError(f"backbone must be a registry name, a VecaConfig or a VECA module, got {type(backbone).__name__}")
    if bb.cfg.num_classes:
        raise UsageError("the backbone of a task model must have no classification head (num_classes=0)")
    return TaskModel(bb, head)
