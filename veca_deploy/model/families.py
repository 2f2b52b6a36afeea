"""The registry's data: each model family's config, and the config of a model by name.

Kept apart from :mod:`registry` (which builds models, pretrained ones through
:mod:`checkpoint`), so that code which only needs a config (a task model's backbone, training,
export) never reaches back up to the module that builds everything.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .config import VecaConfig

#: The published families (paper table) plus ``tiny``, the built-in reference model.
FAMILIES: dict[str, dict[str, Any]] = {
    "small": dict(num_layers=12, hidden_dim=384, num_heads=6, mlp_ratio=2.66667, num_query_tokens=64,
                  patch_size=16, default_image_size=(224, 224)),
    "splus": dict(num_layers=12, hidden_dim=384, num_heads=6, mlp_ratio=4.0, num_query_tokens=64,
                  patch_size=16, default_image_size=(224, 224)),
    "base": dict(num_layers=12, hidden_dim=768, num_heads=12, mlp_ratio=2.66667, num_query_tokens=64,
                 patch_size=16, default_image_size=(224, 224)),
    "large": dict(num_layers=24, hidden_dim=1024, num_heads=16, mlp_ratio=2.66667, num_query_tokens=64,
                  patch_size=16, default_image_size=(224, 224)),
    # Small enough to train on 2 CPU cores: Fashion-MNIST at its native 28 px (grey replicated to RGB).
    "tiny": dict(num_layers=4, hidden_dim=96, num_heads=3, mlp_ratio=2.66667, num_query_tokens=32,
                 patch_size=7, default_image_size=(28, 28), mean=(0.2860, 0.2860, 0.2860),
                 std=(0.3530, 0.3530, 0.3530)),
}


def list_models() -> list[str]:
    return [f"{kind}_{fam}" for kind in ("veca", "vit") for fam in FAMILIES]


def model_config(name: str, **overrides: Any) -> VecaConfig:
    """The config of a registered model, with keyword overrides (e.g. ``num_classes=10``)."""
    kind, _, family = name.partition("_")
    if kind not in ("veca", "vit") or family not in FAMILIES:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    kw = dict(FAMILIES[family], model_family=family, attention="core" if kind == "veca" else "full")
    kw.update(overrides)
    try:
        return VecaConfig(**kw)
    except TypeError as e:
        raise UsageError(f"bad override for {name}: {e}") from None
