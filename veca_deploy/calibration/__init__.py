"""Calibration and quantization: data readers, cached statistics, INT8/FP16 artifacts and the
accuracy evaluation that gates them. Backends (ONNX Runtime, NNCF/OpenVINO) only consume the
readers; heavy packages load when a function needs them."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "CalibrationReader": "veca_deploy.calibration.data",
    "CalibrationSet": "veca_deploy.calibration.data",
    "load_calibration": "veca_deploy.calibration.data",
    "OrtRecipe": "veca_deploy.calibration.recipe",
    "NncfRecipe": "veca_deploy.calibration.recipe",
    "Fp16Recipe": "veca_deploy.calibration.recipe",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'veca_deploy.calibration' has no attribute {name!r}")
