"""The VECA model: config, modules, registry and checkpoint loading (needs torch)."""

from .config import VecaConfig
from .registry import DEFAULT_MODEL, FAMILIES, create_model, list_models, model_config

__all__ = ["VecaConfig", "DEFAULT_MODEL", "FAMILIES", "create_model", "list_models", "model_config",
           "load_checkpoint"]


def __getattr__(name: str):
    if name in ("load_checkpoint", "save_pretrained", "load_reference_model"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
