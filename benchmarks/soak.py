"""Soak test (issue 8): many ``Runtime.predict`` calls in one process, resident memory sampled
throughout; reports RSS growth after warm-up (the first 10% of calls). Target: < 5%.

    .venv/bin/python benchmarks/soak.py                    # 20,000 calls on the reference bundle
    .venv/bin/python benchmarks/soak.py --smoke            # 200 calls (CI)
    .venv/bin/python benchmarks/soak.py --bundle DIR --calls 50000 --adaptive --budget-ms 5

Without ``--bundle`` the built-in reference model is exported (FP32) into a temporary folder.
Inputs cycle through real Fashion-MNIST test images (raw uint8, resized by the runtime), a few
odd-sized RGB images, small uint8 batches and an already-normalized float32 batch, so the
preprocessing and batching paths soak too. Writes ``soak.json``, ``soak.md`` and ``soak.png``
(``soak-smoke.*`` with --smoke) to ``benchmarks/results/`` (or ``--out``). Exit 0 when the growth
is under the target (always, apart from errors, for --smoke: 200 calls are too few to judge).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_PCT = 5.0
WARMUP_FRACTION = 0.10


def rss_mb() -> float:
    """Resident set size of this process in MiB (/proc/self/statm, psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def inputs(n_real: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    try:
        from veca_deploy.data import fashion_mnist

        raw, _ = fashion_mnist("test")
        real = [np.asarray(raw[i]) for i in rng.choice(len(raw), n_real, replace=False)]
    except Exception:  # dataset not installed: fixed random "images"
        real = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(n_real)]
    extra = [rng.integers(0, 256, (37, 45, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
             np.stack(real[:4]), rng.integers(0, 256, (2, 30, 30), dtype=np.uint8)]
    return real + extra


def run(bundle: Path, calls: int, backend: str, budget_ms: float | None, adaptive: bool, samples_wanted: int,
        log=C.log) -> dict:
    import veca_deploy

    xs = inputs()
    kw = dict(backend=backend)
    if budget_ms is not None:
        kw.update(budget_ms=budget_ms, adaptive=adaptive)
    every = max(1, calls // samples_wanted)
    samples = []
    lat = np.empty(calls)
    errors: list[str] = []
    tiers: dict[str, int] = {}
    rss0 = rss_mb()
    t_start = time.perf_counter()
    with veca_deploy.Runtime.open(bundle, **kw) as rt:
        # a float batch needs the tier's exact size: build it once the tier is known
        h, w = rt.tier.height, rt.tier.width
        xs.append(rt.bundle.preprocess([xs[0], xs[1]], (h, w)))
        samples.append({"call": 0, "t_s": 0.0, "rss_mb": round(rss_mb(), 3)})
        log(f"soak: {calls} calls on {rt.tier} (RSS {samples[0]['rss_mb']:.1f} MiB after open)")
        for i in range(calls):
            x = xs[i % len(xs)]
            t0 = time.perf_counter()
            try:
                p = rt.predict(x)
                tiers[str(p.tier)] = tiers.get(str(p.tier), 0) + 1
            except Exception as e:  # noqa: BLE001 - counted and reported, the soak goes on
                errors.append(f"call {i}: {type(e).__name__}: {e}")
            lat[i] = (time.perf_counter() - t0) * 1e3
            if (i + 1) % every == 0 or i + 1 == calls:
                samples.append({"call": i + 1, "t_s": round(time.perf_counter() - t_start, 3),
                                "rss_mb": round(rss_mb(), 3)})
            if (i + 1) % max(1, calls // 10) == 0:
                log(f"  {i + 1}/{calls}: RSS {samples[-1]['rss_mb']:.1f} MiB, p50 {np.median(lat[:i + 1]):.3f} ms")
        switches = rt.switches
    warm = int(round(calls * WARMUP_FRACTION))
    after = [s for s in samples if s["call"] >= warm]
    base = after[0]["rss_mb"]
    last = samples[-1]["rss_mb"]
    peak = max(s["rss_mb"] for s in after)
    # least-squares slope over the post-warm-up samples: MiB per 10k calls (0 = flat)
    xs_c = np.array([s["call"] for s in after], float)
    ys = np.array([s["rss_mb"] for s in after], float)
    slope = float(np.polyfit(xs_c, ys, 1)[0] * 1e4) if len(after) >= 3 and np.ptp(xs_c) > 0 else 0.0
    growth = (last - base) / base * 100
    return {"bundle": str(bundle), "torch_loaded": "torch" in sys.modules, "backend": backend, "budget_ms": budget_ms, "adaptive": adaptive,
            "calls": calls, "warmup_calls": warm, "errors": len(errors), "first_errors": errors[:5],
            "tiers_served": tiers, "switches": len(switches),
            "rss_before_open_mb": round(rss0, 3), "rss_after_warmup_mb": base, "rss_end_mb": last,
            "rss_peak_after_warmup_mb": peak,
            "growth_after_warmup_pct": round(growth, 3),
            "peak_growth_after_warmup_pct": round((peak - base) / base * 100, 3),
            "slope_mb_per_10k_calls": round(slope, 4), "target_pct": TARGET_PCT,
            "passed": bool(growth < TARGET_PCT and not errors),
            "latency_ms": {"p50": round(float(np.median(lat)), 4), "p99": round(float(np.percentile(lat, 99)), 4),
                           "mean": round(float(lat.mean()), 4)},
            "wall_s": round(time.perf_counter() - t_start, 2), "samples": samples}


def markdown(r: dict) -> str:
    rows = [["calls", r["calls"]], ["warm-up calls (excluded)", r["warmup_calls"]],
            ["errors", r["errors"]], ["tiers served", ", ".join(f"{k}: {v}" for k, v in r["tiers_served"].items())],
            ["RSS after warm-up (MiB)", r["rss_after_warmup_mb"]], ["RSS at end (MiB)", r["rss_end_mb"]],
            ["peak RSS after warm-up (MiB)", r["rss_peak_after_warmup_mb"]],
            ["growth after warm-up (MiB)", round(r["rss_end_mb"] - r["rss_after_warmup_mb"], 3)],
            ["**growth after warm-up**", f"**{r['growth_after_warmup_pct']:.2f}%** (target < {r['target_pct']:g}%)"],
            ["peak growth after warm-up", f"{r['peak_growth_after_warmup_pct']:.2f}%"],
            ["trend (least squares)", f"{r['slope_mb_per_10k_calls']:+.3f} MiB per 10k calls"],
            ["predict latency p50 / p99 (ms, incl. preprocessing)", f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']}"],
            ["wall time (s)", r["wall_s"]], ["verdict", "PASS" if r["passed"] else "FAIL"]]
    return (f"# Soak: {r['calls']} x Runtime.predict\n\nMachine: {r['machine']}. Backend {r['backend']}"
            f"{', adaptive' if r['adaptive'] else ''}; RSS from /proc/self/statm, {len(r['samples'])} samples.\n\n"
            + C.md_table(["", "value"], rows))


def figure(r: dict):
    plt = C.plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s["call"] for s in r["samples"]], [s["rss_mb"] for s in r["samples"]], lw=1.2)
    ax.axvline(r["warmup_calls"], color="grey", ls="--", lw=1, label="end of warm-up")
    base = r["rss_after_warmup_mb"]
    ax.axhline(base * (1 + r["target_pct"] / 100), color="red", ls=":", lw=1, label=f"+{r['target_pct']:g}% target")
    ax.set_xlabel("predict calls")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"soak: growth after warm-up {r['growth_after_warmup_pct']:.2f}% ({r['machine']})", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="bundle folder (default: export the reference model, FP32, to a temp folder)")
    ap.add_argument("--calls", type=int, default=None, help="predict calls (default 20000, 200 with --smoke)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--budget-ms", type=float, default=None, help="select a tier for this budget (profiles first)")
    ap.add_argument("--adaptive", action="store_true", help="adaptive mode (needs --budget-ms)")
    ap.add_argument("--samples", type=int, default=400, help="RSS samples over the run")
    ap.add_argument("--smoke", action="store_true", help="200 calls; results named soak-smoke.*")
    ap.add_argument("--out", default=str(C.RESULTS), help="results folder")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    calls = a.calls or (200 if a.smoke else 20000)
    if calls < 10:
        ap.error("--calls must be >= 10")
    fp = C.fingerprint()
    result = C.header(fp, benchmark="soak")
    with tempfile.TemporaryDirectory(prefix="veca-soak-") as tmp:
        bundle = Path(a.bundle) if a.bundle else None
        if bundle is None:
            # in a child process: torch (export) must not inflate this process's memory baseline
            bundle = Path(tmp) / "reference"
            C.log("exporting the reference bundle (FP32) in a child process ...")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import sys, veca_deploy; veca_deploy.export(None, out=sys.argv[1], "
                            "precisions=['fp32'])", str(bundle)], check=True)
            result["export_s"] = round(time.perf_counter() - t0, 1)
        result.update(run(bundle, calls, a.backend, a.budget_ms, a.adaptive, min(a.samples, calls)))
        if not a.bundle:
            result["bundle"] = "reference model, exported to a temporary folder (FP32)"
    C.finish(result)
    name = "soak-smoke" if a.smoke else "soak"
    fig = None if a.no_plot else figure(result)
    paths = C.write_results(a.out, name, result, markdown(result), fig)
    C.log(f"growth after warm-up: {result['growth_after_warmup_pct']:.2f}% (target < {TARGET_PCT:g}%), "
          f"errors {result['errors']}; wrote {', '.join(str(p) for p in paths.values())}")
    if result["errors"]:
        return 1
    return 0 if (a.smoke or result["passed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
