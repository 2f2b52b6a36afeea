"""Do activation ranges calibrated at a lower resolution keep the INT8 gate at a higher one?
(issue 14). A calibration forward pass at 512 px costs about a quarter of one at 1024 px, so if
the ranges transfer, calibration gets ~4x cheaper.

What runs (ONNX Runtime INT8, the product's own ``quantize_onnx_int8``, MinMax, priority-order
calibration session): one bundle exported by the CLI with the FP32 ONNX graph of one tier at
``--low`` and ``--high`` px (same weights); each graph is calibrated on the same ``--count``
real photo crops at its own size; the ``--high`` graph is then quantized twice, with its own
ranges and with the ``--low`` graph's ranges (the graphs' tensor names match; the share that
matched is reported), and both are compared with the FP32 ``--high`` graph on held-out photo
crops (the quantize gate's data: mean and min feature cosine, gate floor 0.99).

It also reports how the ranges differ per kind of tensor, in particular the inputs of the
attention-probabilities x V MatMuls (the Softmax outputs): the cores' softmax spans N + C keys,
so its largest probability shrinks as N grows with the resolution.

    python benchmarks/calib_resolution.py                  # veca_small C=16, 512 -> 1024 px
    python benchmarks/calib_resolution.py --low 256 --high 512 --count 32
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "calib_resolution"
CLI = ([str(Path(sys.executable).parent / "veca-deploy")] if (Path(sys.executable).parent / "veca-deploy").is_file()
       else [sys.executable, "-m", "veca_deploy.cli"])


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--low", type=int, default=512)
    ap.add_argument("--high", type=int, default=1024)
    ap.add_argument("--count", type=int, default=64, help="calibration photo crops per size")
    ap.add_argument("--eval", type=int, default=8, help="held-out photo crops for the cosine")
    ap.add_argument("--scheme", default="u8s8", help="ONNX INT8 scheme (u8s8: x86 CPUs, s8s8: TensorRT)")
    return ap.parse_args(argv)


def producers(path: Path) -> tuple[dict[str, str], set[str]]:
    """Tensor name -> op type producing it, and the Softmax outputs that feed a MatMul (P in P x V)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    prod = {o: n.op_type for n in g.node for o in n.output}
    pv = {i for n in g.node if n.op_type == "MatMul" for i in n.input if prod.get(i) == "Softmax"}
    return prod, pv


def cosines(fp32: Path, int8: Path, images: list[np.ndarray]) -> list[float]:
    from veca_deploy.runtimes import create_runner

    out = []
    with create_runner("onnxruntime", fp32) as a, create_runner("onnxruntime", int8) as b:
        for x in images:
            ya = np.concatenate([np.ravel(v) for v in a.infer({"images": x}).values()]).astype(np.float64)
            yb = np.concatenate([np.ravel(v) for v in b.infer({"images": x}).values()]).astype(np.float64)
            out.append(float(ya @ yb / (np.linalg.norm(ya) * np.linalg.norm(yb) + 1e-30)))
    return out


def main(argv=None) -> dict:
    a = parse(argv)
    from onnxruntime.quantization.calibrate import load_tensors_data

    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.calibration import cache
    from veca_deploy.calibration.data import load_calibration
    from veca_deploy.calibration.evaluate import eval_batches, load_eval_data
    from veca_deploy.calibration.onnx_quant import quantize_onnx_int8
    from veca_deploy.calibration.recipe import ort_recipe

    fp = cm.fingerprint()
    result = cm.header(fp, benchmark=NAME, model=f"{a.model} --random-weights", cores=a.cores, low=a.low,
                       high=a.high, calibration=f"{a.count} photo crops (seed 0) per size", method="minmax", scheme=a.scheme)
    cm.log(f"machine: {result['machine']}")
    work = Path(tempfile.mkdtemp(prefix="veca-calres-"))
    try:
        bdir = work / "bundle"
        t0 = time.perf_counter()
        subprocess.run(CLI + ["export", a.model, "--random-weights", "--cores", str(a.cores), "--image-size",
                              str(a.low), "--image-size", str(a.high), "--formats", "onnx", "--precision", "fp32", "--out", str(bdir),
                              "--force", "-q"], check=True)
        result["export_s"] = round(time.perf_counter() - t0, 1)
        b = Bundle.open(bdir)
        pre = b.preprocess
        graphs = {s: b.path_of(next(x for x in b.manifest.find(fmt="onnx", precision="fp32", cores=a.cores)
                                    if x.height == s and not x.elastic)) for s in (a.low, a.high)}
        recipe = ort_recipe(scheme=a.scheme)
        cdir = str(work / "cache")
        runs: dict[str, Any] = {}
        for s in (a.low, a.high):
            cal = load_calibration("photos", pre, (s, s), count=a.count, force=a.count < 300)
            t = time.perf_counter()
            info = quantize_onnx_int8(graphs[s], work / f"int8-{s}.onnx", cal, recipe, cache_dir=cdir)
            runs[s] = {"seconds": round(time.perf_counter() - t, 1), "key": info["cache_key"],
                       "order": info.get("calibration_order")}
            cm.log(f"calibrated + quantized at {s} px on {a.count} crops: {runs[s]['seconds']} s")
        root = cache.cache_root(cdir) / "calibration" / "onnxruntime"
        own = root / f"{runs[a.high]['key']}.json"
        low_ranges = load_tensors_data(root / f"{runs[a.low]['key']}.json")
        high_ranges = load_tensors_data(own)
        lo = {k: tuple(float(np.asarray(v).item()) for v in low_ranges[k].range_value) for k in low_ranges.data}
        hi = {k: tuple(float(np.asarray(v).item()) for v in high_ranges[k].range_value) for k in high_ranges.data}
        shared = sorted(set(lo) & set(hi))
        result["tensors"] = {"high": len(hi), "low": len(lo), "matched": len(shared)}
        # the high graph quantized with the low graph's ranges: the product's path, its cache
        # entry holding the low ranges (ranges of unmatched tensors, if any, stay the high ones)
        saved = own.read_text()
        merged = json.loads(saved)
        low_json = json.loads((root / f"{runs[a.low]['key']}.json").read_text())
        merged_data, low_data = merged["data"] if "data" in merged else merged, low_json["data"] if "data" in low_json else low_json
        for k in shared:
            if k in low_data:
                merged_data[k] = low_data[k]
        own.write_text(json.dumps(merged))
        cal = load_calibration("photos", pre, (a.high, a.high), count=a.count, force=a.count < 300)
        t = time.perf_counter()
        quantize_onnx_int8(graphs[a.high], work / f"int8-{a.high}-from-{a.low}.onnx", cal, recipe, cache_dir=cdir)
        result["quantize_from_cached_ranges_s"] = round(time.perf_counter() - t, 1)
        own.write_text(saved)
        ev = load_eval_data("photos", pre, a.eval)
        images = [x[i:i + 1] for _, x in eval_batches(ev, pre, (a.high, a.high), batch=4) for i in range(len(x))]
        cos = {"own": cosines(graphs[a.high], work / f"int8-{a.high}.onnx", images),
               "low": cosines(graphs[a.high], work / f"int8-{a.high}-from-{a.low}.onnx", images)}
        result["cosine"] = {k: {"mean": round(float(np.mean(v)), 6), "min": round(float(np.min(v)), 6), "n": len(v)}
                            for k, v in cos.items()}
        prod, pv = producers(graphs[a.high])
        kinds: dict[str, list[float]] = defaultdict(list)
        for k in shared:
            wl, wh = lo[k][1] - lo[k][0], hi[k][1] - hi[k][0]
            if wh > 0:
                kind = "Softmax -> MatMul (P of P x V)" if k in pv else prod.get(k, "graph input")
                kinds[kind].append(wl / wh)
        result["range_width_low_over_high"] = {
            k: {"n": len(v), "median": round(float(np.median(v)), 3), "min": round(float(np.min(v)), 3),
                "max": round(float(np.max(v)), 3)} for k, v in sorted(kinds.items(), key=lambda kv: -len(kv[1]))}
        result["calibration_s"] = {str(s): r["seconds"] for s, r in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cm.finish(result)
    c = result["cosine"]
    md = (f"Machine: {result['machine']}. {result['model']} C={a.cores}; ONNX Runtime INT8 {a.scheme.upper()} MinMax, "
          f"{result['calibration']}; cosine vs the FP32 {a.high} px graph on {c['own']['n']} held-out photo crops "
          f"(gate floor 0.99). {result['tensors']['matched']} of {result['tensors']['high']} calibrated tensors "
          f"matched by name.\n\n"
          + cm.md_table(["ranges from", "calibrate + quantize (s)", "mean cosine", "min cosine"],
                        [[f"{a.high} px (own)", result["calibration_s"][str(a.high)], c["own"]["mean"], c["own"]["min"]],
                         [f"{a.low} px", result["calibration_s"][str(a.low)], c["low"]["mean"], c["low"]["min"]]])
          + "\n\nRange width at the low size / at the high size, per producing op:\n\n"
          + cm.md_table(["tensor kind", "n", "median", "min", "max"],
                        [[k, v["n"], v["median"], v["min"], v["max"]] for k, v in result["range_width_low_over_high"].items()]))
    cm.publish(a.out, NAME, result, md)
    return result


if __name__ == "__main__":
    main()
