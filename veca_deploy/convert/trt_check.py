"""Static TensorRT-readiness check of ONNX graphs, runnable without TensorRT or a GPU.

Building an engine needs the target device (minutes on a Jetson); this check runs on the export
machine and catches what would make that build fail or silently change the model: operators
the ONNX parser rejects, dynamic dimensions no optimization profile covers, I/O and weight
dtypes TensorRT lacks, and Q/DQ layouts a strongly typed build refuses. The operator list is
data taken from onnx-tensorrt's ``docs/operators.md`` (TensorRT 10.x) plus its changelog for
operators added after 10.0; JetPack 6.1/6.2 ship TensorRT 10.3, hence the default target.
Needs the ``onnx`` package only.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import first_line, BackendUnavailable, BundleError, UsageError
from ..runtimes.base import CORE_SELECT, IMAGES

#: Default TensorRT release we check against: what JetPack 6.1 and 6.2 ship.
DEFAULT_TRT_VERSION = "10.3"

#: TensorRT majors a target version may name: the operator tables below are TensorRT 10's, which
#: TensorRT 11's parser also imports (build-trt builds for both).
SUPPORTED_TRT_MAJORS: tuple[int, ...] = (10, 11)

_TRT_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_trt_version(value: str) -> str:
    """A target TensorRT version as a user gives it (``--trt-version``): ``MAJOR.MINOR[.PATCH]``
    (a fourth build number, as in ``10.3.0.30``, is accepted) with a major in
    :data:`SUPPORTED_TRT_MAJORS`. Returns it stripped; anything else is a :class:`UsageError`."""
    v = str(value).strip()
    m = _TRT_VERSION_RE.fullmatch(v)
    known = ", ".join(f"{x}.x" for x in SUPPORTED_TRT_MAJORS)
    if m is None:
        raise UsageError(f"--trt-version must look like MAJOR.MINOR[.PATCH] (e.g. {DEFAULT_TRT_VERSION}), "
                         f"got {value!r}")
    if int(m.group(1)) not in SUPPORTED_TRT_MAJORS:
        raise UsageError(f"--trt-version {v}: TensorRT {m.group(1)} is not supported (known: {known})")
    return v

#: Operators (default ONNX domain) the TensorRT 10.0 ONNX parser imports natively.
TRT10_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: Operators added in later TensorRT 10 minors: name -> first (major, minor) that parses it.
TRT10_LATER_OPS: dict[str, tuple[int, int]] = {
    "DeformConv": (10, 1), "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5), "Attention": (10, 14), "RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}

#: Operators the parser explicitly does not import (so the message can say "not supported"
#: rather than "unknown"); anything absent from both tables is reported as unknown.
TRT10_UNSUPPORTED_OPS: frozenset[str] = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

#: Opset range of the default ONNX domain TensorRT 10.0 parses (later 10.x go up to 24).
MIN_OPSET, MAX_OPSET_TRT100 = 9, 20

# ONNX TensorProto.DataType numbers, spelled out so the tables read as data.
_DT = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
       9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
       16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ",
       21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1"}
#: Graph input/output dtypes the runner can bind (INT64 I/O is refused: engines take float inputs).
IO_DTYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT8", "UINT8", "BOOL"})
#: Tensor dtypes TensorRT 10 has (DOUBLE only through a lossy, clamping cast to FLOAT).
TENSOR_DTYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL",
                           "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"})
#: Zero-point dtypes TensorRT's Q/DQ accept: signed (symmetric) quantized types only.
ZERO_POINT_DTYPES = frozenset({"INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"})
#: Dynamic dimensions the builder covers with optimization profiles: input name -> axis.
PROFILED_DIMS = {IMAGES: 0, CORE_SELECT: 0}


@dataclass
class NodeInfo:
    """One node as TensorRT's parser will see it."""

    name: str
    op_type: str
    domain: str
    supported: bool
    note: str = ""


@dataclass
class CheckReport:
    """Outcome of :func:`check_onnx_for_tensorrt`. ``ok`` is False iff ``problems`` is non-empty;
    ``warnings`` do not block a build but deserve a look."""

    path: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nodes: list[NodeInfo] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    dynamic_dims: dict[str, dict[int, str]] = field(default_factory=dict)
    opset: int | None = None
    target: str = DEFAULT_TRT_VERSION

    def add(self, problem: str) -> None:
        self.problems.append(problem)
        self.ok = False

    @property
    def unsupported_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes if not n.supported]

    def summary(self) -> str:
        if self.ok:
            dyn = ", ".join(f"{k}[{a}]" for k, d in self.dynamic_dims.items() for a in d) or "none"
            return f"ok ({len(self.nodes)} nodes, dynamic: {dyn})"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.problems[0]}{more}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nodes"] = [asdict(n) for n in self.unsupported_nodes]  # the full list is noise in JSON
        d["dynamic_dims"] = {k: {str(a): v for a, v in dims.items()} for k, dims in self.dynamic_dims.items()}
        return d


def op_supported(op_type: str, domain: str = "", trt_version: str = DEFAULT_TRT_VERSION) -> tuple[bool, str]:
    """Whether TensorRT ``trt_version``'s ONNX parser imports this operator, with the reason if not."""
    if domain not in ("", "ai.onnx"):
        return False, f"custom-domain op {domain}::{op_type} (TensorRT needs a plugin for it)"
    if op_type in TRT10_OPS:
        return True, ""
    if op_type in TRT10_LATER_OPS:
        need = TRT10_LATER_OPS[op_type]
        if _version_tuple(trt_version) >= need:
            return True, ""
        return False, f"{op_type} needs TensorRT >= {need[0]}.{need[1]} (target {trt_version})"
    if op_type in TRT10_UNSUPPORTED_OPS:
        return False, f"{op_type} is not supported by TensorRT's ONNX parser"
    return False, f"{op_type} is not in TensorRT's ONNX operator list"


def check_onnx_for_tensorrt(path: str | os.PathLike, trt_version: str = DEFAULT_TRT_VERSION) -> CheckReport:
    """Check one ONNX file; never raises for a bad graph (problems go in the report), only for
    an unreadable file (:class:`BundleError`) or a missing ``onnx`` package."""
    onnx = _import_onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise BundleError(f"{path.name}: cannot read ONNX ({first_line(e, 200)})") from None
    report = CheckReport(path=str(path), target=str(trt_version))
    report.opset = _default_opset(model)
    if report.opset is not None:
        if report.opset < MIN_OPSET:
            report.add(f"opset {report.opset} is below {MIN_OPSET}, the oldest TensorRT 10 parses")
        elif report.opset > MAX_OPSET_TRT100:
            report.warnings.append(f"opset {report.opset}: TensorRT 10.0 parses opsets {MIN_OPSET}-{MAX_OPSET_TRT100}; "
                                   f"check that TensorRT {trt_version} parses it (re-export at opset 17 if not)")
    functions = {(f.domain, f.name): f for f in model.functions}
    graph = model.graph
    _check_io(graph, report)
    consts = _constants(graph)
    _check_nodes(graph, functions, consts, report, trt_version)
    _check_initializers(graph, report)
    _check_qdq(graph, consts, report)
    return report


# ---------------------------------------------------------------------------- graph I/O
def _check_io(graph, report: CheckReport) -> None:
    inits = {i.name for i in graph.initializer}
    for vi in graph.input:
        if vi.name in inits:  # IR < 4 lists initializers as inputs too
            continue
        if not vi.type.HasField("tensor_type"):
            report.add(f"graph input {vi.name!r} is not a tensor (sequence/map inputs are unsupported)")
            continue
        tt = vi.type.tensor_type
        dt = _DT.get(tt.elem_type, str(tt.elem_type))
        if dt not in IO_DTYPES:
            report.add(f"graph input {vi.name!r} is {dt}: engine inputs must be float32/float16/int32/int8/uint8/bool"
                       + (" (export the core selector as float32, only its length matters)" if dt == "INT64" else ""))
        if not tt.HasField("shape"):
            report.add(f"graph input {vi.name!r} has no shape (rank unknown): TensorRT needs a fixed rank")
            continue
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            label = d.dim_param or "?"
            if PROFILED_DIMS.get(vi.name) == axis:
                report.dynamic_dims.setdefault(vi.name, {})[axis] = label
            else:
                what = "batch" if axis == 0 else f"dim {axis}"
                report.add(f"graph input {vi.name!r} {what} ({label!r}) is dynamic: only {IMAGES}[0] (batch) and "
                           f"{CORE_SELECT}[0] get optimization profiles; export it static")
    for vi in graph.output:
        dt = _DT.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
        if dt not in IO_DTYPES:
            report.add(f"graph output {vi.name!r} is {dt}: engine outputs must be float32/float16/int32/int8/uint8/bool")


# ---------------------------------------------------------------------------- nodes
def _check_nodes(graph, functions: dict, consts: dict, report: CheckReport, trt_version: str,
                 prefix: str = "") -> None:
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        report.op_counts[node.op_type] = report.op_counts.get(node.op_type, 0) + 1
        fn = functions.get((node.domain, node.op_type))
        if fn is not None:  # ONNX local functions are inlined by the parser: check their body
            bad = [n.op_type for n in fn.node if not op_supported(n.op_type, n.domain, trt_version)[0]]
            ok, note = (not bad), (f"local function uses unsupported {', '.join(sorted(set(bad)))}" if bad else "")
        else:
            ok, note = op_supported(node.op_type, node.domain, trt_version)
        report.nodes.append(NodeInfo(name, node.op_type, node.domain, ok, note))
        if not ok:
            report.add(f"node {name!r}: {note}")
        for attr in node.attribute:  # If/Loop/Scan bodies
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _check_nodes(sub, functions, consts, report, trt_version, prefix=f"{name}/")
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name in ("value_string", "value_strings", "sparse_value"):
                    report.add(f"node {name!r}: Constant with {attr.name} is unsupported")
                elif attr.name == "value":
                    dt = _DT.get(attr.t.data_type, str(attr.t.data_type))
                    if dt not in TENSOR_DTYPES:
                        report.add(f"node {name!r}: Constant of dtype {dt} is unsupported by TensorRT"
                                   + (" (it would be cast to FLOAT with clamping)" if dt == "DOUBLE" else ""))


def _check_initializers(graph, report: CheckReport) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in graph.initializer:
        if init.name not in used:  # dropped by the parser, never reaches the engine
            continue
        dt = _DT.get(init.data_type, str(init.data_type))
        if dt not in TENSOR_DTYPES:
            hint = " (the parser would cast it to FLOAT with clamping; convert the weight to float32)" \
                if dt == "DOUBLE" else ""
            report.add(f"initializer {init.name!r} is {dt}, which TensorRT does not support{hint}")


# ---------------------------------------------------------------------------- Q/DQ
def _constants(graph) -> dict[str, Any]:
    """Tensors whose value is known at build time: initializers and Constant node outputs."""
    consts: dict[str, Any] = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    return consts


def _check_qdq(graph, consts: dict, report: CheckReport) -> None:
    from onnx import numpy_helper

    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    for i, node in enumerate(graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}_{i}"
        kind = "Q" if node.op_type == "QuantizeLinear" else "DQ"
        # placement: Q feeds only DQ; DQ reads a Q output or a constant (pre-quantized weights)
        if kind == "Q":
            users = consumers.get(node.output[0], [])
            if node.output[0] in outputs:
                report.add(f"QuantizeLinear {name!r} is a graph output: strongly typed builds need Q->DQ pairs")
            bad = sorted({u.op_type for u in users if u.op_type != "DequantizeLinear"})
            if bad:
                report.add(f"QuantizeLinear {name!r} feeds {', '.join(bad)}: each Q must be followed by DequantizeLinear")
        else:
            src = node.input[0]
            prod = producers.get(src)
            if src in consts:
                dt = _DT.get(consts[src].data_type, str(consts[src].data_type))
                if dt not in ZERO_POINT_DTYPES:
                    report.add(f"DequantizeLinear {name!r} dequantizes a {dt} constant"
                               + (" (a quantized bias)" if dt == "INT32" else "")
                               + ": TensorRT dequantizes INT8/FP8/INT4 only (ONNX Runtime: QuantizeBias=False)")
                    continue
            elif prod is None or prod.op_type != "QuantizeLinear":
                what = prod.op_type if prod is not None else "a graph input"
                report.add(f"DequantizeLinear {name!r} reads {what}, not a QuantizeLinear or constant weights")
        # scale: build-time constant
        if len(node.input) < 2 or node.input[1] not in consts:
            report.add(f"{node.op_type} {name!r}: scale must be a constant initializer")
        # zero point: signed and zero
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if not zp_name:
            if kind == "Q" and not any(a.name == "output_dtype" for a in node.attribute):
                report.warnings.append(f"QuantizeLinear {name!r} has no zero point, which ONNX reads as UINT8; "
                                       "give an explicit INT8 zero point of 0")
            continue
        if zp_name not in consts:
            report.add(f"{node.op_type} {name!r}: zero point must be a constant initializer")
            continue
        zp = consts[zp_name]
        dt = _DT.get(zp.data_type, str(zp.data_type))
        if dt not in ZERO_POINT_DTYPES:
            report.add(f"{node.op_type} {name!r}: zero point is {dt}; TensorRT supports only signed INT8 "
                       f"quantization with zero point 0 (re-quantize for TensorRT: quantize --target tensorrt, or --int8-scheme s8s8)")
            continue
        try:
            values = numpy_helper.to_array(zp)
        except Exception:  # exotic packed types: cannot read, do not guess
            continue
        if values.size and (values.astype("float64") != 0).any():
            report.add(f"{node.op_type} {name!r}: zero point must be 0, TensorRT quantizes symmetrically "
                       "(ONNX Runtime: ActivationSymmetric=True, WeightSymmetric=True)")


# ---------------------------------------------------------------------------- bundles
def check_bundle_for_tensorrt(bundle_dir: str | os.PathLike,
                              trt_version: str = DEFAULT_TRT_VERSION) -> list[tuple[str, CheckReport]]:
    """Check every ONNX artifact of a bundle (hashes verified on the way)."""
    from ..bundle.reader import Bundle

    bundle = Bundle.open(bundle_dir)
    arts = [a for a in bundle.artifacts if a.format == "onnx"]
    if not arts:
        raise BundleError(f"{bundle.root}: no ONNX artifacts to check")
    return [(a.id, check_onnx_for_tensorrt(bundle.path_of(a), trt_version)) for a in arts]


# ---------------------------------------------------------------------------- helpers
def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("the onnx package is needed to check graphs: pip install onnx") from None
    return onnx


def _default_opset(model) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)

