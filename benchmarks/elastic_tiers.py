"""Latency and accuracy per tier x precision x backend for the built-in reference model, and the
Pareto front (fastest artifact for each accuracy level).

Accuracy is what ``veca-deploy eval`` records in the bundle manifest (this script runs the same
``veca_deploy.calibration.evaluate.evaluate`` on Fashion-MNIST TEST, writing the manifest);
latency is batch 1, every (artifact, tier) timed interleaved. The elastic ONNX graph is timed at
each of its tiers (``core_select`` feed) next to the per-tier graphs.

    python benchmarks/elastic_tiers.py                 # exports the reference bundle first
    python benchmarks/elastic_tiers.py --bundle DIR    # reuse one (e.g. toolchain_cost's)
    python benchmarks/elastic_tiers.py --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "elastic_tiers"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--eval-limit", type=int, default=None, help="Fashion-MNIST TEST images (default: all 10000)")
    ap.add_argument("--skip-eval", action="store_true", help="use the accuracy already in the manifest")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.eval_limit, a.rounds, a.iters = 200, 2, 3
    return a


def pareto(points: list[dict]) -> set[int]:
    """Indices of points no other point beats (<= latency and >= accuracy, one strictly)."""
    front = set()
    for i, p in enumerate(points):
        if p["accuracy"] is None:
            continue
        dominated = any(q["accuracy"] is not None and q["ms"] <= p["ms"] and q["accuracy"] >= p["accuracy"]
                        and (q["ms"] < p["ms"] or q["accuracy"] > p["accuracy"]) for j, q in enumerate(points) if j != i)
        if not dominated:
            front.add(i)
    return front


def main(argv=None) -> dict:
    a = parse(argv)
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.runtimes import create_runner
    from veca_deploy.runtimes.base import CORE_SELECT, core_select

    fp = cm.fingerprint(a.threads)
    result = cm.header(fp, benchmark=NAME, model="veca_tiny (built-in reference, trained)")
    cm.log(f"machine: {result['machine']}")
    tmp = Path(tempfile.mkdtemp(prefix="veca-elastic-"))
    bdir, export_s = cm.reference_bundle(a.bundle, tmp / "reference", a.smoke)
    eval_info = {"skipped": True}
    if not a.skip_eval:
        from veca_deploy.calibration.evaluate import evaluate

        t0 = time.perf_counter()
        rep = evaluate(bdir, data="fashion-mnist", limit=a.eval_limit, write=True, gate_results=False)
        eval_info = {"dataset": rep["dataset"], "samples": rep["samples"], "seconds": round(time.perf_counter() - t0, 1),
                     "gate_failures": rep["gate"]["failures"], "how": "veca_deploy.calibration.evaluate.evaluate "
                     "(what `veca-deploy eval` runs), written into the manifest"}
        cm.log(f"eval: {eval_info['samples']} images in {eval_info['seconds']} s")
    bundle = Bundle.open(bdir)
    ort_opts = {"threads": a.threads} if a.threads else {}
    ov_opts = {"inference_precision": "f32", **({"threads": a.threads} if a.threads else {})}
    calls, meta, runners = {}, {}, []
    for art in bundle.artifacts:
        backend = "onnxruntime" if art.format == "onnx" else "openvino"
        r = create_runner(backend, bundle.path_of(art), **(ort_opts if backend == "onnxruntime" else ov_opts)).activate()
        runners.append(r)
        x = np.random.default_rng(0).standard_normal((1, 3, art.height, art.width)).astype(np.float32)
        for c in art.tiers:
            feed = {"images": x, **({CORE_SELECT: core_select(c)} if art.elastic else {})}
            key = f"{art.id}@c{c}"
            calls[key] = (lambda r=r, feed=feed: r.infer(feed, check=False))
            meta[key] = {"artifact": art.id, "format": art.format, "backend": backend, "precision": art.precision,
                         "elastic": art.elastic, "cores": c, "size": f"{art.height}x{art.width}",
                         "bytes": art.bytes + sum(f.bytes for f in art.files),
                         "accuracy": bundle.accuracy_of(art, c), "runner": r.describe()}
    cm.log(f"timing {len(calls)} (artifact, tier) variants, {a.rounds} interleaved rounds x {a.iters} calls")
    samples = cm.interleaved(calls, rounds=a.rounds, warmup=1, iters=a.iters)
    points = []
    for k, s in samples.items():
        points.append({**meta[k], **cm.summary(s), "ms": round(cm.med(s), 4)})
    front = pareto(points)
    for i, p in enumerate(points):
        p["pareto"] = i in front
    for r in runners:
        r.close()
    points.sort(key=lambda p: (p["backend"], p["precision"], p["elastic"], p["cores"]))
    result.update(bundle=str(bdir), export_s=export_s and round(export_s, 1), evaluation=eval_info, points=points,
                  pareto_front=sorted(({"artifact": p["artifact"], "cores": p["cores"], "ms": p["ms"],
                                        "accuracy": p["accuracy"]} for p in points if p["pareto"]),
                                      key=lambda d: d["ms"]))
    cm.finish(result)

    hdr = ["backend", "precision", "graph", "C", "median ms", "top-1", "Pareto"]
    tab = [[p["backend"], p["precision"], "elastic" if p["elastic"] else "per-tier", p["cores"], p["ms"],
            None if p["accuracy"] is None else f"{100 * p['accuracy']:.2f}%", "yes" if p["pareto"] else ""]
           for p in points]
    md = (f"Machine: {result['machine']}. Reference model (veca_tiny, 28 px), batch 1, medians of {a.rounds} "
          f"interleaved rounds x {a.iters} calls. Top-1 on Fashion-MNIST TEST ({eval_info.get('samples', '?')} images), "
          "from the manifest after `veca-deploy eval`. OpenVINO runs f32.\n\n" + cm.md_table(hdr, tab))
    plt = cm.plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green"}
    markers = {("onnxruntime", False): "o", ("onnxruntime", True): "s", ("openvino", False): "^"}
    for p in points:
        if p["accuracy"] is None:
            continue
        ax.scatter(p["ms"], 100 * p["accuracy"], c=colors.get(p["precision"], "k"),
                   marker=markers.get((p["backend"], p["elastic"]), "x"), s=40)
        ax.annotate(str(p["cores"]), (p["ms"], 100 * p["accuracy"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    fr = sorted((p["ms"], 100 * p["accuracy"]) for p in points if p["pareto"])
    if fr:
        ax.step([f[0] for f in fr], [f[1] for f in fr], where="post", color="k", lw=1, label="Pareto front")
    for prec, col in colors.items():
        ax.scatter([], [], c=col, label=prec)
    for (b, el), m in markers.items():
        ax.scatter([], [], c="grey", marker=m, label=f"{b}{' elastic' if el else ''}")
    ax.set(xlabel="latency ms (batch 1, median)", ylabel="top-1 %", title=f"tiers x precisions - {result['machine']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    cm.publish(a.out, NAME, result, md, fig)
    return result


if __name__ == "__main__":
    main()
