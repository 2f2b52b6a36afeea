"""The one table of artifact formats, precisions, backends and execution variants.

Everything that needs to know "what can a bundle hold and what runs it" reads this module: the
manifest's validation, the CLI's choices, the runner registry, the comparator (which runner
settings a parity check needs), the selector and the README's format table (``docs_table``).
A new format or execution variant is one row here. Pure Python, imported by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Precisions an artifact's weights and math are stored in.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Backend:
    """A runtime that executes artifacts: where its runner lives and what installs it."""

    name: str
    module: str  # veca_deploy.runtimes.<module> holding the runner class
    runner: str
    probe: str  # the Python package whose import says the backend exists here
    extra: str  # what to pip install
    devices: tuple[str, ...] = ("CPU",)  # device axis (OpenVINO CPU/GPU/NPU, ORT execution providers)
    #: runner options every accuracy/parity check uses, so a check measures the graph, not the
    #: runtime's own precision choice (OpenVINO runs f32 graphs in bf16 on CPUs that have it)
    parity_options: dict = field(default_factory=dict)
    #: execution variants the runtime offers for an artifact beyond its stored precision
    execution_variants: tuple[str, ...] = ()
    #: whether one runner may be called from several threads at once
    thread_safe: bool = False
    #: what the runner executes for a given artifact and settings; raised when a release changes
    #: that (compile shapes, execution precision of some ops), so profile entries timed by an
    #: older runner are measured again instead of trusted (``selector.profile.Profile.timing``).
    #: OpenVINO 2: batch 1 compiled static, the bf16 graph tail (2026-12-07)
    runner_revision: int = 1


@dataclass(frozen=True)
class Format:
    """An artifact format: files, the backend that runs it and what it may hold."""

    name: str
    suffix: str
    backend: str
    precisions: tuple[str, ...]
    sidecars: tuple[str, ...] = ()  # extra files beside the main one (OpenVINO's .bin)
    built_by: str = "export"  # which command writes it
    tensorrt_source: bool = False  # whether TensorRT builds engines from it
    description: str = ""


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    # bf16: MLAS's bf16 fast-math GEMMs, AArch64 with BF16 only (runtimes.supported_variants)
    Backend("onnxruntime", "onnxrt", "OnnxRuntimeRunner", "onnxruntime", "veca-deploy",
            devices=("CPU", "CUDA", "TensorRT"), execution_variants=("bf16",), thread_safe=True),
    Backend("openvino", "openvino_rt", "OpenVINORunner", "openvino", "veca-deploy[openvino]",
            devices=("CPU", "GPU", "NPU"), parity_options={"inference_precision": "f32"},
            execution_variants=("f32", "bf16", "f16"), runner_revision=2),
    # thread-safe: its infer takes one of its lanes (``streams`` of them, one by default)
    Backend("tensorrt", "trt", "TensorRTRunner", "tensorrt", "veca-deploy[tensorrt]", devices=("GPU",),
            thread_safe=True),
)}

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", "onnxruntime", PRECISIONS, tensorrt_source=True,
           description="ONNX graph; FP32 per tier and elastic, FP16, INT8 QDQ (S8S8 / U8S8)"),
    Format("openvino", ".xml", "openvino", PRECISIONS, sidecars=(".bin",),
           description="OpenVINO IR; FP32, FP16-compressed weights, INT8 (NNCF)"),
    Format("tensorrt", ".plan", "tensorrt", ("fp16", "int8", "fp32"), sidecars=(".json",), built_by="build-trt",
           description="TensorRT engine, strongly typed, built on the target GPU"),
)}

#: formats ``export`` writes itself (the others come from later commands on the target)
EXPORT_FORMATS: tuple[str, ...] = tuple(n for n, f in FORMATS.items() if f.built_by == "export")
#: precisions each exported format is produced in by export/quantize
EXPORT_PRECISIONS: dict[str, tuple[str, ...]] = {"onnx": PRECISIONS, "openvino": PRECISIONS}


#: what an execution variant computes in, as a gate precision (``compare.gates``): a bf16 run of
#: an FP32 graph is judged like a bf16 artifact, never by the FP32 tolerance
VARIANT_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
PRECISION_ORDER = ("int8", "bf16", "fp16", "fp32")  # least precise first (bf16 keeps 8 mantissa bits, fp16 11)


def variant_options(backend: str, variant: str | None) -> dict:
    """Runner options that select ``variant`` on ``backend`` ({} for the default)."""
    if variant is None:
        return {}
    if variant not in BACKENDS[backend].execution_variants:
        raise KeyError(f"{backend} has no execution variant {variant!r}")
    return {"inference_precision": variant}


def execution_precision(precision: str, variant: str | None) -> str:
    """The precision an artifact really computes in under ``variant``: the lower of the two."""
    if variant is None:
        return precision
    v = VARIANT_PRECISION[variant]
    return min(precision, v, key=lambda p: PRECISION_ORDER.index(p) if p in PRECISION_ORDER else 99)


def variant_applies(precision: str, variant: str | None) -> bool:
    """Whether ``variant`` runs an artifact of ``precision`` differently from its default run, so
    that it is a candidate of its own: a float artifact computes in the variant's lower precision;
    an INT8 artifact keeps its quantized products and runs its float ops (norms, softmax, RoPE,
    element-wise, the residual stream) in the variant's precision (bf16 on AMX: docs/performance.md).
    Its gate stays the artifact's (:func:`execution_precision`)."""
    if variant is None:
        return False
    if precision == "int8":
        return VARIANT_PRECISION[variant] != "fp32"
    return execution_precision(precision, variant) != precision


def format_backend(fmt: str) -> str:
    """The backend that runs ``fmt`` (a KeyError for an unknown format is a bug: the manifest checks)."""
    return FORMATS[fmt].backend


def backend_format(backend: str) -> str:
    return next(f.name for f in FORMATS.values() if f.backend == backend)


def parity_options(backend: str) -> dict:
    """Runner options for checks that must see the graph's own numbers."""
    return dict(BACKENDS[backend].parity_options)


def docs_table() -> str:
    """The README's format table, from this module."""
    rows = ["| format | files | backend | precisions | written by | TensorRT source |", "|---|---|---|---|---|---|"]
    for f in FORMATS.values():
        files = " + ".join((f.suffix,) + f.sidecars)
        rows.append(f"| `{f.name}` | {files} | {f.backend} (`{BACKENDS[f.backend].extra}`) | "
                    f"{', '.join(f.precisions)} | `{f.built_by}` | {'yes' if f.tensorrt_source else 'no'} |")
    return "\n".join(rows)


__all__ = ["BACKENDS", "EXPORT_FORMATS", "EXPORT_PRECISIONS", "FORMATS", "PRECISIONS", "Backend", "Format",
           "backend_format", "docs_table", "format_backend", "parity_options", "variant_applies"]
