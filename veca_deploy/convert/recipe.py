"""The FP16 conversion recipe: which ops stay FP32 when an ONNX graph becomes FP16.

It lives in ``convert`` (below ``calibration``) because both the FP16 artifacts
(``calibration.onnx_quant``) and the TensorRT INT8 graph (:mod:`veca_deploy.convert.trt_int8`,
Q/DQ on the FP16 graph) read it; ``veca_deploy.calibration.recipe`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fp16Recipe:
    """ONNX FP16 with float32 I/O; the ops listed stay FP32 (LayerNorm overflows in FP16 on
    TensorRT; Softmax and the RoPE trigonometry lose too much)."""

    keep_fp32: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Cos", "Sin",
                                  "Range", "Erf")
    keep_io_types: bool = True
    backend: str = "onnxruntime"

    def to_dict(self) -> dict[str, Any]:
        return {"keep_fp32": list(self.keep_fp32), "keep_io_types": self.keep_io_types, "backend": self.backend,
                "converter": "onnxruntime.transformers.float16"}
