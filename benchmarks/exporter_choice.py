"""Which exporter and opset make the fastest correct graph? (issue: export defaults)

Exports one model/tier four ways — TorchScript opset 17 (LayerNormalization), torch.export
opset 18, torch.export opset 23 (fused Attention op) and TorchScript 17 without simplification —
and times each in ONNX Runtime and OpenVINO (f32), interleaving the variants round by round so
machine drift hits all of them. Writes JSON + a markdown table.

    python benchmarks/exporter_choice.py --model veca_small --size 512 --cores 16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from veca_deploy.convert.onnx_graph import op_histogram, simplify_onnx
from veca_deploy.export.onnx_export import export_onnx
from veca_deploy.model.registry import create_model, latency_weights
from veca_deploy.runtimes import create_runner

VARIANTS = {
    "torchscript-17": dict(exporter="torchscript", opset=17, simplify="onnxslim"),
    "torchscript-17-raw": dict(exporter="torchscript", opset=17, simplify="none"),
    "dynamo-18": dict(exporter="dynamo", opset=18, simplify="onnxslim"),
    "dynamo-23": dict(exporter="dynamo", opset=23, simplify="onnxslim"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = latency_weights(create_model(a.model)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, a.size, a.size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), cores=a.cores)[1].numpy()
    tmp = Path(tempfile.mkdtemp())
    info, runners = {}, {}
    for name, v in VARIANTS.items():
        p = tmp / f"{name}.onnx"
        t0 = time.perf_counter()
        try:
            export_onnx(model, p, height=a.size, width=a.size, cores=a.cores, exporter=v["exporter"], opset=v["opset"])
            simplify_onnx(p, v["simplify"])
        except Exception as e:  # record and go on: a failing variant is a result too
            info[name] = {"error": str(e).splitlines()[0][:200]}
            continue
        info[name] = {"export_s": round(time.perf_counter() - t0, 2), "nodes": sum(op_histogram(p).values()),
                      "attention_op": "Attention" in op_histogram(p)}
        for backend, opts in (("onnxruntime", {}), ("openvino", {"inference_precision": "f32"})):
            try:
                r = create_runner(backend, p, **opts).activate()
                out = r.infer({"images": x})["patches"]
                info[name][f"{backend}_max_abs_err"] = float(np.abs(out - ref).max())
                runners[(name, backend)] = r
            except Exception as e:
                info[name][f"{backend}_error"] = str(e).splitlines()[0][:200]
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    for _ in range(a.rounds):  # interleaved: A B C D, A B C D, ...
        for key, r in runners.items():
            r.infer({"images": x})
            t0 = time.perf_counter()
            for _ in range(a.iters):
                r.infer({"images": x}, check=False)
            times[key].append((time.perf_counter() - t0) / a.iters * 1e3)
    for (name, backend), ts in times.items():
        info[name][f"{backend}_ms"] = round(statistics.median(ts), 2)
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "model": a.model, "size": a.size, "cores": a.cores, "variants": info}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "exporter_choice.json").write_text(json.dumps(result, indent=1))
    lines = ["| variant | nodes | ORT ms | OpenVINO f32 ms | ORT max err | export s |", "|---|---|---|---|---|---|"]
    for name, d in info.items():
        lines.append(f"| {name} | {d.get('nodes', '-')} | {d.get('onnxruntime_ms', d.get('onnxruntime_error', d.get('error', '-')))} | "
                     f"{d.get('openvino_ms', d.get('openvino_error', '-'))} | {d.get('onnxruntime_max_abs_err', '-'):.2g} | "
                     f"{d.get('export_s', '-')} |" if "nodes" in d else f"| {name} | failed: {d.get('error')} | | | | |")
    (out / "exporter_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
