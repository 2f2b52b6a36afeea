"""Backends behind one :class:`Runner` interface; heavy ones are imported only when asked for.

Which backends exist, what they run and what installs them is :mod:`veca_deploy.formats`.
"""

from __future__ import annotations

import functools
import platform
from importlib import import_module
from typing import Any

from ..errors import BackendUnavailable, UsageError
from ..formats import BACKENDS, FORMATS
from .base import CORE_SELECT, IMAGES, Runner, TensorSpec, check_feed, core_select

#: bundle format -> the backend that runs it
FORMAT_BACKEND = {fmt: f.backend for fmt, f in FORMATS.items()}


def runner_class(backend: str) -> type[Runner]:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    b = BACKENDS[backend]
    try:
        return getattr(import_module(f"veca_deploy.runtimes.{b.module}"), b.runner)
    except ImportError as e:
        raise BackendUnavailable(f"backend {backend} is unavailable ({e}); pip install '{b.extra}'") from None


def create_runner(backend: str, path, **options: Any) -> Runner:
    return runner_class(backend)(path, **options)


def backend_available(backend: str) -> bool:
    """Whether the backend's library imports here (does not load any model)."""
    try:
        import_module(BACKENDS[backend].probe)
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def _openvino_capabilities(device: str) -> frozenset[str]:
    try:
        import openvino as ov

        return frozenset(ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # an unknown device or an old release: no variants, never a crash
        return frozenset()


def supported_variants(backend: str, device: str = "CPU", precision: str | None = None) -> tuple[str, ...]:
    """Execution variants beyond the default that this machine runs natively: OpenVINO's CPU
    plugin reports BF16 (AVX512-BF16 or AMX) and FP16 (AVX512-FP16 / AMX-FP16, Arm) among its
    ``OPTIMIZATION_CAPABILITIES``. Emulated precisions are not offered: they are slower.

    ``precision``: the artifact's. An INT8 graph's f16 variant is offered on Arm only, where f16
    is the plugin's own default: on x86 OpenVINO 2026.4 runs INT8 products under the f16 hint
    through reference kernels (veca_small C=16 at 512 px on the AMX Xeon: 293 s per image
    against 35 ms in bf16; docs/performance.md)."""
    variants = BACKENDS[backend].execution_variants
    if not variants or backend != "openvino" or not backend_available(backend):
        return ()
    caps = _openvino_capabilities(device)
    arm = platform.machine().lower() in ("aarch64", "arm64")
    return tuple(v for v, cap in (("bf16", "BF16"), ("f16", "FP16")) if v in variants and cap in caps
                 and not (precision == "int8" and v == "f16" and not arm))


__all__ = ["BACKENDS", "FORMAT_BACKEND", "CORE_SELECT", "IMAGES", "Runner", "TensorSpec", "check_feed",
           "core_select", "create_runner", "runner_class", "backend_available", "supported_variants"]
