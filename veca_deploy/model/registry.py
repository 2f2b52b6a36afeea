"""A timm-style registry: families are data, models are created by name.

``veca_<family>`` builds VECA; ``vit_<family>`` the like-for-like full-attention baseline with
the same blocks, width, depth, MLP and RoPE.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .families import FAMILIES, list_models, model_config  # noqa: F401 - the registry's public names

DEFAULT_MODEL = "veca_tiny"
#: epochs of the reference recipe (``TrainConfig.epochs``, ``veca-deploy train --epochs``): one
#: constant, so the code and every help text agree
DEFAULT_EPOCHS = 5


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
