"""A timm-style registry: families are data, models are created by name.

``veca_<family>`` builds VECA; ``vit_<family>`` the like-for-like full-attention baseline with
the same blocks, width, depth, MLP and RoPE.
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

DEFAULT_MODEL = "veca_tiny"
#: epochs of the reference recipe (``TrainConfig.epochs``, ``veca-deploy train --epochs``): one
#: constant, so the code and every help text agree
DEFAULT_EPOCHS = 5


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


def create_model(name: str, pretrained: bool = False, **overrides: Any):
    """Build a model by registry name. ``pretrained=True`` is only available for ``veca_tiny`` and
    ``veca_tiny_seg`` (weights that ship inside the package); nothing is ever downloaded."""
    from .checkpoint import PRETRAINED

    if pretrained:
        if name not in PRETRAINED or overrides:
            raise UsageError(f"only {', '.join(PRETRAINED)} ship pretrained weights (without overrides)")
        from .checkpoint import load_reference_model

        return load_reference_model(name)
    if name in PRETRAINED and name not in list_models():
        raise UsageError(f"{name} is a trained task model: create_model({name!r}, pretrained=True)")
    from .veca import VECA

    return VECA(model_config(name, **overrides))


def latency_weights(model, seed: int = 0, std: float = 0.02):
    """Random weights for latency work (``export --random-weights``, the benchmarks) in place:
    the training init, plus N(0, ``std``) on every parameter it leaves constant.

    The training init zeroes every bias, the core-coordinate updates (``pos_linears``,
    ``pos_alpha``) and sets LayerNorm scales to 1; graph simplifiers and OpenVINO then drop the
    zero adds and unit multiplies, and OpenVINO even fuses patterns (its LLM MLP node) that a
    biased, trained checkpoint never matches, so a zero-init model times work a real checkpoint
    does not do. Returns ``model``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and bool((p == p.reshape(-1)[0]).all()):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model
