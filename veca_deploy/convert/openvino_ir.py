"""OpenVINO IR (xml + bin) from the simplified ONNX, FP32 or with FP16-compressed weights."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import first_line, BackendUnavailable, ExportError


def export_openvino(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, *, precision: str = "fp32",
                    metadata: dict[str, str] | None = None) -> list[Path]:
    """Convert ONNX -> IR. ``precision="fp16"`` compresses weights to FP16 (compute stays
    as the runtime decides). Returns the written files (xml, bin)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'veca-deploy[openvino]'") from e
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"OpenVINO IR export supports fp32 and fp16, not {precision}")
    xml_path = Path(xml_path)
    try:
        model = ov.convert_model(os.fspath(onnx_path))
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
