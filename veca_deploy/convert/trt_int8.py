"""The graph a TensorRT INT8 engine is built from: the bundle's S8S8 Q/DQ graph with its float
parts in FP16 (``qdq-fp16``, the default) or as it is (``qdq-fp32``).

A strongly typed build keeps the ONNX graph's types. The S8S8 graph ONNX Runtime's quantizer
writes is FP32 outside its Q/DQ pairs, so TensorRT would run every LayerNorm, Softmax, residual
Add and GELU of it in FP32 and the GEMMs would dequantize to FP32: an "INT8" engine slower than
the FP16 one. :func:`write_qdq_fp16` rewrites that graph so a strongly typed build gets INT8 GEMMs
with FP16 everywhere else, the layout NVIDIA's ModelOpt produces (``high_precision_dtype=fp16``):

* the default-domain opset goes to 19 (``onnx.version_converter``), the first whose
  QuantizeLinear/DequantizeLinear take FP16 scales, so a DequantizeLinear outputs FP16;
* every float initializer and activation becomes FP16 (the Q/DQ scales included; INT8 weights,
  zero points and the calibrated ranges are untouched), with ONNX Runtime's float16 converter,
  the same one and the same op block list the bundle's FP16 artifacts use: the ops in
  :attr:`Fp16Recipe.keep_fp32` (LayerNorm, Softmax, RoPE trigonometry, ...) stay FP32 between
  Casts; graph inputs and outputs stay float32.

The result is checked structurally here (:func:`qdq_fp16_problems`) and numerically wherever it
is used: by the engine gates on the device (int8 gate against the bundle's golden outputs) and by
the tests on the reference bundle in ONNX Runtime on CPU. ModelOpt itself is not used: it needs
torch, CuPy and onnxruntime-gpu, which a Jetson runtime install does not have. Needs ``onnx``
(and onnxruntime, a base dependency); no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .recipe import Fp16Recipe
from ..errors import BackendUnavailable, ExportError, UsageError, first_line

#: how build-trt gets the graph of an INT8 engine
INT8_SOURCES: dict[str, str] = {
    "qdq-fp16": "the bundle's S8S8 Q/DQ graph with FP16 outside the INT8 GEMMs (opset 19, FP16 scales)",
    "qdq-fp32": "the bundle's S8S8 Q/DQ graph as it is (FP32 outside the INT8 GEMMs)",
}
DEFAULT_INT8_SOURCE = "qdq-fp16"
#: the first opset whose Q/DQ accept FP16 scales (and so give FP16 DequantizeLinear outputs)
QDQ_FP16_OPSET = 19
#: ops whose inputs the FP16 graph must give in FP16 (the ones TensorRT fuses with Q/DQ into INT8 kernels)
GEMM_OPS = ("MatMul", "Gemm", "Conv")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: smallest normal float16: scales below it are stored with fewer significant bits
FP16_MIN_NORMAL = 2.0 ** -14


def check_int8_source(name: str | None) -> str:
    name = (name or DEFAULT_INT8_SOURCE).strip().lower()
    if name not in INT8_SOURCES:
        raise UsageError(f"unknown INT8 source {name!r}; choose from {', '.join(INT8_SOURCES)}")
    return name


def _onnx():
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("the qdq-fp16 INT8 source needs the onnx package: pip install onnx "
                                 "(or build from the graph as it is: --int8-source qdq-fp32)") from None
    return onnx


def write_qdq_fp16(src: str | os.PathLike, dst: str | os.PathLike, recipe: Fp16Recipe | None = None) -> dict[str, Any]:
    """Write the FP16 form of the S8S8 Q/DQ graph ``src`` to ``dst``; returns what was done
    (opsets, counts, the FP16 rounding of the scales, ``dst``'s sha256)."""
    from ..bundle.io import sha256_file

    onnx = _onnx()
    src, dst = Path(src), Path(dst)
    try:
        model = onnx.load(os.fspath(src))
    except Exception as e:  # protobuf raises several types for a damaged file
        raise ExportError(f"{src.name}: cannot read ONNX ({first_line(e, 160)})") from None
    out, info = qdq_fp16_model(model, recipe, name=src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(out, os.fspath(dst))
    info["sha256"] = sha256_file(dst)
    return info


def qdq_fp16_model(model: Any, recipe: Fp16Recipe | None = None, name: str = "graph") -> tuple[Any, dict[str, Any]]:
    """The FP16 form of an S8S8 Q/DQ ``onnx.ModelProto`` (a new model) and what was done."""
    onnx = _onnx()
    from onnx import version_converter

    recipe = recipe or Fp16Recipe()
    _require_s8s8_qdq(model, name)
    before = _io_types(model)
    n_qdq = sum(n.op_type in QDQ_OPS for n in model.graph.node)
    scales = _scale_stats(model)
    opset_from = _default_opset(model)
    if opset_from < QDQ_FP16_OPSET:
        try:
            model = version_converter.convert_version(model, QDQ_FP16_OPSET)
        except Exception as e:
            raise ExportError(f"{name}: cannot move the graph to opset {QDQ_FP16_OPSET} for FP16 Q/DQ scales "
                              f"({first_line(e, 160)}); use --int8-source qdq-fp32") from None
    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as e:
        raise BackendUnavailable(f"the qdq-fp16 INT8 source needs onnxruntime.transformers ({e})") from None
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(recipe.keep_fp32))
    try:
        out = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    except Exception as e:
        raise ExportError(f"{name}: FP16 conversion of the Q/DQ graph failed ({type(e).__name__}: "
                          f"{first_line(e, 160)}); use --int8-source qdq-fp32") from None
    problems = qdq_fp16_problems(out, recipe, before, n_qdq, fp32_ops=block)
    if problems:
        raise ExportError(f"{name}: the qdq-fp16 graph is not what a strongly typed INT8 build needs: {problems[0]}"
                          f"{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}; use --int8-source qdq-fp32")
    meta = {p.key: p.value for p in out.metadata_props}
    meta.update({"veca.precision": "int8", "veca.int8_source": "qdq-fp16"})
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    dq_out = _dq_outputs(out)
    info = {
        "int8_source": "qdq-fp16", "opset_from": opset_from, "opset": _default_opset(out),
        "qdq_nodes": n_qdq, "casts_added": sum(n.op_type == "Cast" for n in out.graph.node)
        - sum(n.op_type == "Cast" for n in model.graph.node),
        "fp16_initializers": int(sum(i.data_type == onnx.TensorProto.FLOAT16 for i in out.graph.initializer)),
        "kept_fp32_ops": sorted({n.op_type for n in out.graph.node if n.op_type in recipe.keep_fp32}),
        "int8_gemms": sum(n.op_type in GEMM_OPS and any(i in dq_out for i in n.input[:2]) for n in out.graph.node),
        **scales, "converter": "onnx.version_converter + onnxruntime.transformers.float16",
    }
    return out, info


def qdq_fp16_problems(model: Any, recipe: Fp16Recipe | None = None, io_before: dict[str, int] | None = None,
                      qdq_before: int | None = None, fp32_ops: Any = None) -> list[str]:
    """What keeps ``model`` from being an INT8-GEMM / FP16-elsewhere graph: opset, Q/DQ scale
    types, the input types of every GEMM fed by a DequantizeLinear and of every op kept in FP32,
    graph I/O types (unchanged), the Q/DQ count (unchanged), and no FP32 math outside
    ``fp32_ops`` (default: the recipe's list)."""
    onnx = _onnx()
    recipe = recipe or Fp16Recipe()
    allowed32 = set(fp32_ops or recipe.keep_fp32) | {"Cast", "Shape"}
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    problems: list[str] = []
    opset = _default_opset(model)
    if opset < QDQ_FP16_OPSET:
        problems.append(f"opset {opset} < {QDQ_FP16_OPSET}: Q/DQ cannot take FP16 scales")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:
        return problems + [f"ONNX type inference failed ({first_line(e, 160)})"]
    types = _elem_types(inferred)
    inits = {i.name: i for i in model.graph.initializer}
    dq_out = _dq_outputs(model)
    for n in model.graph.node:
        label = n.name or n.op_type
        if n.op_type in QDQ_OPS:
            scale = inits.get(n.input[1]) if len(n.input) > 1 else None
            if scale is None or scale.data_type != FLOAT16:
                problems.append(f"{n.op_type} {label!r}: scale is not an FP16 constant")
            if n.op_type == "DequantizeLinear" and types.get(n.output[0]) != FLOAT16:
                problems.append(f"DequantizeLinear {label!r} does not output FP16")
        elif n.op_type in GEMM_OPS:
            fed = [i for i in n.input[:2] if i in dq_out]
            if fed and any(types.get(i) != FLOAT16 for i in n.input[:2]):
                problems.append(f"{n.op_type} {label!r}: inputs are not FP16")
        elif n.op_type in recipe.keep_fp32:
            bad = [i for i in n.input if i and types.get(i) == FLOAT16]
            if bad:
                problems.append(f"{n.op_type} {label!r} runs in FP16 (kept FP32 by the FP16 recipe)")
    if io_before is not None and _io_types(model) != io_before:
        problems.append(f"graph input/output types changed: {io_before} -> {_io_types(model)}")
    if qdq_before is not None:
        now = sum(n.op_type in QDQ_OPS for n in model.graph.node)
        if now != qdq_before:
            problems.append(f"Q/DQ node count changed ({qdq_before} -> {now})")
    graph_out = {g.name for g in model.graph.output}
    still32 = sorted({n.op_type for n in model.graph.node if n.op_type not in allowed32
                      and any(types.get(o) == FLOAT for o in n.output) and not graph_out.intersection(n.output)})
    if still32:
        problems.append(f"ops outside the FP32 list still compute in FP32: {', '.join(still32[:6])}")
    return problems


# ---------------------------------------------------------------------------- helpers
def _require_s8s8_qdq(model: Any, name: str) -> None:
    onnx = _onnx()
    qdq = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        raise ExportError(f"{name}: not a Q/DQ graph (no QuantizeLinear/DequantizeLinear)")
    inits = {i.name: i for i in model.graph.initializer}
    for n in qdq:
        if n.domain not in ("", "ai.onnx"):
            raise ExportError(f"{name}: {n.op_type} {n.name!r} is in domain {n.domain!r}, not ONNX's")
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and zp.data_type != onnx.TensorProto.INT8:
            raise ExportError(f"{name}: {n.op_type} {n.name!r} has a {onnx.TensorProto.DataType.Name(zp.data_type)} "
                              "zero point; the TensorRT INT8 source must be the S8S8 graph (quantize --target tensorrt)")
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise ExportError(f"{name}: already holds FP16 constants; give the S8S8 graph as the bundle stores it")


def _default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _io_types(model: Any) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


def _elem_types(model: Any) -> dict[str, int]:
    g = model.graph
    out = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


def _dq_outputs(model: Any) -> set[str]:
    return {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}


def _scale_stats(model: Any) -> dict[str, Any]:
    """How much FP16 changes the Q/DQ scales: the largest relative rounding and how many fall
    below float16's normal range (fewer significant bits there)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    vals = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32).ravel()
            for n in model.graph.node if n.op_type in QDQ_OPS and len(n.input) > 1 and n.input[1] in inits]
    if not vals:
        return {"scales": 0}
    s = np.concatenate(vals)
    s = s[s > 0]
    if not s.size:
        return {"scales": 0}
    rel = np.abs(s.astype(np.float16).astype(np.float32) - s) / s
    return {"scales": int(s.size), "scale_min": float(f"{s.min():.4g}"),
            "scale_fp16_max_rel_error": float(f"{rel.max():.3g}"),
            "scales_below_fp16_normal": int((s < FP16_MIN_NORMAL).sum())}


__all__ = ["DEFAULT_INT8_SOURCE", "INT8_SOURCES", "QDQ_FP16_OPSET", "check_int8_source", "qdq_fp16_model",
           "qdq_fp16_problems", "write_qdq_fp16"]
