"""What does the toolchain cost where users feel it? The real CLI (``veca-deploy export``), one
fresh process per configuration, at 224 to 1536 px: wall time and peak RSS per stage, and the
ratio of the stage's time to the bare forward passes it needs (the toolchain's own overhead).

Configurations (default):
  * ``fp32+fp16``: veca_small --random-weights, 4 tiers (8,16,32,64) + elastic, ONNX + OpenVINO,
    FP32 and FP16, every parity gate, at each ``--sizes``;
  * ``int8``: one tier (C=16), ONNX Runtime + OpenVINO INT8 with ``--calib-counts`` real
    calibration images (``--calib``, default the built-in high-resolution ``photos`` source), at
    each ``--int8-sizes``.

Stages come from the CLI's own progress log (``VECA_PROGRESS_LOG``: one JSON line per step);
RSS is sampled from outside every 50 ms and attributed to the step running then, and the
process's peak RSS is the kernel's (``ru_maxrss`` of the child). Bare forward passes: the
number of passes each stage needs (PyTorch reference and parity on the golden images, the
held-out gate's images, calibration images) times the measured batch-1 latency of that tier's
FP32 ONNX graph in ONNX Runtime on this machine, measured after the export in this run.

    python benchmarks/toolchain_cost.py                       # full table (hours at 1536 px)
    python benchmarks/toolchain_cost.py --sizes 224,512 --int8-sizes 512
    python benchmarks/toolchain_cost.py --smoke --out /tmp/x  # built-in 28x28 model, seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "toolchain_cost"
SAMPLE_S = 0.05


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--cores", default="8,16,32,64")
    ap.add_argument("--sizes", default="224,512,1024,1536", help="FP32+FP16 export sizes ('' for none)")
    ap.add_argument("--int8-sizes", default="512,1024", help="INT8 (one tier) export sizes ('' for none)")
    ap.add_argument("--int8-cores", default="16")
    ap.add_argument("--calib", default="photos", help="calibration source for the INT8 runs")
    ap.add_argument("--calib-counts", default="300,512")
    ap.add_argument("--plan", default=None,
                    help="explicit order instead of the size lists: e.g. 'fp@1024,int8:300@1024,fp@224' "
                         "(fp = FP32+FP16 4-tier export, int8:N = one-tier INT8 with N calibration images, "
                         "int8*:N = INT8 of every --cores tier)")
    ap.add_argument("--timeout-s", type=float, default=3 * 3600, help="per configuration")
    ap.add_argument("--keep", default=None, help="keep the bundles under this folder")
    ap.add_argument("--smoke", action="store_true", help="built-in 28x28 model, 2 tiers, seconds")
    ap.add_argument("--merge", action="append", default=[], metavar="JSON",
                    help="keep the rows of an earlier toolchain_cost.json from this same machine (its CPU model "
                         "and ISA must match); a row this run measures again replaces the earlier one")
    return ap.parse_args(argv)


@dataclass
class Config:
    name: str
    size: int
    argv: list[str]
    calib_count: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


def configs(a) -> list[Config]:
    ints = lambda s: [int(v) for v in str(s).split(",") if v.strip()]  # noqa: E731
    if a.smoke:
        base = ["export", "--cores", "8,16", "--formats", "onnx,openvino", "--elastic", "--force", "-q"]
        return [Config("fp32+fp16", 28, base + ["--precision", "fp32,fp16"]),
                Config("int8", 28, ["export", "--cores", "8", "--formats", "onnx", "--precision", "int8", "--calib",
                                    "fashion-mnist", "--calib-size", "300", "--force", "-q"], calib_count=300)]
    if a.plan:
        out = []
        for item in a.plan.split(","):
            kind, size = item.strip().split("@")
            if kind == "fp":
                out += configs(argparse.Namespace(**{**vars(a), "plan": None, "sizes": size, "int8_sizes": ""}))
            else:
                name, n = kind.split(":")
                every = name == "int8*"  # every tier of --cores, not only --int8-cores
                out += configs(argparse.Namespace(**{**vars(a), "plan": None, "sizes": "", "int8_sizes": size,
                                                     "calib_counts": n, **({"int8_cores": a.cores} if every else {})}))
        return out
    out = []
    for s in ints(a.sizes):
        out.append(Config("fp32+fp16", s, ["export", a.model, "--random-weights", "--cores", a.cores,
                                           "--image-size", str(s), "--formats", "onnx,openvino", "--precision",
                                           "fp32,fp16", "--elastic", "--force", "-q"]))
    for s in ints(a.int8_sizes):
        for n in ints(a.calib_counts):
            tiers = len(ints(a.int8_cores))
            out.append(Config(f"int8 n={n}" + (f" x{tiers} tiers" if tiers > 1 else ""), s, ["export", a.model, "--random-weights", "--cores", a.int8_cores,
                                                 "--image-size", str(s), "--formats", "onnx,openvino", "--precision",
                                                 "int8", "--calib", a.calib, "--calib-size", str(n), "--force", "-q"],
                              calib_count=n))
    return out


def stage_of(step: str) -> str:
    """Group the CLI's progress steps: 'ONNX c=8 1024x1024' -> 'ONNX fp32 per-tier', ..."""
    m = step.lower()
    if m.startswith("pytorch reference"):
        return "PyTorch reference (golden)"
    if m.startswith("onnx elastic"):
        return "ONNX fp32 elastic (export+simplify+parity)"
    if m.startswith("onnx c="):
        return "ONNX fp32 per-tier (export+simplify+parity)"
    if m.startswith("openvino fp") and "int8" not in m:
        return f"OpenVINO {m.split()[1]} IR (convert+parity)"
    if "calibrat" in m or m.startswith("onnx int8") or m.startswith("openvino int8"):
        return "INT8 (calibration+quantize+parity)"
    if m.startswith("onnx fp16"):
        return "ONNX fp16 (convert+parity)"
    if m.startswith("accuracy gate") or m.startswith("eval "):
        return "held-out accuracy gate"
    return step.split(" c=")[0][:48]


def run_cli(argv: list[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """One fresh CLI process (``_common.run_cli``); RSS attributed to the progress step then running."""
    r = cm.run_cli(argv, timeout_s, env={"VECA_PROGRESS_LOG": str(log)}, sample_s=SAMPLE_S)
    samples = r.pop("samples")
    steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    stages: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "peak_rss_gb": 0.0})
    for cur, nxt in zip(steps, steps[1:]):
        st = stages[stage_of(cur["step"])]
        st["seconds"] += nxt["t"] - cur["t"]
        rss = [b for t, b in samples if cur["t"] <= t < nxt["t"]]
        st["peak_rss_gb"] = max(st["peak_rss_gb"], max(rss, default=0) / 2**30)
    return {"rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_gb": r["peak_rss_gb"],
            "stages": {k: {"seconds": round(v["seconds"], 1), "peak_rss_gb": round(v["peak_rss_gb"], 3)}
                       for k, v in sorted(stages.items(), key=lambda kv: -kv[1]["seconds"])},
            "error": r["error"], "stderr_tail": r["stderr"][-800:] if r["rc"] else ""}


def forward_ms(bundle: Path) -> dict[int, float]:
    """Batch-1 latency (ms) per tier of the bundle's FP32 ONNX graphs (per tier, else elastic) in
    ONNX Runtime here: the unit 'bare forward pass' of the overhead ratio."""
    import numpy as np

    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.runtimes import CORE_SELECT, IMAGES, core_select, create_runner
    from veca_deploy.runtimes.timing import measure

    b = Bundle.open(bundle)
    out: dict[int, float] = {}
    for c in sorted({t for a in b.artifacts for t in a.tiers}):
        cands = sorted(b.manifest.find(fmt="onnx", precision="fp32", cores=c), key=lambda a: a.elastic)
        if not cands:
            cands = sorted(b.manifest.find(fmt="onnx", cores=c), key=lambda a: a.elastic)
        if not cands:
            continue
        a = cands[0]
        feed = {IMAGES: np.zeros((1, 3, a.height, a.width), np.float32)}
        if a.elastic:
            feed[CORE_SELECT] = core_select(c)
        with create_runner("onnxruntime", b.path_of(a)) as r:
            out[c] = measure(r, feed, count=3, warmup=1).p50
    return out


def passes_needed(bundle: Path, calib_count: int | None) -> dict[str, dict[int, int]]:
    """Forward passes per stage and tier, from what the manifest says was checked."""
    from veca_deploy.bundle.reader import Bundle

    b = Bundle.open(bundle)
    m = b.manifest
    golden = {k: v.get("count", 0) for k, v in (m.golden or {}).get("inputs", {}).items()}
    n_golden = max(golden.values(), default=0)
    need: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    tiers = sorted({t for a in m.artifacts for t in a.tiers})
    for c in tiers:
        need["PyTorch reference (golden)"][c] += n_golden
    for a in m.artifacts:
        for c in a.tiers:
            gate_runs = 2 if (a.format == "onnx" and a.precision == "fp32") else 1  # before + after simplify
            need["parity on golden images"][c] += gate_runs * n_golden
            acc = a.accuracy or {}
            if acc.get("samples") and not acc.get("reference"):
                need["held-out accuracy gate"][c] += int(acc["samples"])
            if a.precision == "int8" and calib_count:
                need["calibration"][c] += calib_count
    return need


def merged(rows: list[dict[str, Any]], earlier: list[str], result: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` after the rows of ``earlier`` result files that this run did not measure again.
    Figures from another machine never share a table: a file whose machine differs is refused."""
    keep: list[dict[str, Any]] = []
    for path in earlier:
        old = json.loads(Path(path).read_text())
        if old.get("machine") != result["machine"]:
            raise SystemExit(f"--merge {path}: measured on {old.get('machine')!r}, not on this machine "
                             f"({result['machine']!r})")
        result.setdefault("merged_from", []).append({"file": str(path), "started": old.get("started")})
        keep += old.get("runs", [])
    fresh = {(r["config"], r["size"]) for r in rows}
    out = [r for r in keep if (r["config"], r["size"]) not in fresh] + rows
    order = {"fp32+fp16": 0}
    return sorted(out, key=lambda r: (order.get(r["config"], 1), r["config"], r["size"]))


def main(argv=None) -> dict:
    a = parse(argv)
    fp = cm.fingerprint()
    result = cm.header(fp, benchmark=NAME, model="veca_tiny (built-in)" if a.smoke else f"{a.model} --random-weights",
                       cli="veca-deploy export (one fresh process per configuration)")
    cm.log(f"machine: {result['machine']}")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="veca-toolchain-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for cfg in configs(a):
        out = work / f"{cfg.name.replace(' ', '_').replace('=', '')}_{cfg.size}"
        log = work / f"{out.name}.progress.jsonl"
        log.unlink(missing_ok=True)
        cm.log(f"{cfg.name} {cfg.size} px: veca-deploy {' '.join(cfg.argv)} --out {out}")
        r = run_cli(cfg.argv + ["--out", str(out)], log, a.timeout_s)
        r.update(config=cfg.name, size=cfg.size, argv=cfg.argv, calib_count=cfg.calib_count)
        if r["rc"] == 0:
            ms = forward_ms(out)
            need = passes_needed(out, cfg.calib_count)
            bare_s = sum(n * ms.get(c, 0.0) for per in need.values() for c, n in per.items()) / 1e3
            r.update(forward_ms={str(k): round(v, 2) for k, v in ms.items()},
                     passes={k: dict(sorted((str(c), n) for c, n in v.items())) for k, v in need.items()},
                     bare_forward_s=round(bare_s, 1), overhead_ratio=cm.ratio(r["wall_s"], bare_s),
                     bundle_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()))
        cm.log(f"  rc={r['rc']} wall {r['wall_s']} s, peak RSS {r['peak_rss_gb']} GB"
               + (f", bare forward passes {r.get('bare_forward_s')} s" if r["rc"] == 0 else f": {r['error']}"))
        rows.append(r)
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    result["runs"] = merged(rows, a.merge, result)
    rows = result["runs"]
    cm.finish(result)
    md = (f"Machine: {result['machine']}. `veca-deploy export` ({result['model']}), one fresh process per row; "
          "peak RSS is the whole process's; bare = forward passes the gates/calibration need x the FP32 ONNX "
          "batch-1 latency per tier here.\n\n"
          + cm.md_table(["config", "px", "rc", "wall (s)", "peak RSS (GB)", "bare forward (s)", "wall / bare",
                         "slowest stage (s, GB)"],
                        [[r["config"], r["size"], r["rc"], r["wall_s"], r["peak_rss_gb"], r.get("bare_forward_s"),
                          r.get("overhead_ratio"),
                          next((f"{k}: {v['seconds']} s, {v['peak_rss_gb']} GB" for k, v in r["stages"].items()), "-")]
                         for r in rows]))
    for r in rows:
        md += (f"\n\n**{r['config']} at {r['size']} px** (wall {r['wall_s']} s, peak RSS {r['peak_rss_gb']} GB)\n\n"
               + cm.md_table(["stage", "seconds", "peak RSS (GB)"],
                             [[k, v["seconds"], v["peak_rss_gb"]] for k, v in r["stages"].items()
                              if v["seconds"] >= 0.05]))
    fig = None
    try:
        plt = cm.plt()
        fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
        for name in dict.fromkeys(r["config"] for r in rows):
            rs = [r for r in rows if r["config"] == name and r["rc"] == 0]
            ax[0].plot([r["size"] for r in rs], [r["wall_s"] for r in rs], "o-", label=name)
            ax[1].plot([r["size"] for r in rs], [r["peak_rss_gb"] for r in rs], "o-", label=name)
        ax[0].set(xlabel="image size (px)", ylabel="wall (s)", title="export wall time", yscale="log")
        ax[1].set(xlabel="image size (px)", ylabel="GB", title="peak RSS")
        ax[1].legend(fontsize=7)
        fig.suptitle(result["machine"], fontsize=9)
    except Exception as e:  # noqa: BLE001  matplotlib is optional
        cm.log(f"no figure: {e}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    cm.publish(a.out, NAME, result, md, fig)
    return result


if __name__ == "__main__":
    main()
