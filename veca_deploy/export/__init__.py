"""Export (the torch side): trace to ONNX per tier (and elastic), PyTorch reference outputs, and
the orchestrator that builds a whole bundle (OpenVINO IR and quantization come from the
torch-free layers below).

``veca_deploy.export(...)`` is both this package and the export function: the package module
is made callable so the public API name and the component's folder can share one name.
"""

import sys
import types

from .pipeline import export
from .source import resolve_source

__all__ = ["export", "resolve_source"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
