"""Where does core attention pay off? veca_small (C=8, 16, 64) vs the like-for-like full-attention
vit_small, batch 1, across input sizes, on every CPU execution path (random weights).

Paths: ONNX Runtime FP32, OpenVINO f32 and OpenVINO bf16 / f16 execution of the same FP32 graph
where the CPU runs them natively (``supported_variants("openvino")``); both models get the same
settings per path. Each model also runs in its fastest attention form per path ("never a slowed
baseline", issue 15), chosen by measurement in the same interleaved rounds:

* ``matmul``: the TorchScript opset-17 graph bundles ship (MatMul-Softmax-MatMul per head);
  OpenVINO fuses it into its Snippets MHA subgraph (checked: PERF_COUNT at the first size);
* ``mha``: the same graph with every attention rewritten to ``com.microsoft.MultiHeadAttention``
  (ONNX Runtime's MLAS flash attention; ``veca_deploy.convert.attention``);
* ``attention23``: torch.export at opset 23, the ONNX ``Attention`` op.

``auto`` (the default) tries all three on ONNX Runtime and ``matmul`` on OpenVINO, which lowers
all three to the same subgraph. For each size the graphs are exported, all model x form x path
variants are timed interleaved, and the analytic FLOPs give the achieved GFLOP/s (FP32 paths:
next to the practical FP32 peak, numpy 2048^3 matmul, at the start and the end of the run) and
the FLOP ratio ViT / VECA, which the wall-clock ratio is held against (issue 15: >= 0.9x of it at
1024 px on every path). Repetitions are budgeted per size (``--budget-s``); when a single call
takes longer than ``--long-s`` its warm-up call is kept as a sample too.

    python benchmarks/scaling.py                      # full sweep, 224-1536 px
    python benchmarks/scaling.py --sizes 512,1024 --cores 16 --budget-s 150 --max-rounds 5  # issue 15
    python benchmarks/scaling.py --smoke --out /tmp/x # CI: veca_tiny/vit_tiny, one small size
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "scaling"
#: attention forms a graph can carry, and how each is built
FORMS = {"matmul": "TorchScript opset 17, MatMul-Softmax-MatMul per head (what bundles ship)",
         "mha": "the opset-17 graph, each attention rewritten to com.microsoft.MultiHeadAttention (ORT flash attention)",
         "attention23": "torch.export opset 23, the ONNX Attention op"}
#: forms ``auto`` tries per backend: OpenVINO lowers all three to one Snippets MHA subgraph
AUTO_FORMS = {"onnxruntime": ("matmul", "mha", "attention23"), "openvino": ("matmul",)}
#: issue 15: at this size the wall-clock ratio ViT / VECA reaches this fraction of the FLOP ratio
TARGET_SIZE, TARGET_FRACTION = 1024, 0.9
FP32 = ("fp32", "f32")
#: outputs of a form vs the shipped graph on the same path (final LayerNorm: values of order 1)
PARITY_ATOL = 1e-3


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--baseline", default="vit_small")
    ap.add_argument("--sizes", default="224,384,512,768,1024,1536")
    ap.add_argument("--cores", default="8,16,64")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--ov-precisions", default="auto",
                    help="OpenVINO execution precisions, comma-separated; auto = f32 + what the CPU runs natively")
    forms = f"auto or a comma-separated subset of {', '.join(FORMS)}"
    ap.add_argument("--vit-attention", default="auto", help=f"attention forms tried for the baseline: {forms}")
    ap.add_argument("--veca-attention", default="auto", help=f"attention forms tried for VECA: {forms}")
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
    for opt in ("vit_attention", "veca_attention"):
        v = getattr(a, opt)
        bad = [f for f in v.split(",") if f and f not in FORMS] if v != "auto" else []
        if bad:
            ap.error(f"--{opt.replace('_', '-')}: unknown form(s) {', '.join(bad)}; {forms}")
    return a


def forms_for(choice: str, backend: str) -> tuple[str, ...]:
    """The attention forms a model is tried in on ``backend`` (``--vit-attention`` / ``--veca-attention``)."""
    return AUTO_FORMS.get(backend, ("matmul",)) if choice == "auto" else tuple(f for f in choice.split(",") if f)


def paths_for(backends: list[str], ov_precisions: str, threads: int | None) -> list[dict[str, Any]]:
    """One entry per execution path: ``{"id", "backend", "precision", "options"}`` (runner options)."""
    from veca_deploy.runtimes import supported_variants

    out = []
    for b in backends:
        if b == "openvino":
            precs = ["f32", *supported_variants("openvino")] if ov_precisions == "auto" else \
                [p for p in ov_precisions.split(",") if p]
            out += [{"id": f"openvino/{p}", "backend": b, "precision": p,
                     "options": {"inference_precision": p, "threads": threads}} for p in precs]
        else:
            out.append({"id": f"{b}/fp32", "backend": b, "precision": "fp32", "options": {"threads": threads}})
    for p in out:
        p["options"] = {k: v for k, v in p["options"].items() if v}
    return out


def export_form(model, form: str, path: Path, size: int, cores: int | None, simplify: str,
                matmul_graph: Path | None = None) -> dict[str, Any]:
    """Write ``model`` at ``size`` with its attention in ``form``; returns the export seconds and
    the attention ops the graph holds (``mha`` reuses the ``matmul`` graph when given)."""
    from veca_deploy.convert.attention import fuse_mha_file
    from veca_deploy.convert.onnx_graph import op_histogram, simplify_onnx
    from veca_deploy.export.onnx_export import export_onnx

    t0 = time.perf_counter()
    if form == "mha" and matmul_graph is not None:
        shutil.copyfile(matmul_graph, path)
    else:
        dynamo = {"exporter": "dynamo", "opset": 23} if form == "attention23" else {}
        export_onnx(model, path, height=size, width=size, cores=cores, **dynamo)
        if simplify != "none":
            simplify_onnx(path, simplify)
    if form == "mha":
        fuse_mha_file(path, model.cfg.num_heads)
    hist = op_histogram(path)
    return {"export_s": round(time.perf_counter() - t0, 2),
            "attention_ops": {k: hist[k] for k in ("Softmax", "MultiHeadAttention", "Attention") if k in hist}}


def ov_attention_kernels(path: Path, precision: str, x: np.ndarray) -> dict[str, Any]:
    """What OpenVINO really ran for attention (PERF_COUNT of one call, the runner's bf16 graph tail
    marking included): fused Snippets ``Subgraph`` nodes, Softmax nodes left standing, kernels."""
    import openvino as ov

    from veca_deploy.runtimes.openvino_rt import low_precision_tail

    core = ov.Core()
    model = core.read_model(str(path))
    if precision == "bf16":
        low_precision_tail(model)
    req = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision,
                                            "PERF_COUNT": True}).create_infer_request()
    req.infer({"images": x})
    ran = [p for p in req.get_profiling_info() if p.real_time.total_seconds() > 0]
    sub = [p for p in ran if p.node_type == "Subgraph" and "att" in p.node_name.lower()]  # attn/, Attention
    return {"attention_subgraphs": len(sub), "softmax_nodes": sum(p.node_type == "Softmax" for p in ran),
            "subgraph_kernels": sorted({p.exec_type for p in sub})}


def build(models: dict, paths: list[dict], size: int, tmp: Path, simplify: str,
          failures: list[dict]) -> tuple[dict, dict]:
    """Export every model in every form some path tries, and load each on those paths; returns
    (runners keyed (model, form, path id), exports keyed (model, form)). What fails is recorded in
    ``failures`` and left out: a form that cannot be built or loaded is a result too."""
    from veca_deploy.runtimes import create_runner

    runners: dict[tuple[str, str, str], Any] = {}
    exports: dict[tuple[str, str], dict] = {}
    for mname, (m, c, choice) in models.items():
        wanted = {f for p in paths for f in forms_for(choice, p["backend"])}
        for form in [f for f in FORMS if f in wanted]:  # matmul first: mha reuses its graph
            g = tmp / f"{mname}_{size}_{form}.onnx"
            base = exports.get((mname, "matmul"), {}).get("path")
            try:
                exports[mname, form] = {**export_form(m, form, g, size, c, simplify, base), "path": g}
            except Exception as e:  # noqa: BLE001 - recorded, the other forms go on
                failures.append({"size": size, "model": mname, "form": form, "step": "export", "error": str(e)[:300]})
                continue
            for p in (p for p in paths if form in forms_for(choice, p["backend"])):
                try:
                    runners[mname, form, p["id"]] = create_runner(p["backend"], g, **p["options"]).activate()
                except Exception as e:  # noqa: BLE001 - recorded, the other paths go on
                    failures.append({"size": size, "model": mname, "form": form, "path": p["id"], "step": "load",
                                     "error": str(e)[:300]})
    return runners, exports


def check_forms(runners: dict, exports: dict, x: np.ndarray, failures: list[dict], checks: dict) -> None:
    """Each form computes what the shipped graph computes: max |difference| of its outputs from
    the same model's ``matmul`` graph on the same path (a form beyond ``PARITY_ATOL`` is dropped
    as a failure: a wrong graph is no baseline); and what OpenVINO ran for attention."""
    outs = {k: r.infer({"images": x}) for k, r in runners.items()}
    for (mname, form, pid), out in outs.items():
        ref = outs.get((mname, "matmul", pid))
        if ref is not None and form != "matmul":
            err = max(float(np.abs(out[n] - ref[n]).max()) for n in ref)
            checks["parity"][f"{mname}|{form}|{pid}"] = err
            if err > PARITY_ATOL:
                failures.append({"size": x.shape[-1], "model": mname, "form": form, "path": pid, "step": "parity",
                                 "error": f"max |diff| {err:.3g} from the matmul graph > {PARITY_ATOL}"})
                runners.pop((mname, form, pid)).close()
        if pid.startswith("openvino/") and (mname, form, pid) in runners:
            checks["openvino_attention_kernels"][f"{mname}|{form}|{pid}"] = ov_attention_kernels(
                exports[mname, form]["path"], pid.split("/", 1)[1], x)


def time_all(runners: dict, x: np.ndarray, a) -> tuple[dict[str, list[float]], int, bool]:
    """All runners interleaved: a timed warm-up round sets the rounds from ``--budget-s``; the warm-up
    samples are kept when a call takes longer than ``--long-s``. Returns (samples, rounds, kept)."""
    feeds = {"images": x}
    calls = {"|".join(k): (lambda r=r: r.infer(feeds, check=False)) for k, r in runners.items()}
    first = cm.interleaved(calls, rounds=1, warmup=0)
    est = sum(v[0] for v in first.values()) / 1e3
    rounds = max(1, min(a.max_rounds, int(a.budget_s / max(est, 1e-6)))) if a.budget_s > 0 else a.max_rounds
    keep_first = est / max(len(calls), 1) > a.long_s
    cm.log(f"  first calls {est:.1f} s per round -> {rounds} round(s){' (+ warm-up kept)' if keep_first else ''}")
    samples = cm.interleaved(calls, rounds=rounds, warmup=0, log=cm.log)
    if keep_first:
        samples = {k: first[k] + v for k, v in samples.items()}
    return samples, rounds, keep_first


def best(rows: list[dict], size: int, path: str, model: str) -> dict | None:
    """The fastest attention form of ``model`` on ``path`` at ``size`` (its row), if any ran."""
    cands = [r for r in rows if r["size"] == size and r["path"] == path and r["model"] == model]
    return min(cands, key=lambda r: r["median_ms"], default=None)


def ratios(rows: list[dict], sizes: list[int], paths: list[dict], baseline: str, veca: list[str]) -> list[dict]:
    """Per size and path: each model's fastest form, ViT / VECA wall-clock and FLOP ratios."""
    out = []
    for size in sizes:
        for p in paths:
            vit = best(rows, size, p["id"], baseline)
            e: dict[str, Any] = {"size": size, "path": p["id"], "backend": p["backend"], "precision": p["precision"],
                                 "vit_ms": vit and vit["median_ms"], "vit_attention": vit and vit["attention"],
                                 "vit_forms_ms": forms_ms(rows, size, p["id"], baseline)}
            for v in veca:
                r = best(rows, size, p["id"], v)
                if not (r and vit):
                    continue
                flop = vit["flops"] / r["flops"]
                e.update({f"{v}_ms": r["median_ms"], f"{v}_attention": r["attention"],
                          f"{v}_forms_ms": forms_ms(rows, size, p["id"], v),
                          f"vit_over_{v}": cm.ratio(vit["median_ms"], r["median_ms"]),
                          f"{v}_over_vit": cm.ratio(r["median_ms"], vit["median_ms"]), f"flop_ratio_{v}": round(flop, 3),
                          f"wall_over_flop_{v}": round(vit["median_ms"] / r["median_ms"] / flop, 3)})
            out.append(e)
    return out


def forms_ms(rows: list[dict], size: int, path: str, model: str) -> dict[str, float]:
    return {r["attention"]: r["median_ms"] for r in rows if r["size"] == size and r["path"] == path
            and r["model"] == model}


def main(argv=None) -> dict:
    a = parse(argv)
    import torch

    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import create_model, latency_weights

    fp = cm.fingerprint(a.threads)
    paths = paths_for(a.backends, a.ov_precisions, a.threads)
    result = cm.header(fp, benchmark=NAME, model=a.model, baseline=a.baseline, cores=a.cores, sizes=a.sizes,
                       backends=a.backends, paths=paths, batch=1,
                       weights="random (torch.manual_seed(0), latency_weights: no constant parameter)",
                       attention_forms=FORMS, vit_attention=a.vit_attention, veca_attention=a.veca_attention,
                       export={"exporter": "torchscript (attention23: dynamo)", "opset": "17 (attention23: 23)",
                               "simplify": a.simplify},
                       settings={"onnxruntime": {"threads": a.threads or "default", "graph_optimization": "all"},
                                 "openvino": {"inference_precision": "per path", "hint": "LATENCY",
                                              "threads": a.threads or "default"}})
    cm.log(f"machine: {result['machine']}; paths: {', '.join(p['id'] for p in paths)}")
    peak0 = cm.numpy_peak_gflops(a.peak_n)
    cm.log(f"numpy fp32 peak (start): {peak0['median_gflops']} GFLOP/s")
    torch.manual_seed(0)
    veca_model = latency_weights(create_model(a.model)).eval()  # one set of weights serves every core count
    models = {f"{a.model}_c{c}": (veca_model, c, a.veca_attention) for c in a.cores}
    torch.manual_seed(0)
    models[a.baseline] = (latency_weights(create_model(a.baseline)).eval(), None, a.vit_attention)
    tmp = Path(tempfile.mkdtemp(prefix="veca-scaling-"))
    rows: list[dict] = []
    failures: list[dict] = []
    checks: dict[str, dict] = {"parity": {}, "openvino_attention_kernels": {}}
    for size in a.sizes:
        cm.log(f"== {size} px")
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        runners, exports = build(models, paths, size, tmp, a.simplify, failures)
        if size == min(a.sizes):  # the forms differ in graph structure only: once, at the cheapest size
            check_forms(runners, exports, x, failures, checks)
        for f in failures:
            if f["size"] == size:
                cm.log(f"  {f['model']} {f['form']} {f.get('path', '')}: {f['step']} failed: {f['error'][:120]}")
        samples, rounds, keep_first = time_all(runners, x, a)
        path_of = {p["id"]: p for p in paths}
        for (mname, form, pid), r in runners.items():
            m, c, _ = models[mname]
            s = samples[f"{mname}|{form}|{pid}"]
            fl = forward_flops(m.cfg, size, size, c)
            ms = cm.med(s)
            rows.append({"size": size, "tokens": (size // m.cfg.patch_size) ** 2, "model": mname, "path": pid,
                         "backend": path_of[pid]["backend"], "precision": path_of[pid]["precision"], "attention": form,
                         "attention_ops": exports[mname, form]["attention_ops"], "cores": c, "flops": fl,
                         "gflops": round(fl / 1e9, 2), **cm.summary(s), "achieved_gflops_s": round(fl / (ms / 1e3) / 1e9, 2),
                         "rounds": rounds, "first_call_kept": keep_first, "export_s": exports[mname, form]["export_s"],
                         "runner": r.describe()})
        for r in runners.values():
            r.close()
        for e in exports.values():
            e["path"].unlink(missing_ok=True)
        del runners
        gc.collect()
    shutil.rmtree(tmp, ignore_errors=True)
    peak1 = cm.numpy_peak_gflops(a.peak_n)
    cm.log(f"numpy fp32 peak (end): {peak1['median_gflops']} GFLOP/s")
    peak = max(peak0["median_gflops"], peak1["median_gflops"])
    for r in rows:  # the FP32 peak says nothing about a bf16 / f16 path
        r["pct_of_peak"] = round(100 * r["achieved_gflops_s"] / peak, 1) if r["precision"] in FP32 else None
    veca_names = [f"{a.model}_c{c}" for c in a.cores]
    result.update(peak={"start": peak0, "end": peak1, "gflops": peak, "how": f"numpy float32 {a.peak_n}^3 matmul, "
                        "median of reps, the higher of start/end; FP32 paths only"}, rows=rows, failures=failures,
                  form_parity=checks["parity"], openvino_attention_kernels=checks["openvino_attention_kernels"],
                  ratios=ratios(rows, a.sizes, paths, a.baseline, veca_names),
                  target={"size": TARGET_SIZE, "wall_over_flop": TARGET_FRACTION})
    best512 = max((r for r in rows if r["size"] == 512), key=lambda r: r["achieved_gflops_s"], default=None)
    if best512:
        result["best_512"] = {k: best512[k] for k in ("model", "path", "attention", "median_ms", "achieved_gflops_s",
                                                      "pct_of_peak")}
    cm.finish(result)
    cm.publish(a.out, NAME, result, markdown(result, veca_names), plot(result, veca_names))
    return result


# ------------------------------------------------------------------------------ outputs
def markdown(result: dict, veca: list[str]) -> str:
    """Three tables: latency / GFLOP/s per path (fastest forms), VECA vs ViT against the FLOP ratio,
    every attention form measured; then what OpenVINO ran for attention."""
    rows, base, cores, peak = result["rows"], result["baseline"], result["cores"], result["peak"]
    hdr = ["size", "tokens", "path", f"{base} ms"] + [f"C={c} ms" for c in cores] + \
          [f"ViT/C={c}" for c in cores] + ["GFLOP ViT"] + [f"GFLOP C={c}" for c in cores] + \
          ["GFLOP/s ViT"] + [f"GFLOP/s C={c}" for c in cores] + ["best % of FP32 peak"]
    tab, vs = [], []
    for e in result["ratios"]:
        pick = [best(rows, e["size"], e["path"], m) or {} for m in [base, *veca]]
        vit, vc = pick[0], pick[1:]
        pct = [r["pct_of_peak"] for r in pick if r.get("pct_of_peak") is not None]
        tab.append([e["size"], vit.get("tokens"), e["path"], vit.get("median_ms")] + [v.get("median_ms") for v in vc]
                   + [e.get(f"vit_over_{v}") for v in veca] + [vit.get("gflops")] + [v.get("gflops") for v in vc]
                   + [vit.get("achieved_gflops_s")] + [v.get("achieved_gflops_s") for v in vc] + [max(pct, default=None)])
        for v, c in zip(veca, cores):
            if e.get(f"vit_over_{v}"):
                goal = e[f"wall_over_flop_{v}"] >= TARGET_FRACTION if e["size"] == TARGET_SIZE else None
                vs.append([e["size"], e["path"], c, e[f"{v}_ms"], e[f"{v}_attention"], e["vit_ms"], e["vit_attention"],
                           e[f"vit_over_{v}"], e[f"flop_ratio_{v}"], e[f"wall_over_flop_{v}"],
                           "-" if goal is None else ("**met**" if goal else "**not met**")])
    forms = [[r["size"], r["path"], r["model"], r["attention"], r["median_ms"],
              " ".join(f"{k} {v}" for k, v in r["attention_ops"].items()),
              "fastest" if r is best(rows, r["size"], r["path"], r["model"]) else ""] for r in rows]
    kern = "; ".join(f"{k.replace('|', ' ')}: {v['attention_subgraphs']} attention Subgraph node(s) "
                     f"[{', '.join(v['subgraph_kernels'])}], {v['softmax_nodes']} Softmax left"
                     for k, v in result["openvino_attention_kernels"].items())
    parity = ", ".join(f"{k.replace('|', ' ')} {v:.1e}" for k, v in result["form_parity"].items())
    fails = "".join(f"- {f['size']} px {f['model']} {f['form']} {f.get('path', '')}: {f['step']} failed: {f['error']}\n"
                    for f in result["failures"])
    return (f"Machine: {result['machine']}. Batch 1, random weights, medians of interleaved rounds; each model in its "
            f"fastest attention form per path (forms tried: ViT {result['vit_attention']}, VECA "
            f"{result['veca_attention']}). Practical FP32 peak (numpy {peak['start']['n']}^3 "
            f"matmul): {peak['start']['median_gflops']} (start) / {peak['end']['median_gflops']} (end) GFLOP/s; % of "
            f"peak uses {peak['gflops']} (FP32 paths only).\n\n" + cm.md_table(hdr, tab)
            + f"\n**VECA vs ViT, each on its fastest form** (target: wall ratio >= {TARGET_FRACTION}x the analytic "
              f"FLOP ratio at {TARGET_SIZE} px on every path)\n\n"
            + cm.md_table(["size", "path", "C", "VECA ms", "VECA attention", "ViT ms", "ViT attention", "wall ratio",
                           "FLOP ratio", "wall / FLOP", "target"], vs)
            + "\n**Every attention form measured**\n\n"
            + cm.md_table(["size", "path", "model", "attention", "ms", "attention ops in the graph", ""], forms)
            + (f"\nOutputs vs the matmul graph on the same path (max |diff|, {min(result['sizes'])} px): {parity}.\n"
               if parity else "")
            + (f"\nOpenVINO attention kernels (PERF_COUNT, {min(result['sizes'])} px): {kern}.\n" if kern else "")
            + (f"\nFailed forms:\n{fails}" if fails else ""))


def plot(result: dict, veca: list[str]):
    """Latency, ViT / VECA speed-up (with the FLOP ratio it is held against) and GFLOP/s per path,
    each model in its fastest form."""
    rows, ratios_, base = result["rows"], result["ratios"], result["baseline"]
    plt = cm.plt()
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    styles = ["-", "--", "-.", ":"]
    for i, p in enumerate(q["id"] for q in result["paths"]):
        st = styles[i % len(styles)]
        for mname in [base, *veca]:
            pts = sorted((b["size"], b["median_ms"], b["achieved_gflops_s"]) for b in
                         (best(rows, s, p, mname) for s in result["sizes"]) if b)
            if pts:
                ax[0].plot([q[0] for q in pts], [q[1] for q in pts], st, marker="o", label=f"{mname} {p}")
                ax[2].plot([q[0] for q in pts], [q[2] for q in pts], st, marker="o", label=f"{mname} {p}")
        for v in veca:
            pts = sorted((e["size"], e[f"vit_over_{v}"]) for e in ratios_ if e["path"] == p and e.get(f"vit_over_{v}"))
            if pts:
                ax[1].plot([q[0] for q in pts], [q[1] for q in pts], st, marker="o", label=f"{v} {p}")
    for v in veca:
        pts = sorted({(e["size"], e[f"flop_ratio_{v}"]) for e in ratios_ if e.get(f"flop_ratio_{v}")})
        if pts:
            ax[1].plot([q[0] for q in pts], [q[1] for q in pts], color="k", lw=0.8, ls=":", label=f"FLOP ratio {v}")
    ax[0].set(xscale="log", yscale="log", xlabel="input side (px)", ylabel="latency ms (median)",
              title="batch-1 latency")
    ax[1].axhline(1.0, color="grey", lw=0.8)
    ax[1].set(xscale="log", xlabel="input side (px)", ylabel="ViT latency / VECA latency", title="VECA speedup over ViT")
    ax[2].axhline(result["peak"]["gflops"], color="k", lw=1, label=f"numpy FP32 peak {result['peak']['gflops']:.0f}")
    ax[2].set(xscale="log", xlabel="input side (px)", ylabel="achieved GFLOP/s", title="achieved vs practical peak")
    for x_ in ax:
        x_.grid(alpha=0.3)
        x_.legend(fontsize=6)
    fig.suptitle(f"{result['model']} vs {base} - {result['machine']}", fontsize=9)
    return fig


if __name__ == "__main__":
    main()
