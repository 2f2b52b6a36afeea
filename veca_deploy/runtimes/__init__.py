"""Backends behind one :class:`Runner` interface; heavy ones are imported only when asked for."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..errors import BackendUnavailable, UsageError
from .base import CORE_SELECT, IMAGES, Runner, TensorSpec, check_feed, core_select

#: backend name -> (module, class, bundle format, pip extra)
BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": ("veca_deploy.runtimes.onnxrt", "OnnxRuntimeRunner", "onnx", "veca-deploy"),
    "openvino": ("veca_deploy.runtimes.openvino_rt", "OpenVINORunner", "openvino", "veca-deploy[openvino]"),
    "tensorrt": ("veca_deploy.runtimes.trt", "TensorRTRunner", "tensorrt", "veca-deploy[tensorrt]"),
}
FORMAT_BACKEND = {fmt: name for name, (_, _, fmt, _) in BACKENDS.items()}


def runner_class(backend: str) -> type[Runner]:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    module, cls, _, extra = BACKENDS[backend]
    try:
        return getattr(import_module(module), cls)
    except ImportError as e:
        raise BackendUnavailable(f"backend {backend} is unavailable ({e}); pip install '{extra}'") from None


def create_runner(backend: str, path, **options: Any) -> Runner:
    return runner_class(backend)(path, **options)


def backend_available(backend: str) -> bool:
    """Whether the backend's library imports here (does not load any model)."""
    probe = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}[backend]
    try:
        import_module(probe)
        return True
    except Exception:
        return False


__all__ = ["BACKENDS", "FORMAT_BACKEND", "CORE_SELECT", "IMAGES", "Runner", "TensorSpec", "check_feed",
           "core_select", "create_runner", "runner_class", "backend_available"]
