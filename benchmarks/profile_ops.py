"""Where does the time go? Per-operator profiles of one veca_small tier (random weights, batch 1)
in every CPU path a bundle can ship: ONNX Runtime FP32 / INT8 (S8S8 and U8S8 QDQ) and OpenVINO
f32 / bf16 execution of the FP32 IR (where the CPU runs bf16 natively) / INT8 (NNCF). The
investigation behind the graph and recipe choices in docs/performance.md.

``--peaks`` also measures the practical GEMM peak of each variant's backend and precision in the
same run (``benchmarks/_peak.py``: one MatMul shaped like the model's largest) and splits each
profile into matrix products (MatMul / FullyConnected / Gemm / Conv kernels) and everything else,
so a reader sees whether a path is held back by its GEMMs or by the rest.

Latency: all variants timed interleaved (A B C, C B A, ...), medians. Profiles: ONNX Runtime's
``enable_profiling`` (kernel time per node) and OpenVINO's ``PERF_COUNT`` (time and the kernel
that really ran, e.g. ``gemm_mlas_f32`` or ``jit_gemm_i8``), each aggregated by op type and by
node name with the layer index folded (``blocks.*/fc1/MatMul`` = all layers). One variant is
profiled at a time, after the timing, so profiling does not disturb the latency numbers.

    python benchmarks/profile_ops.py                  # veca_small C=16 at 512 px
    python benchmarks/profile_ops.py --size 1024 --variants ort-fp32,ov-f32
    python benchmarks/profile_ops.py --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "profile_ops"
VARIANTS = ("ort-fp32", "ort-int8-s8s8", "ort-int8-u8s8", "ov-f32", "ov-bf16", "ov-int8", "ov-int8-sym",
            "ov-int8-sym-bf16")
#: the OpenVINO inference precision of each OpenVINO variant (bf16: the graph tail too, as the runner serves it)
OV_PRECISION = {"ov-f32": "f32", "ov-bf16": "bf16", "ov-int8": "f32", "ov-int8-sym": "f32",
                "ov-int8-sym-bf16": "bf16"}
#: variants that need the CPU's native bf16
BF16_VARIANTS = ("ov-bf16", "ov-int8-sym-bf16")
#: the _peak key each variant is held against
PEAK_KEY = {"ort-fp32": "onnxruntime/fp32", "ort-int8-s8s8": "onnxruntime/int8", "ort-int8-u8s8": "onnxruntime/int8",
            "ov-f32": "openvino/f32", "ov-bf16": "openvino/bf16", "ov-int8": "openvino/int8",
            "ov-int8-sym": "openvino/int8", "ov-int8-sym-bf16": "openvino/int8"}
#: the torch.matmul peak in the precision the variant's matrix products run in (INT8: none in torch)
TORCH_PEAK = {"ort-fp32": "torch/fp32", "ov-f32": "torch/fp32", "ov-bf16": "torch/bf16"}
GEMM_OPS = ("MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "FullyConnected", "Gemm", "Conv", "QLinearConv", "ConvInteger")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--calib-count", type=int, default=8, help="calibration crops (scales only; latency does not "
                                                                "depend on them)")
    ap.add_argument("--peaks", action="store_true", help="measure each variant's practical GEMM peak in the same run")
    ap.add_argument("--peak-shape", default="1024,1024,4096",
                    help="M,K,N of the single-MatMul peak model (default: deploy_speedup's, compute-bound)")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true", help="veca_tiny at 28 px, 2 rounds (CI)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.size, a.cores, a.rounds, a.profile_runs, a.calib_count = "veca_tiny", 28, 8, 2, 2, 4
    a.variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    return a


def pattern(name: str) -> str:
    """'/model/blocks.3/attn/MatMul_1' -> '/blocks.*/attn/MatMul': one row for all layers."""
    s = re.sub(r"blocks[._]\d+", "blocks.*", name)
    s = re.sub(r"(_\d+)+$", "", s)
    return s.replace("/model/", "/")


def top(d: dict[str, float], n: int) -> list[dict]:
    total = sum(d.values()) or 1.0
    return [{"name": k, "ms": round(v, 3), "pct": round(100 * v / total, 1)}
            for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]


def ort_profile(path: Path, x: np.ndarray, runs: int, prefix: Path) -> dict:
    """Kernel time per op type / node, averaged over ``runs`` model runs after one warm-up."""
    from veca_deploy.runtimes import create_runner

    r = create_runner("onnxruntime", path, profile=str(prefix)).activate()
    for _ in range(runs + 1):
        r.infer({"images": x}, check=False)
    r.close()
    pf = Path(r.profile_file)
    events = json.loads(pf.read_text())
    pf.unlink(missing_ok=True)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    keep_from = starts[1] if len(starts) > 1 else 0  # drop the warm-up run
    n = max(len(starts) - 1, 1)
    by_type, by_node = defaultdict(float), defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= keep_from:
            ms = e["dur"] / 1e3 / n
            by_type[e["args"].get("op_name", "?")] += ms
            by_node[pattern(e["name"][: -len("_kernel_time")])] += ms
    return {"total_ms": round(sum(by_type.values()), 2), "by_op_type": top(by_type, 20), "by_node": top(by_node, 20)}


def ov_profile(xml: Path, x: np.ndarray, runs: int, precision: str = "f32") -> dict:
    """PERF_COUNT per op type [kernel] / node, averaged over ``runs`` inferences after one warm-up,
    of the configuration the project's runner serves (batch-1 compile, bf16 graph tail)."""
    from veca_deploy.runtimes import create_runner

    r = create_runner("openvino", xml, inference_precision=precision, perf_count=True).activate()
    r.infer({"images": x}, check=False)
    by_type, by_node = defaultdict(float), defaultdict(float)
    for _ in range(runs):
        r.infer({"images": x}, check=False)
        for p in r.profiling_info():
            if p.real_time.total_seconds() <= 0:  # folded or in-place (a static-shape Reshape): nothing ran
                continue
            ms = p.real_time.total_seconds() * 1e3 / runs
            by_type[f"{p.node_type} [{p.exec_type}]"] += ms
            by_node[f"{pattern(p.node_name)} [{p.exec_type}]"] += ms
    r.close()
    return {"total_ms": round(sum(by_type.values()), 2), "by_op_type": top(by_type, 20), "by_node": top(by_node, 20),
            "gemm_ms": round(sum(v for k, v in by_type.items() if is_gemm(k.split(" [")[0])), 3),
            "kernels": sorted({k.split(" [")[1].rstrip("]") for k in by_type if " [" in k
                               and is_gemm(k.split(" [")[0])})}


def is_gemm(op_type: str) -> bool:
    """A matrix-product op (OpenVINO also names its quantized FC ``FullyConnectedQuantizedLegacy``)."""
    return op_type in GEMM_OPS or op_type.startswith("FullyConnected")


def gemm_split(prof: dict, backend: str) -> None:
    """Add ``gemm_ms`` (matrix-product kernels) to an ONNX Runtime profile (OpenVINO's has it)."""
    if "gemm_ms" not in prof:
        prof["gemm_ms"] = round(sum(d["ms"] for d in prof["by_op_type"] if is_gemm(d["name"])), 3)
    prof["other_ms"] = round(prof["total_ms"] - prof["gemm_ms"], 3)
    prof["gemm_pct"] = round(100 * prof["gemm_ms"] / max(prof["total_ms"], 1e-9), 1)


def ov_bf16_native() -> bool:
    """Whether this CPU runs OpenVINO bf16 inference natively (AVX512-BF16 / AMX)."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no OpenVINO or no such property: no bf16 variant
        return False


def build(a, model, tmp: Path) -> dict[str, tuple[str, Path]]:
    """Export (and quantize) what the variants need; returns variant -> (backend, path)."""
    from veca_deploy.calibration.data import load_calibration
    from veca_deploy.calibration.onnx_quant import quantize_onnx_int8
    from veca_deploy.calibration.openvino_quant import quantize_openvino_int8
    from veca_deploy.calibration.recipe import NncfRecipe, ort_recipe
    from veca_deploy.convert.onnx_graph import simplify_onnx
    from veca_deploy.export.onnx_export import export_onnx
    from veca_deploy.convert.openvino_ir import export_openvino
    from veca_deploy.preprocess import Preprocess

    onnx_p, xml = tmp / "fp32.onnx", tmp / "fp32.xml"
    export_onnx(model, onnx_p, height=a.size, width=a.size, cores=a.cores)
    simplify_onnx(onnx_p, "onnxslim")
    paths: dict[str, tuple[str, Path]] = {"ort-fp32": ("onnxruntime", onnx_p)}
    if any(v.startswith("ov-") for v in a.variants):
        export_openvino(onnx_p, xml, precision="fp32")
        paths["ov-f32"] = ("openvino", xml)
        paths["ov-bf16"] = ("openvino", xml)  # the same IR, bf16 execution
    if any("int8" in v for v in a.variants):
        from deploy_speedup import skimage_calibration

        raw, _ = skimage_calibration(a.calib_count)
        cal = load_calibration(raw, Preprocess(mean=model.cfg.mean, std=model.cfg.std), (a.size, a.size), count=a.calib_count, force=True)
        cache = str(tmp / "cache")
        for v, scheme in (("ort-int8-s8s8", "s8s8"), ("ort-int8-u8s8", "u8s8")):
            if v in a.variants:  # the exact schemes `--int8-scheme` ships
                quantize_onnx_int8(onnx_p, tmp / f"{v}.onnx", cal, ort_recipe(scheme=scheme), cache_dir=cache)
                paths[v] = ("onnxruntime", tmp / f"{v}.onnx")
        if "ov-int8" in a.variants:  # the mixed preset (asymmetric activations): what --target builds elsewhere
            quantize_openvino_int8(xml, tmp / "ov-int8.xml", cal, NncfRecipe(), cache_dir=cache)
            paths["ov-int8"] = ("openvino", tmp / "ov-int8.xml")
        if {"ov-int8-sym", "ov-int8-sym-bf16"} & set(a.variants):
            # NNCF's performance preset (symmetric activations, no zero points): what --target builds on VNNI/AMX
            quantize_openvino_int8(xml, tmp / "ov-int8-sym.xml", cal, NncfRecipe(preset="performance"),
                                   cache_dir=cache)
            paths["ov-int8-sym"] = paths["ov-int8-sym-bf16"] = ("openvino", tmp / "ov-int8-sym.xml")
    return {v: paths[v] for v in a.variants}


def main(argv=None) -> dict:
    a = parse(argv)
    import torch

    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import create_model, latency_weights
    from veca_deploy.runtimes import create_runner

    fp = cm.fingerprint()
    if set(BF16_VARIANTS) & set(a.variants) and not ov_bf16_native():
        cm.log(f"{', '.join(BF16_VARIANTS)} skipped: this CPU has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES)")
        a.variants = [v for v in a.variants if v not in BF16_VARIANTS]
    result = cm.header(fp, benchmark=NAME, model=a.model, size=a.size, cores=a.cores, variants=a.variants)
    cm.log(f"machine: {result['machine']}")
    torch.manual_seed(0)
    model = latency_weights(create_model(a.model)).eval()
    flops = forward_flops(model.cfg, a.size, a.size, a.cores)
    x = np.random.default_rng(0).standard_normal((1, 3, a.size, a.size)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="veca-prof-") as td:
        tmp = Path(td)
        paths = build(a, model, tmp)
        def opts(v: str, b: str) -> dict:
            return {"inference_precision": OV_PRECISION[v]} if b == "openvino" else {}

        runners = {v: create_runner(b, p, **opts(v, b)).activate() for v, (b, p) in paths.items()}
        feed = {"images": x}
        samples = cm.interleaved({v: (lambda r=r: r.infer(feed, check=False)) for v, r in runners.items()},
                                 rounds=a.rounds, warmup=1, iters=1 if a.size >= 256 else 10, log=cm.log)
        # parity on a real photo against the FP32 ONNX Runtime graph: a faster variant counts only if it agrees
        from veca_deploy.calibration.evaluate import mean_cosine
        from veca_deploy.compare.comparator import real_images
        from veca_deploy.preprocess import Preprocess

        xr = Preprocess(mean=model.cfg.mean, std=model.cfg.std)(real_images(1), (a.size, a.size))
        ref = create_runner("onnxruntime", paths["ort-fp32"][1]).activate() if "ort-fp32" not in runners \
            else runners["ort-fp32"]
        want = ref.infer({"images": xr}, check=False)
        parity = {}
        for v, r in runners.items():
            got = r.infer({"images": xr}, check=False)
            parity[v] = {k: round(mean_cosine(got[k].reshape(1, -1), want[k].reshape(1, -1)), 5) for k in want}
        for r in {**runners, "_ref": ref}.values():
            r.close()
        cm.log("profiling, one variant at a time ...")
        rows = []
        for v, (backend, p) in paths.items():
            prof = ort_profile(p, x, a.profile_runs, tmp / f"prof-{v}") if backend == "onnxruntime" \
                else ov_profile(p, x, a.profile_runs, OV_PRECISION[v])
            gemm_split(prof, backend)
            ms = cm.med(samples[v])
            rows.append({"variant": v, "backend": backend, **cm.summary(samples[v]),
                         "gflops_s": round(flops / (ms / 1e3) / 1e9, 2), "profile": prof,
                         "parity_cosine_vs_ort_fp32": parity[v]})
    base = {r["backend"]: r["median_ms"] for r in rows if r["variant"] in ("ort-fp32", "ov-f32")}
    for r in rows:
        r["speedup_vs_fp32_same_backend"] = cm.ratio(base.get(r["backend"]), r["median_ms"])
    peaks = None
    if a.peaks:
        from _peak import measure_peaks

        m, k, n = (int(v) for v in a.peak_shape.split(","))
        ov_precs = ["f32"] + (["bf16"] if set(BF16_VARIANTS) & set(a.variants) else [])
        peaks = measure_peaks(m, k, n, threads=None, ort_options={}, ov_precisions=ov_precs, log=cm.log)
        for r in rows:
            pk = peaks["peaks"].get(PEAK_KEY[r["variant"]])
            if pk:
                r["peak_gflops"] = pk["gflops"]
                r["pct_of_peak"] = round(100 * r["gflops_s"] / pk["gflops"], 1)
            tk = peaks["peaks"].get(TORCH_PEAK.get(r["variant"], ""))
            if tk:
                r["torch_peak_gflops"] = tk["gflops"]
                r["pct_of_torch_peak"] = round(100 * r["gflops_s"] / tk["gflops"], 1)
    result.update(flops=flops, gflop=round(flops / 1e9, 2), results=rows, peaks=peaks)
    cm.finish(result)

    md = [f"Machine: {result['machine']}. {a.model} C={a.cores} at {a.size} px ({flops / 1e9:.1f} GFLOP), "
          f"batch 1, random weights.\n\n**Latency (interleaved, median of {a.rounds})**\n\n",
          cm.md_table(["variant", "median ms", "GFLOP/s", "practical GEMM peak GFLOP/s", "% of peak",
                       "torch.matmul peak GFLOP/s (%)",
                       "vs FP32 same backend", "cosine vs ORT FP32 (patches)", "profiled op time ms",
                       "in matrix products", "GEMM kernels"],
                      [[r["variant"], r["median_ms"], r["gflops_s"], r.get("peak_gflops", "-"), r.get("pct_of_peak", "-"),
                        f"{r['torch_peak_gflops']} ({r['pct_of_torch_peak']}%)" if r.get("torch_peak_gflops") else "-",
                        r["speedup_vs_fp32_same_backend"], r["parity_cosine_vs_ort_fp32"].get("patches"),
                        r["profile"]["total_ms"],
                        f"{r['profile']['gemm_ms']} ms ({r['profile']['gemm_pct']}%)",
                        ", ".join(r["profile"].get("kernels", [])) or "-"] for r in rows])]
    if peaks:
        md.append(f"\nPeaks: {peaks['how']} in the variant's own backend and precision (`% of peak`), and "
                  "`torch.matmul` on the same shape in the same precision (oneDNN), measured in this run (large enough to be compute-bound: the "
                  "model's own [1040,384]x[384,1536] MLP GEMM alone is memory-bound and reads below the model).\n")
    for r in rows:
        p = r["profile"]
        md.append(f"\n**{r['variant']}: op types** (profiled total {p['total_ms']} ms/run)\n\n")
        md.append(cm.md_table(["op type", "ms/run", "%"], [[d["name"], d["ms"], d["pct"]] for d in p["by_op_type"][:10]]))
        md.append(f"\n**{r['variant']}: top nodes, all layers summed**\n\n")
        md.append(cm.md_table(["node", "ms/run", "%"], [[d["name"], d["ms"], d["pct"]] for d in p["by_node"][:10]]))
    md = "".join(md)
    plt = cm.plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        d = r["profile"]["by_op_type"][:8]
        ax.barh([e["name"][:28] for e in d][::-1], [e["pct"] for e in d][::-1])
        ax.set(xlabel="% of op time", title=f"{r['variant']}: {r['median_ms']:.0f} ms")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{a.model} C={a.cores} {a.size}px - {result['machine']}", fontsize=9)
    fig.tight_layout()
    cm.publish(a.out, NAME, result, md, fig)
    return result


if __name__ == "__main__":
    main()
