"""Backends behind one :class:`Runner` interface; heavy ones are imported only when asked for.

Which backends exist, what they run and what installs them is :mod:`veca_deploy.formats`.
"""

from __future__ import annotations

import functools
from importlib import import_module
from typing import Any, Iterable

from ..errors import BackendUnavailable, UsageError
from ..formats import BACKENDS, FORMATS, variant_applies
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


def slow_variant(backend: str, precision: str | None, variant: str, device: str = "CPU") -> str | None:
    """Why ``variant`` of an artifact of ``precision`` is never run on this machine's ``device``
    although the plugin reports the precision (None: no known reason). One case: OpenVINO 2026.4
    runs INT8 products under the f16 hint on x86 CPUs through reference kernels (veca_small C=16
    at 512 px on the AMX Xeon: 293 s per image against 35 ms in bf16; docs/runtime.md); on Arm f16
    is the plugin's own default."""
    from .fingerprint import cpu_family

    if backend == "openvino" and device == "CPU" and precision == "int8" and variant == "f16" and cpu_family() != "arm":
        return "OpenVINO runs INT8 products under f16 through reference kernels on x86 (minutes per image)"
    return None


@functools.lru_cache(maxsize=None)
def arm_bf16() -> bool:
    """Whether this is an AArch64 CPU with the BF16 extension (Graviton 3/4, Neoverse V1/V2; not
    Jetson Orin's Cortex-A78AE): where ONNX Runtime's MLAS runs float GEMMs in bf16 on request."""
    from .fingerprint import cpu_family, cpu_info

    return cpu_family() == "arm" and "bf16" in cpu_info()["isa"]


def supported_variants(backend: str, device: str = "CPU", precision: str | None = None) -> tuple[str, ...]:
    """Execution variants beyond the default that this machine runs natively: OpenVINO's CPU
    plugin reports BF16 (AVX512-BF16 or AMX; some AVX2 client cores too, where the variant is
    timed and gated like any other) and FP16 (AVX512-FP16 / AMX-FP16, Arm) among its
    ``OPTIMIZATION_CAPABILITIES``; ONNX Runtime offers bf16 fast-math GEMMs on AArch64 with BF16
    (:func:`arm_bf16`; float and INT8 graphs, whose float products it speeds up; it has no bf16
    path on x86). ``precision``: the artifact's; a variant :func:`slow_variant` names is not
    offered for it."""
    variants = BACKENDS[backend].execution_variants
    if not variants or not backend_available(backend):
        return ()
    if backend == "onnxruntime":  # MLAS is the CPU provider's: no variant for CUDA / TensorRT providers
        return ("bf16",) if "bf16" in variants and device == "CPU" and precision != "fp16" and arm_bf16() else ()
    if backend != "openvino":
        return ()
    caps = _openvino_capabilities(device)
    return tuple(v for v, cap in (("bf16", "BF16"), ("f16", "FP16")) if v in variants and cap in caps
                 and slow_variant(backend, precision, v, device) is None)


def artifact_variants(backend: str, precision: str, variants: bool | Iterable[str] = True,
                      device: str = "CPU") -> tuple[str, ...]:
    """The execution variants that are candidates of their own for an artifact of ``precision``:
    ``True`` = those this machine runs natively (:func:`supported_variants`), ``False`` = none, a
    list = those of it the backend has (another device's, e.g. from its profile); only variants
    that change how the artifact computes (:func:`~veca_deploy.formats.variant_applies`)."""
    if variants is True:
        names: Iterable[str] = supported_variants(backend, device, precision)
    elif variants is False:
        names = ()
    else:
        names = [v for v in variants if v in BACKENDS[backend].execution_variants]
    return tuple(v for v in names if variant_applies(precision, v))


__all__ = ["BACKENDS", "FORMAT_BACKEND", "CORE_SELECT", "IMAGES", "Runner", "TensorSpec", "check_feed",
           "core_select", "create_runner", "runner_class", "backend_available", "supported_variants",
           "slow_variant", "artifact_variants", "arm_bf16"]
