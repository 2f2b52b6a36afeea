"""veca-deploy: export, quantize, compile and run VECA vision transformers on edge hardware.

Importing the package is cheap and torch-free; model and export entry points load torch lazily,
so an edge device with only the runtime extra can ``import veca_deploy`` and open bundles.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: the switches of the dependencies' own telemetry, set (unless already set) before they load.
#: onnxruntime >= 1.2x on Linux: ``ORT_DISABLE_TELEMETRY`` (read by the native library when it
#: loads; without it, ``import onnxruntime`` writes a device id and an event store under
#: ``$XDG_CACHE_HOME`` or ``~/.cache``: ``Microsoft/DeveloperTools/.onnxruntime``). NNCF 3.x:
#: ``NNCF_CI`` (any non-empty value replaces its telemetry object by a stub; read when
#: ``nncf.telemetry`` is imported; it has no other effect in NNCF).
TELEMETRY_ENV = {"ORT_DISABLE_TELEMETRY": "1", "NNCF_CI": "1"}


def _telemetry_off() -> None:
    """Offline by construction: nothing veca-deploy loads phones home or writes a client id.

    OpenVINO's ``openvino_telemetry`` has no environment switch: ``import openvino`` (through
    ``openvino.tools.ovc``) and NNCF send usage events to Google Analytics in a subprocess and
    write ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` unless the consent file
    ``~/intel/openvino_telemetry`` says ``0``. We make "no consent file" mean *declined* (what
    the dialog-free default would treat as consent), so an explicit ``opt_in_out --opt_in`` (a
    file that says ``1``) is still honoured and nothing is written. ``VECA_ALLOW_TELEMETRY=1``
    leaves every dependency's telemetry exactly as it would be without veca-deploy.
    """
    if os.environ.get("VECA_ALLOW_TELEMETRY", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    for name, value in TELEMETRY_ENV.items():
        os.environ.setdefault(name, value)  # an explicit setting of the user's wins
    checker = sys.modules.get("openvino_telemetry.utils.opt_in_checker")
    if checker is not None:  # loaded before us: patch it now (and what it already decided)
        _decline_without_consent(checker)
    elif not any(isinstance(f, _TelemetryGate) for f in sys.meta_path):
        sys.meta_path.insert(0, _TelemetryGate())


def _decline_without_consent(checker_module: Any) -> None:
    checker = getattr(checker_module, "OptInChecker", None)
    result = getattr(checker_module, "ConsentCheckResult", None)
    if checker is None or result is None or getattr(checker.check, "_veca_offline", False):
        return
    original = checker.check

    def check(self, enable_opt_in_dialog, disable_in_ci=False):
        answer = original(self, enable_opt_in_dialog, disable_in_ci)
        return result.DECLINED if answer == result.NO_FILE else answer

    check._veca_offline = True
    checker.check = check
    main = sys.modules.get("openvino_telemetry.main")
    telemetry = getattr(getattr(main, "Telemetry", None), "_SingletonMetaClass__single_instance", None)
    if telemetry is not None and getattr(telemetry, "consent", False):
        try:  # already initialised (openvino imported first): keep only an explicit consent
            telemetry.consent = checker().check(False, True) == result.ACCEPTED
        except Exception:
            telemetry.consent = False


class _TelemetryGate:
    """Import hook: patches ``openvino_telemetry``'s consent check the moment it is imported
    (cheaper than importing it eagerly: it pulls in urllib and multiprocessing)."""

    TARGET = "openvino_telemetry.utils.opt_in_checker"

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        _decline_without_consent(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_telemetry_off()

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
