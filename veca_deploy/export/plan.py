"""The plan of a bundle: which artifacts ``export`` builds and how, checked once up front.

:class:`ExportPlan` replaces a long keyword list: the orchestrator (:mod:`.pipeline`) reads it,
runs one builder per artifact kind, and hands the FP16/INT8 part to calibration as a
:class:`~veca_deploy.calibration.quantize.QuantizePlan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..calibration.quantize import QuantizePlan
from ..errors import UsageError
from ..formats import EXPORT_FORMATS, PRECISIONS
from .onnx_export import DEFAULT_EXPORTER, DEFAULT_OPSET

SIMPLIFIERS = ("onnxslim", "onnxsim", "none")
EXPORTERS = ("torchscript", "dynamo")
#: largest image side (pixels) a bundle is exported at: beyond it the golden inputs alone take
#: gigabytes and attention over the patches does not fit an edge device
MAX_IMAGE_SIDE = 4096


def check_sizes(sizes: Sequence[Sequence[int]], patch_size: int | None = None) -> None:
    """Image sizes (height, width) must be positive, at most :data:`MAX_IMAGE_SIDE` per side and,
    when ``patch_size`` is known, multiples of it: a :class:`UsageError` before any work."""
    for size in sizes:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise UsageError(f"image size must be (height, width) integers, got {size!r}") from None
        if h <= 0 or w <= 0:
            raise UsageError(f"image size {h}x{w} must be positive")
        if max(h, w) > MAX_IMAGE_SIDE:
            raise UsageError(f"image size {h}x{w} is too large: each side must be at most {MAX_IMAGE_SIDE} px")
        if patch_size and (h % patch_size or w % patch_size):
            raise UsageError(f"image size {h}x{w} is not a positive multiple of the patch size {patch_size}")


@dataclass
class ExportPlan:
    formats: tuple[str, ...] = EXPORT_FORMATS
    precisions: tuple[str, ...] = ("fp32", "fp16")
    sizes: tuple[tuple[int, int], ...] = ()
    tiers: tuple[int, ...] = ()
    batch: int | str = "dynamic"
    opset: int = DEFAULT_OPSET
    exporter: str = DEFAULT_EXPORTER
    simplifier: str = "onnxslim"
    elastic: bool = False
    quantize: QuantizePlan | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the preprocessing the bundle declares: :class:`~veca_deploy.preprocess.Preprocess` fields
    #: (antialias, resize_mode, crop_pct, ...) over the model's mean/std and antialiased bilinear
    preprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def openvino_precisions(self) -> list[str]:
        """IR precisions converted straight from the FP32 ONNX (INT8 IR comes from NNCF)."""
        return [p for p in ("fp32", "fp16") if p in self.precisions] if "openvino" in self.formats else []

    @property
    def steps(self) -> int:
        """Builder steps, for progress: per size, each tier's ONNX + IRs, plus the elastic graph."""
        per_tier = 1 + len(self.openvino_precisions)
        return len(self.sizes) * (len(self.tiers) * per_tier + (1 if self.elastic else 0))


def check_options(formats: Sequence[str], precisions: Sequence[str], batch: int | str, opset: int,
                  exporter: str, simplifier: str, calib: Any) -> tuple[list[str], list[str]]:
    """Argument checks that need no model; returns the de-duplicated formats and precisions
    (FP32 always included: every bundle keeps its FP32 reference graphs)."""
    formats = list(dict.fromkeys(formats))
    precisions = list(dict.fromkeys(precisions))
    for f in formats:
        if f not in EXPORT_FORMATS:
            raise UsageError(f"unknown format {f!r}; choose from {', '.join(EXPORT_FORMATS)} "
                             "(TensorRT: veca-deploy build-trt)")
    for p in precisions:
        if p not in PRECISIONS:
            raise UsageError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")
    if "int8" in precisions and not calib:
        raise UsageError("int8 needs calibration data: pass --calib SRC (a folder, .npy/.npz or 'fashion-mnist')")
    if batch != "dynamic" and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise UsageError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    if simplifier not in SIMPLIFIERS:
        raise UsageError(f"unknown simplifier {simplifier!r}; choose from {', '.join(SIMPLIFIERS)}")
    if exporter == "torchscript" and not 13 <= opset <= 20:
        raise UsageError(f"the TorchScript exporter supports opset 13-20, got {opset}")
    return formats, precisions
