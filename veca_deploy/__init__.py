"""veca-deploy: export, quantize, compile and run VECA vision transformers on edge hardware.

Importing the package is cheap and torch-free; model and export entry points load torch lazily,
so an edge device with only the runtime extra can ``import veca_deploy`` and open bundles.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "veca_deploy.model.registry",
    "list_models": "veca_deploy.model.registry",
    "VecaConfig": "veca_deploy.model.config",
    "load_checkpoint": "veca_deploy.model.checkpoint",
    "load_reference_model": "veca_deploy.model.checkpoint",
    "export": "veca_deploy.export",
    "quantize": "veca_deploy.calibration.quantize",
    "evaluate": "veca_deploy.calibration.evaluate",
    "train": "veca_deploy.model.train",
    "Bundle": "veca_deploy.bundle.reader",
    "Runtime": "veca_deploy.selector.runtime",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name == "export":  # the callable export package (see veca_deploy/export/__init__.py)
        return import_module(_LAZY[name])
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'veca_deploy' has no attribute {name!r}")
