"""ONNX graph tools that need no torch: tier metadata, simplification, op histograms.

Used by the PyTorch exporter above and by every device-side converter (FP16, INT8, TensorRT),
so the ``veca.*`` metadata is written one way everywhere.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from ..errors import ExportError


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    """Write tier metadata into ``metadata_props`` (replacing keys already there)."""
    keep = [p for p in model_proto.metadata_props if p.key not in metadata]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for k, v in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)


def update_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Rewrite ``path`` with ``metadata`` merged into its ``metadata_props`` (via a temporary file)."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path))
    set_metadata(m, metadata)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def simplify_onnx(path: str | os.PathLike, tool: str = "onnxslim") -> dict[str, Any]:
    """Simplify in place with onnxslim (default) or onnxsim; returns node counts before/after."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path))
    before = len(m.graph.node)
    meta = {p.key: p.value for p in m.metadata_props}
    try:
        if tool == "onnxslim":
            import onnxslim

            with contextlib.redirect_stdout(io.StringIO()):
                out = onnxslim.slim(m)
        elif tool == "onnxsim":
            import onnxsim

            out, ok = onnxsim.simplify(m)
            if not ok:
                raise ExportError(f"onnxsim could not validate the simplified {path.name}")
        elif tool == "none":
            return {"tool": "none", "nodes_before": before, "nodes_after": before}
        else:
            raise ExportError(f"unknown simplifier {tool!r} (onnxslim, onnxsim or none)")
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"simplifying {path.name} with {tool} failed: {str(e).splitlines()[0][:300]}") from e
    set_metadata(out, meta)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(out, str(tmp))
    os.replace(tmp, path)
    return {"tool": tool, "nodes_before": before, "nodes_after": len(out.graph.node)}


def op_histogram(path: str | os.PathLike) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    hist: dict[str, int] = {}
    for n in m.graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    return dict(sorted(hist.items()))
