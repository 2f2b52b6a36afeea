"""Parity gates: how close an artifact's outputs must be to the FP32 reference, per precision.

One table, read by the comparator (and so by export, quantize, validate and the TensorRT engine
gates). Thresholds come from measurement (docs/quantization.md): FP32 graphs agree with PyTorch
to ~1e-6 of the output scale, so 1e-4 catches a wrong op without flagging reordering; FP16 keeps
cosine >= 0.9999 on the reference model, so 0.999 leaves room for larger models; INT8 QDQ
(MatMul/Gemm/Conv) keeps >= 0.995, and 0.99 is where top-1 starts to move.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Gate:
    """``max_rel``: largest max-abs error as a fraction of the reference's scale (max |ref|);
    ``min_cosine``: smallest per-image cosine similarity. Either may be unset."""

    precision: str
    max_rel: float | None = None
    min_cosine: float | None = None
    #: integer outputs (argmax masks): smallest fraction of elements equal to the reference
    min_agreement: float | None = None

    def failures(self, name: str, rel: float, cosine: float) -> list[str]:
        out = []
        if self.max_rel is not None and rel > self.max_rel:
            out.append(f"{name}: max abs error is {rel:.3g} of the output scale (gate {self.max_rel:g})")
        if self.min_cosine is not None and cosine < self.min_cosine:
            out.append(f"{name}: cosine {cosine:.5f} < {self.min_cosine}")
        return out

    def agreement_failures(self, name: str, agreement: float) -> list[str]:
        if self.min_agreement is not None and agreement < self.min_agreement:
            return [f"{name}: {agreement:.5f} of the elements equal the reference (gate {self.min_agreement:g})"]
        return []

    def describe(self) -> str:
        parts = ([f"rel <= {self.max_rel:g}"] if self.max_rel is not None else []) + (
            [f"cosine >= {self.min_cosine:g}"] if self.min_cosine is not None else []) + (
            [f"integer agreement >= {self.min_agreement:g}"] if self.min_agreement is not None else [])
        return f"{self.precision}: " + ", ".join(parts)


FP32_REL_TOL = 1e-4
FP16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99
# integer outputs (an argmax mask in the graph): a pixel whose top-2 logits are within rounding
# may flip, so FP32 allows 1 in 1,000; lower precisions move near-ties more
FP32_MIN_AGREEMENT = 0.999
FP16_MIN_AGREEMENT = 0.99
INT8_MIN_AGREEMENT = 0.97

GATES: dict[str, Gate] = {
    "fp32": Gate("fp32", max_rel=FP32_REL_TOL, min_agreement=FP32_MIN_AGREEMENT),
    "fp16": Gate("fp16", min_cosine=FP16_MIN_COSINE, min_agreement=FP16_MIN_AGREEMENT),
    "int8": Gate("int8", min_cosine=INT8_MIN_COSINE, min_agreement=INT8_MIN_AGREEMENT),
    # execution in a lower precision than the stored graph (OpenVINO bf16 on an f32 IR)
    "bf16": Gate("bf16", min_cosine=FP16_MIN_COSINE, min_agreement=FP16_MIN_AGREEMENT),
}


def gate_for(precision: str) -> Gate:
    try:
        return GATES[precision]
    except KeyError:
        raise UsageError(f"no parity gate for precision {precision!r}; known: {', '.join(GATES)}") from None
