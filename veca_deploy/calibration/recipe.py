"""Quantization recipes: what to quantize and how, as data saved next to every result.

Defaults come from the measurements in ``docs/quantization.md`` (trained veca_tiny, full
Fashion-MNIST test set, this repo's CPU): see there before changing them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..convert.recipe import Fp16Recipe  # noqa: F401  (a conversion recipe; re-exported here)
from ..errors import UsageError

METHODS = ("minmax", "percentile", "entropy")
#: The ops that are quantized (weights and inputs of MatMul/Gemm/Conv); everything else (LayerNorm,
#: Softmax, activations, residual Adds) stays float: quantizing every op type ruins transformers
#: (toolchain-facts: top-1 agreement 0.56-0.75).
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class OrtRecipe:
    """ONNX Runtime static QDQ quantization. ``symmetric=True`` is the S8S8 variant TensorRT's
    strongly typed builds need (signed INT8, zero point 0, float biases); False is U8S8.
    ``float_rotations`` / ``float_input_layer`` / ``float_coordinates``: RoPE's pair rotation, the
    patch embedding and the products that map core positions stay in float (added to
    ``nodes_to_exclude`` when quantizing; ``calibration/keep_float.py``)."""

    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    method: str = "minmax"
    symmetric: bool = True
    per_channel: bool = True
    percentile: float = 99.999
    reduce_range: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    float_rotations: bool = True
    float_input_layer: bool = True
    float_coordinates: bool = True
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; choose from {', '.join(METHODS)}")

    @property
    def variant(self) -> str:
        base = "S8S8-symmetric" if self.symmetric else "U8S8"
        return base + ("-reduce-range" if self.reduce_range else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"], d["nodes_to_exclude"] = list(self.op_types), list(self.nodes_to_exclude)
        d["variant"] = self.variant
        d["weights"] = ("int7 (reduce_range)" if self.reduce_range else "int8") + " symmetric " + (
            "per-channel" if self.per_channel else "per-tensor")
        d["activations"] = "int8 symmetric" if self.symmetric else "uint8 asymmetric"
        d["bias"] = "float" if self.symmetric else "int32"
        return d


@dataclass(frozen=True)
class NncfRecipe:
    """NNCF post-training quantization of the OpenVINO FP32 IR.

    ``ignored_types``: the attention's activation x activation products (OpenVINO's
    ``ScaledDotProductAttention``) stay in float. Quantized, they gave wrong numbers in OpenVINO
    2026.4's bf16 Snippets attention kernel at some shapes (the reference model at C=16 and 32:
    cosine -0.23 and 0.98 against FP32, every input), and they barely matter for speed: VECA's
    attention is 2NC + C^2 query-key pairs (veca_small C=16 at 512 px, INT8 with bf16 floats:
    46.1 vs 44.8 ms). docs/quantization.md, "NNCF preset per target".

    ``float_rotations`` / ``float_input_layer`` / ``float_coordinates``: RoPE's pair rotation, the
    patch embedding and the position products stay in float, as in :class:`OrtRecipe`
    (``calibration/keep_float.py`` says why, with the numbers).
    """

    model_type: str = "transformer"
    smooth_quant: bool = False
    preset: str = "mixed"
    fast_bias_correction: bool = True
    ignored_types: tuple[str, ...] = ("ScaledDotProductAttention",)
    float_rotations: bool = True
    float_input_layer: bool = True
    float_coordinates: bool = True
    backend: str = "openvino"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ignored_types"] = list(self.ignored_types)
        return d


#: NNCF quantization presets: ``mixed`` (symmetric weights, asymmetric activations: NNCF's default
#: for transformers) and ``performance`` (symmetric both, what AMX multiplies natively;
#: chosen per ``--target``, see calibration/target.py)
NNCF_PRESETS: tuple[str, ...] = ("mixed", "performance")

#: ONNX INT8 schemes: ``s8s8`` (default) is what TensorRT builds from (signed, zero point 0);
#: ``u8s8`` keeps every MatMul in ONNX Runtime's integer kernels on x86 CPUs (QLinearMatMul),
#: with 7-bit weights (``reduce_range``) so AVX2's u8 x s8 multiply-add cannot saturate.
#: See docs/performance.md for the measurements.
INT8_SCHEMES = {"s8s8": {"symmetric": True, "reduce_range": False},
                "u8s8": {"symmetric": False, "reduce_range": True}}


def ort_recipe(method: str | None = None, scheme: str | None = None, base: OrtRecipe | None = None,
               **overrides: Any) -> OrtRecipe:
    """``base`` (default: the default recipe) with the INT8 scheme, method and overrides applied."""
    r = base or OrtRecipe()
    if scheme:
        if scheme not in INT8_SCHEMES:
            raise UsageError(f"unknown INT8 scheme {scheme!r}; choose from {', '.join(INT8_SCHEMES)}")
        r = replace(r, **INT8_SCHEMES[scheme])
    if method:
        r = replace(r, method=method.lower())
    return replace(r, **overrides) if overrides else r


def recipe_key(*parts: Any) -> str:
    """A stable hash of anything JSON-serializable (recipe dicts, digests, tiers)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
