"""The machine's practical GEMM peak per backend and precision, measured in the same run.

A path's GFLOP/s means little without what the hardware gives that backend in that precision, and
a nominal peak (cores x clock x FMA width) is not a measurement. So each peak here is a
single-MatMul ONNX model, shaped like the model's largest GEMMs (tokens x width x 4 width), run
through the project's own runners with the settings the benchmarked variant uses:

* ``onnxruntime/fp32``: MatMul in float32;
* ``onnxruntime/int8``: the same MatMul as U8S8 QDQ (u8 activations, s8 weights), which ONNX
  Runtime fuses into its integer kernels (VNNI/AMX where the CPU has them);
* ``openvino/f32``, ``openvino/bf16``, ``openvino/f16``: the FP32 MatMul at each inference
  precision the CPU reports;
* ``openvino/int8``: the QDQ MatMul, which OpenVINO runs as an INT8 GEMM;
* ``numpy/fp32``: numpy's BLAS (the eager PyTorch baseline's reference);
* ``torch/fp32``, ``torch/bf16`` (when torch is importable; bf16 only where the CPU has
  AVX512-BF16 or AMX): ``torch.matmul`` on the same shape, a second practical peak from another
  kernel library (oneDNN), so a backend whose own single-MatMul model reads low is not judged
  only against itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: which peak each deploy_speedup variant is held against
VARIANT_PEAK = {"torch_fp32": "numpy/fp32", "ort_fp32": "onnxruntime/fp32", "ort_int8": "onnxruntime/int8",
                "ort_int8_u8s8": "onnxruntime/int8", "ov_fp32": "openvino/f32", "ov_fp16": "openvino/f32",
                "ov_int8": "openvino/int8", "ov_int8_bf16": "openvino/int8", "ov_int8_f16": "openvino/int8",
                "ov_fp32_bf16": "openvino/bf16", "ov_fp32_f16": "openvino/f16", "ov_fp16_bf16": "openvino/bf16",
                "ov_fp16_f16": "openvino/f16", "ort_fp32_bf16": "onnxruntime/bf16",
                "ort_int8_u8s8_bf16": "onnxruntime/int8", "ort_int8_bf16": "onnxruntime/int8"}


def gemm_models(folder: Path, m: int, k: int, n: int) -> dict[str, Path]:
    """A float32 MatMul ``[m, k] x [k, n]`` and its U8S8 QDQ twin, as ONNX files in ``folder``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    fp32 = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm_fp32", [x], [y],
                                               [numpy_helper.from_array(w, "w")]),
                             opset_imports=[helper.make_opsetid("", 17)])
    w_scale = np.float32(np.abs(w).max() / 127)
    inits = [numpy_helper.from_array(np.clip(np.round(w / w_scale), -127, 127).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.array(w_scale, np.float32), "w_s"),
             numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(8.0 / 255, np.float32), "x_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"]),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"])]
    int8 = helper.make_model(helper.make_graph(nodes, "gemm_u8s8", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])
    out = {"fp32": folder / "gemm_fp32.onnx", "int8": folder / "gemm_u8s8.onnx"}
    onnx.save(fp32, str(out["fp32"]))
    onnx.save(int8, str(out["int8"]))
    return out


def measure_peaks(m: int, k: int, n: int, *, threads: int | None, ort_options: dict[str, Any],
                  ov_precisions: list[str], rounds: int = 5, block: int = 3,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``{"shape", "gflop", "peaks": {key: {"gflops", "median_ms", ...}}}`` for every key the CPU
    and the installed backends support, timed interleaved with the project's harness."""
    from veca_deploy.runtimes import backend_available, create_runner, supported_variants
    from veca_deploy.runtimes.timing import interleaved

    flop = 2.0 * m * k * n
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    a = np.ascontiguousarray(x)
    b = np.random.default_rng(2).standard_normal((k, n)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="veca-gemm-") as tmp:
        files = gemm_models(Path(tmp), m, k, n)
        runners: dict[str, Any] = {"onnxruntime/fp32": create_runner("onnxruntime", files["fp32"], **ort_options),
                                   "onnxruntime/int8": create_runner("onnxruntime", files["int8"], **ort_options)}
        if "bf16" in supported_variants("onnxruntime", precision="fp32"):  # Arm with BF16: fast-math GEMMs
            runners["onnxruntime/bf16"] = create_runner("onnxruntime", files["fp32"], inference_precision="bf16",
                                                        **ort_options)
        if backend_available("openvino"):
            thr = {"threads": threads} if threads else {}
            for prec in ov_precisions:
                runners[f"openvino/{prec}"] = create_runner("openvino", files["fp32"], inference_precision=prec, **thr)
            runners["openvino/int8"] = create_runner("openvino", files["int8"], inference_precision="f32", **thr)
        calls: dict[str, Callable[[], object]] = {"numpy/fp32": lambda: a @ b}
        calls.update(_torch_calls(a, b, threads))
        for key, r in runners.items():
            r.activate()
            calls[key] = (lambda r=r: r.infer({"x": x}, check=False))
        samples = interleaved(calls, rounds=rounds, warmup=2, block=block, discard=1)
        described = {key: r.describe() for key, r in runners.items()}
        for r in runners.values():
            r.close()
    peaks = {}
    for key, ms in samples.items():
        med = float(np.median(ms))
        peaks[key] = {"median_ms": round(med, 6), "gflops": round(flop / med / 1e6, 1), "n": len(ms),
                      "runner": described.get(key, {"backend": "numpy"})}
        if log:
            log(f"  GEMM {m}x{k}x{n} {key}: {med:.2f} ms = {peaks[key]['gflops']} GFLOP/s")
    return {"shape": [m, k, n], "gflop": round(flop / 1e9, 3), "peaks": peaks,
            "how": f"single MatMul [{m},{k}]x[{k},{n}] per backend/precision, {rounds} interleaved rounds of "
                   f"{block} timed calls, median"}


def _torch_calls(a: np.ndarray, b: np.ndarray, threads: int | None) -> dict[str, Callable[[], object]]:
    try:
        import torch
    except ImportError:
        return {}
    if threads:
        torch.set_num_threads(int(threads))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out: dict[str, Callable[[], object]] = {"torch/fp32": lambda: torch.matmul(ta, tb)}
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if flags & {"avx512_bf16", "amx_bf16"}:
        ha, hb = ta.to(torch.bfloat16), tb.to(torch.bfloat16)
        out["torch/bf16"] = lambda: torch.matmul(ha, hb)
    return out


__all__ = ["VARIANT_PEAK", "gemm_models", "measure_peaks"]
