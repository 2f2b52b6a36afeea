"""Backends behind one :class:`Runner` interface; heavy ones are imported only when asked for.

Which backends exist, what they run and what installs them is :mod:`veca_deploy.formats`.
"""

from __future__ import annotations

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


__all__ = ["BACKENDS", "FORMAT_BACKEND", "CORE_SELECT", "IMAGES", "Runner", "TensorSpec", "check_feed",
           "core_select", "create_runner", "runner_class", "backend_available"]
