"""Recipe study behind the defaults in docs/quantization.md: accuracy and batch-1 latency of
INT8 recipes vs FP32, timed interleaved (A B A B, medians) so a busy machine hurts both alike.

    python -m veca_deploy.calibration.study BUNDLE [--tier 8] [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.reader import Bundle
from ..runtimes import create_runner
from ..runtimes.base import IMAGES
from ..runtimes.fingerprint import cpu_info
from ..runtimes.timing import interleaved
from .data import load_calibration
from .evaluate import images_at, load_eval_data, run_artifact
from .recipe import NncfRecipe, OrtRecipe


def latency_ab(backend: str, path_a: Path, path_b: Path, x: np.ndarray, rounds: int = 200, warmup: int = 20,
               **opts: Any) -> dict[str, float]:
    """Median batch-1 latency (ms) of A and B, interleaved in one process (the shared harness)."""
    ra, rb = create_runner(backend, path_a, **opts).activate(), create_runner(backend, path_b, **opts).activate()
    try:
        feed = {IMAGES: x[:1]}
        s = interleaved({"a": lambda: ra.infer(feed, check=False), "b": lambda: rb.infer(feed, check=False)},
                        rounds=rounds, warmup=warmup)
    finally:
        ra.close()
        rb.close()
    a, b = statistics.median(s["a"]), statistics.median(s["b"])
    return {"a_ms": round(a, 3), "b_ms": round(b, 3), "speedup": round(a / b, 2)}


def _top1(root: Path, art, x, labels, c: int, backend: str | None = None) -> float:
    out = run_artifact(root, art, x, c, backend)
    return float((out["logits"].argmax(-1) == labels).mean())


def study(bundle_dir: str | Path, tier: int = 8, limit: int | None = None, rounds: int = 200) -> dict[str, Any]:
    from .onnx_quant import quantize_onnx_int8, tensorrt_check
    from .openvino_quant import quantize_openvino_int8

    b = Bundle.open(bundle_dir)
    pre = b.preprocess
    size = b.manifest.artifacts[0].size
    ev = load_eval_data("fashion-mnist", pre, limit)
    x = images_at(ev, pre, size)
    cal = load_calibration("fashion-mnist", pre, size)
    fp32 = next(a for a in b.manifest.find(fmt="onnx", precision="fp32", cores=tier) if not a.elastic)
    ov32 = next(iter(b.manifest.find(fmt="openvino", precision="fp32", cores=tier)), None)
    rows: list[dict[str, Any]] = []
    base = _top1(b.root, fp32, x, ev.labels, tier)
    rows.append({"backend": "onnxruntime", "recipe": "FP32", "top1": base})
    ort = {
        "S8S8 MatMul/Gemm/Conv minmax": OrtRecipe(),
        "S8S8 MatMul/Gemm/Conv percentile": OrtRecipe(method="percentile"),
        "S8S8 MatMul/Gemm/Conv entropy": OrtRecipe(method="entropy"),
        "U8S8 MatMul/Gemm/Conv minmax": OrtRecipe(symmetric=False),
        "S8S8 MatMul/Gemm minmax": OrtRecipe(op_types=("MatMul", "Gemm")),
        "S8S8 +Add/Mul minmax": OrtRecipe(op_types=("MatMul", "Gemm", "Conv", "Add", "Mul")),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in ort.items():
            dst = Path(tmp) / f"{len(rows)}.onnx"
            t0 = time.perf_counter()
            quantize_onnx_int8(b.root / fp32.path, dst, cal, r, cache_dir=tmp)
            qs = time.perf_counter() - t0
            art = type(fp32)(**{**fp32.to_dict(), "path": str(dst), "precision": "int8", "files": []})
            top1 = _top1(Path("/"), art, x, ev.labels, tier, "onnxruntime")
            lat = latency_ab("onnxruntime", b.root / fp32.path, dst, x, rounds=rounds)
            rows.append({"backend": "onnxruntime", "recipe": name, "top1": top1, "drop_points": (base - top1) * 100,
                         "fp32_ms": lat["a_ms"], "int8_ms": lat["b_ms"], "speedup": lat["speedup"],
                         "tensorrt_ok": tensorrt_check(dst)["ok"], "quantize_s": round(qs, 1)})
        if ov32 is not None:
            ovbase = _top1(b.root, ov32, x, ev.labels, tier)
            rows.append({"backend": "openvino", "recipe": "FP32 (f32)", "top1": ovbase})
            for sq in (False, True):
                dst = Path(tmp) / f"ov{sq}" / "m.xml"
                t0 = time.perf_counter()
                quantize_openvino_int8(b.root / ov32.path, dst, cal, NncfRecipe(smooth_quant=sq), cache_dir=tmp)
                qs = time.perf_counter() - t0
                art = type(ov32)(**{**ov32.to_dict(), "path": str(dst), "precision": "int8", "files": []})
                top1 = _top1(Path("/"), art, x, ev.labels, tier, "openvino")
                lat = latency_ab("openvino", b.root / ov32.path, dst, x, rounds=rounds, inference_precision="f32")
                rows.append({"backend": "openvino", "recipe": f"NNCF transformer, SmoothQuant {'on' if sq else 'off'}",
                             "top1": top1, "drop_points": (ovbase - top1) * 100, "fp32_ms": lat["a_ms"],
                             "int8_ms": lat["b_ms"], "speedup": lat["speedup"], "quantize_s": round(qs, 1)})
    return {"bundle": str(bundle_dir), "tier": tier, "samples": ev.samples, "calibration": cal.record(),
            "machine": f"{platform.processor() or platform.machine()}, {(cpu_info()['model'] or platform.machine())}", "rows": rows,
            "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bundle")
    ap.add_argument("--tier", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = study(a.bundle, a.tier, a.limit, a.rounds)
    text = json.dumps(res, indent=1)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":  # pragma: no cover
    main()
