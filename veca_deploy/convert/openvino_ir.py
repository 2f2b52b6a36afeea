"""OpenVINO IR (xml + bin) from the simplified ONNX, FP32 or with FP16-compressed weights."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import first_line, BackendUnavailable, ExportError


def lower_swish(model) -> int:
    """Rewrite every ``Swish(x)`` (SiLU: OpenVINO fuses the exported ``x * Sigmoid(x)`` into it)
    as ``h * (1 + tanh(h))`` with ``h = x / 2``, the same function; returns how many.

    Why: the CPU plugin fuses Swish into the epilogue of the FullyConnected before it, where it
    cost as much as the product itself (veca_small C=16 at 512 px, INT8 with bf16 floats, AMX:
    fc1's u half 8.4 ms vs 4.1 ms for the v half). In this form the product runs plain, ``/ 2``
    folds into it, and the tanh joins the element-wise subgraph that already reads u and v (the
    SwiGLU product and fc2's quantize). Measured side by side (docs/performance.md): f32 -3.5 %,
    FP32 IR in bf16 -2.8 %, INT8 with bf16 floats -3.8 %. ONNX Runtime keeps the sigmoid form
    (its fused QuickGelu kernel; the tanh form was 3 % slower there), so this is an IR-only lowering.
    For large negative x, ``1 + tanh(h)`` cancels where SiLU is itself ~0 (an absolute error of
    the precision's epsilon times |x|); every execution variant is gated on the golden outputs
    (FP32 IR in bf16: cosine 0.99997 against the sigmoid form)."""
    try:
        import openvino.opset13 as ops
    except ImportError:  # older releases name it only under openvino.runtime (2023.3, our floor)
        from openvino.runtime import opset13 as ops
    import numpy as np

    n = 0
    for op in model.get_ops():
        if op.get_type_name() != "Swish" or op.get_input_size() != 1:  # a beta input: leave it
            continue
        x = op.input_value(0)
        if x.get_element_type().get_type_name() not in ("f32", "f16"):  # what an exported graph holds
            continue
        dtype = x.get_element_type().to_dtype()
        h = ops.multiply(x, ops.constant(np.array(0.5, dtype)))
        out = ops.multiply(h, ops.add(ops.tanh(h), ops.constant(np.array(1.0, dtype))))
        out.set_friendly_name(op.get_friendly_name())
        out.output(0).get_tensor().set_names(op.output(0).get_names())
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
        n += 1
    if n:
        model.validate_nodes_and_infer_types()
    return n


def export_openvino(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, *, precision: str = "fp32",
                    metadata: dict[str, str] | None = None, swish_as_tanh: bool = True) -> list[Path]:
    """Convert ONNX -> IR. ``precision="fp16"`` compresses weights to FP16 (compute stays
    as the runtime decides); ``swish_as_tanh``: :func:`lower_swish`. Returns the written files (xml, bin)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'veca-deploy[openvino]'") from e
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"OpenVINO IR export supports fp32 and fp16, not {precision}")
    xml_path = Path(xml_path)
    try:
        model = ov.convert_model(os.fspath(onnx_path))
        if swish_as_tanh:
            lower_swish(model)
        for k, v in (metadata or {}).items():
            model.set_rt_info(str(v), ["veca", str(k).removeprefix("veca.")])
        ov.save_model(model, os.fspath(xml_path), compress_to_fp16=(precision == "fp16"))
    except Exception as e:
        msg = first_line(e)
        raise ExportError(f"OpenVINO conversion of {Path(onnx_path).name} failed: {msg}") from e
    return [xml_path, xml_path.with_suffix(".bin")]


def read_rt_info(xml_path: str | os.PathLike) -> dict[str, str]:
    import openvino as ov

    model = ov.Core().read_model(os.fspath(xml_path))
    if not model.has_rt_info(["veca"]):
        return {}
    keys = model.get_rt_info()["veca"]
    return {str(k): model.get_rt_info(["veca", str(k)]).astype(str) for k in keys}
