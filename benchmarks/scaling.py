"""Where does core attention pay off? veca_small (C=8, 16, 64) vs the like-for-like full-attention
vit_small, batch 1, across input sizes, in ONNX Runtime and OpenVINO FP32 (random weights).

For each size the three graphs are exported (TorchScript, opset 17, onnxslim: what bundles ship),
all model x backend variants are timed interleaved, and the analytic FLOPs give the achieved
GFLOP/s, reported next to the machine's practical FP32 peak (numpy 2048^3 matmul, measured at
the start and the end of the same run). Repetitions are budgeted per size (``--budget-s``); when
a single call takes longer than ``--long-s`` its warm-up call is kept as a sample too.

    python benchmarks/scaling.py                      # full run, ~10 min on 2 cores
    python benchmarks/scaling.py --sizes 224,512,1024 # fewer sizes
    python benchmarks/scaling.py --smoke --out /tmp/x # CI: veca_tiny/vit_tiny, one small size
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "scaling"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--baseline", default="vit_small")
    ap.add_argument("--sizes", default="224,384,512,768,1024,1536")
    ap.add_argument("--cores", default="8,16,64")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: runtime default = all cores)")
    ap.add_argument("--simplify", default="onnxslim", choices=["onnxslim", "onnxsim", "none"])
    ap.add_argument("--budget-s", type=float, default=40.0, help="timed seconds per size (sets the rounds)")
    ap.add_argument("--max-rounds", type=int, default=7)
    ap.add_argument("--long-s", type=float, default=5.0, help="calls longer than this keep their warm-up as a sample")
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true", help="tiny models, one small size, 2 rounds (CI)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.baseline, a.cores, a.peak_n, a.max_rounds = "veca_tiny", "vit_tiny", "8,32", 256, 2
        if a.sizes == ap.get_default("sizes"):
            a.sizes = "56"
        a.budget_s, a.simplify = 0.0, "none"
    a.sizes = [int(s) for s in str(a.sizes).split(",") if s]
    a.cores = [int(c) for c in str(a.cores).split(",") if c]
    a.backends = [b for b in a.backends.split(",") if b]
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    import torch

    from veca_deploy.convert.onnx_graph import simplify_onnx

    from veca_deploy.export.onnx_export import export_onnx
    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import create_model
    from veca_deploy.runtimes import create_runner

    fp = cm.fingerprint(a.threads)
    result = cm.header(fp, benchmark=NAME, model=a.model, baseline=a.baseline, cores=a.cores, sizes=a.sizes,
                       backends=a.backends, batch=1, weights="random (torch.manual_seed(0))",
                       export={"exporter": "torchscript", "opset": 17, "simplify": a.simplify},
                       settings={"onnxruntime": {"threads": a.threads or "default", "graph_optimization": "all"},
                                 "openvino": {"inference_precision": "f32", "hint": "LATENCY",
                                              "threads": a.threads or "default"}})
    cm.log(f"machine: {result['machine']}")
    peak0 = cm.numpy_peak_gflops(a.peak_n)
    cm.log(f"numpy fp32 peak (start): {peak0['median_gflops']} GFLOP/s")
    torch.manual_seed(0)
    models = {f"{a.model}_c{c}": (create_model(a.model).eval(), c) for c in a.cores[:1]}
    base_model = models[f"{a.model}_c{a.cores[0]}"][0]
    for c in a.cores[1:]:
        models[f"{a.model}_c{c}"] = (base_model, c)  # one set of weights serves every core count
    torch.manual_seed(0)
    models[a.baseline] = (create_model(a.baseline).eval(), None)
    opts = {"onnxruntime": {"threads": a.threads}, "openvino": {"inference_precision": "f32", "threads": a.threads}}
    tmp = Path(tempfile.mkdtemp(prefix="veca-scaling-"))
    rows: list[dict] = []
    for size in a.sizes:
        cm.log(f"== {size} px")
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        runners, export_s = {}, {}
        for mname, (m, c) in models.items():
            p = tmp / f"{mname}_{size}.onnx"
            t0 = time.perf_counter()
            export_onnx(m, p, height=size, width=size, cores=c)
            if a.simplify != "none":
                simplify_onnx(p, a.simplify)
            export_s[mname] = round(time.perf_counter() - t0, 2)
            for b in a.backends:
                runners[f"{mname}|{b}"] = create_runner(b, p, **{k: v for k, v in opts[b].items() if v}).activate()
        feeds = {"images": x}
        calls = {k: (lambda r=r: r.infer(feeds, check=False)) for k, r in runners.items()}
        # warm-up round (timed, interleaved) -> estimate -> rounds from the budget
        first = cm.interleaved(calls, rounds=1, warmup=0)
        est = sum(v[0] for v in first.values()) / 1e3
        rounds = max(1, min(a.max_rounds, int(a.budget_s / max(est, 1e-6)))) if a.budget_s > 0 else a.max_rounds
        keep_first = est / max(len(calls), 1) > a.long_s
        cm.log(f"  first calls {est:.1f} s per round -> {rounds} round(s){' (+ warm-up kept)' if keep_first else ''}")
        samples = cm.interleaved(calls, rounds=rounds, warmup=0, log=cm.log)
        if keep_first:
            samples = {k: first[k] + v for k, v in samples.items()}
        desc = {b: runners[next(k for k in runners if k.endswith(b))].describe() for b in a.backends}
        for k, s in samples.items():
            mname, b = k.split("|")
            m, c = models[mname]
            fl = forward_flops(m.cfg, size, size, c)
            ms = cm.med(s)
            rows.append({"size": size, "tokens": (size // m.cfg.patch_size) ** 2, "model": mname, "backend": b,
                         "cores": c, "flops": fl, "gflops": round(fl / 1e9, 2), **cm.summary(s),
                         "achieved_gflops_s": round(fl / (ms / 1e3) / 1e9, 2), "rounds": rounds,
                         "first_call_kept": keep_first, "export_s": export_s[mname], "runner": desc[b]})
        for r in runners.values():
            r.close()
        del runners, calls
        gc.collect()
    peak1 = cm.numpy_peak_gflops(a.peak_n)
    cm.log(f"numpy fp32 peak (end): {peak1['median_gflops']} GFLOP/s")
    peak = max(peak0["median_gflops"], peak1["median_gflops"])
    for r in rows:
        r["pct_of_peak"] = round(100 * r["achieved_gflops_s"] / peak, 1)
    result.update(peak={"start": peak0, "end": peak1, "gflops": peak, "how": f"numpy float32 {a.peak_n}^3 matmul, "
                        "median of reps, the higher of start/end"}, rows=rows)
    # ratios per size/backend
    veca_names = [f"{a.model}_c{c}" for c in a.cores]
    ratios = []
    for size in a.sizes:
        for b in a.backends:
            get = {r["model"]: r for r in rows if r["size"] == size and r["backend"] == b}
            vit = get.get(a.baseline)
            entry = {"size": size, "backend": b, "vit_ms": vit and vit["median_ms"]}
            for v in veca_names:
                if v in get and vit:
                    entry[f"{v}_ms"] = get[v]["median_ms"]
                    entry[f"vit_over_{v}"] = cm.ratio(vit["median_ms"], get[v]["median_ms"])
                    entry[f"{v}_over_vit"] = cm.ratio(get[v]["median_ms"], vit["median_ms"])
            ratios.append(entry)
    result["ratios"] = ratios
    best512 = max((r for r in rows if r["size"] == 512), key=lambda r: r["achieved_gflops_s"], default=None)
    if best512:
        result["best_512"] = {k: best512[k] for k in ("model", "backend", "median_ms", "achieved_gflops_s", "pct_of_peak")}
    cm.finish(result)

    # ---------------------------------------------------------------- markdown
    hdr = ["size", "tokens", "backend", f"{a.baseline} ms"] + [f"C={c} ms" for c in a.cores] + \
          [f"ViT/C={c}" for c in a.cores] + ["GFLOP ViT"] + [f"GFLOP C={c}" for c in a.cores] + \
          ["GFLOP/s ViT"] + [f"GFLOP/s C={c}" for c in a.cores] + ["best % of peak"]
    tab = []
    for e in ratios:
        get = {r["model"]: r for r in rows if r["size"] == e["size"] and r["backend"] == e["backend"]}
        vit = get.get(a.baseline, {})
        vs = [get.get(v, {}) for v in veca_names]
        tab.append([e["size"], vit.get("tokens"), e["backend"], vit.get("median_ms")] +
                   [v.get("median_ms") for v in vs] + [e.get(f"vit_over_{v}") for v in veca_names] +
                   [vit.get("gflops")] + [v.get("gflops") for v in vs] + [vit.get("achieved_gflops_s")] +
                   [v.get("achieved_gflops_s") for v in vs] +
                   [max([r.get("pct_of_peak", 0) for r in [vit, *vs] if r] or [0])])
    md = (f"Machine: {result['machine']}. Batch 1, FP32 (OpenVINO `INFERENCE_PRECISION_HINT=f32`), random weights, "
          f"medians of interleaved rounds. Practical FP32 peak (numpy {a.peak_n}^3 matmul): "
          f"{peak0['median_gflops']} (start) / {peak1['median_gflops']} (end) GFLOP/s; % of peak uses {peak}.\n\n"
          + cm.md_table(hdr, tab))

    # ---------------------------------------------------------------- plot
    plt = cm.plt()
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    styles = {"onnxruntime": "-", "openvino": "--"}
    for b in a.backends:
        for mname in [a.baseline] + veca_names:
            pts = sorted((r["size"], r["median_ms"], r["achieved_gflops_s"]) for r in rows
                         if r["model"] == mname and r["backend"] == b)
            if pts:
                ax[0].plot([p[0] for p in pts], [p[1] for p in pts], styles.get(b, ":"), marker="o",
                           label=f"{mname} {b}")
                ax[2].plot([p[0] for p in pts], [p[2] for p in pts], styles.get(b, ":"), marker="o",
                           label=f"{mname} {b}")
        for v in veca_names:
            pts = sorted((e["size"], e[f"vit_over_{v}"]) for e in ratios if e["backend"] == b and e.get(f"vit_over_{v}"))
            if pts:
                ax[1].plot([p[0] for p in pts], [p[1] for p in pts], styles.get(b, ":"), marker="o", label=f"{v} {b}")
    ax[0].set(xscale="log", yscale="log", xlabel="input side (px)", ylabel="latency ms (median)",
              title="batch-1 latency")
    ax[1].axhline(1.0, color="grey", lw=0.8)
    ax[1].set(xscale="log", xlabel="input side (px)", ylabel="ViT latency / VECA latency", title="VECA speedup over ViT")
    ax[2].axhline(peak, color="k", lw=1, label=f"numpy FP32 peak {peak:.0f}")
    ax[2].set(xscale="log", xlabel="input side (px)", ylabel="achieved GFLOP/s", title="achieved vs practical peak")
    for x_ in ax:
        x_.grid(alpha=0.3)
        x_.legend(fontsize=6)
    fig.suptitle(f"{a.model} vs {a.baseline} - {result['machine']}", fontsize=9)
    cm.publish(a.out, NAME, result, md, fig)
    return result


if __name__ == "__main__":
    main()
