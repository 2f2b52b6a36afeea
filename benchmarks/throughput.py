"""Throughput on one device (issue 19): images/s of batch-1 synchronous ``Runtime.predict`` calls vs
``Runtime.submit`` with N requests in flight (``Runtime.open(..., streams=N)``: OpenVINO
N infer requests + ``NUM_STREAMS=N``, ONNX Runtime N parallel runs on one session with
cores/N intra-op threads each), ONNX Runtime and OpenVINO side by side, veca_small (random
weights) at 256 px, FP32.

Every variant (backend x sync / N in flight) runs in its own child process, so its peak RSS is its
own; variants are run in interleaved rounds (A B C, C B A, ...) so machine drift hits them alike,
and the reported images/s is the median over the rounds. Input: a normalized float32 NCHW image
(what ``predict`` feeds the model after preprocessing), so the numbers are the runtime's, not the
resize's. Latency: per call (sync) or submit to completion (async), ms.

    python benchmarks/throughput.py                       # veca_small 256 px, ~5 min on 2 cores
    python benchmarks/throughput.py --concurrency 1,2,4,8 --duration 5
    python benchmarks/throughput.py --smoke --out /tmp/x  # CI: veca_tiny 28 px, a few calls
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "throughput"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="reuse this bundle (default: export --model at --size)")
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cores", type=int, default=16, help="the core tier to serve")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--concurrency", default=None, help="requests in flight (default: 1, 2, 4, ... up to the cores)")
    ap.add_argument("--duration", type=float, default=4.0, help="timed seconds per variant and round")
    ap.add_argument("--count", type=int, default=None, help="timed calls per variant and round (instead of --duration)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls (per request in flight) first")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="thread budget (default: the runtime's = all cores)")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.size, a.cores, a.count, a.warmup, a.rounds = "veca_tiny", 28, 8, 12, 2, 1
        a.concurrency = a.concurrency or "2"
    a.backends = [b for b in a.backends.split(",") if b]
    return a


# ---------------------------------------------------------------------------- one variant (child)
def own_peak_rss_mb() -> float | None:
    """This process's own RSS high-water mark: ``VmHWM`` (getrusage's ru_maxrss survives exec, so a
    child started from a big parent would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    from veca_deploy.runtimes.timing import peak_rss_mb

    return peak_rss_mb()


def run_variant(spec: dict) -> dict:
    """Open the bundle for one backend and mode, time it, report images/s, latency and peak RSS."""
    import veca_deploy
    from veca_deploy.runtimes.timing import rss_mb

    rss0 = rss_mb()
    streams = int(spec["streams"] or 1)
    rt = veca_deploy.Runtime.open(spec["bundle"], None, backend=spec["backend"], tiers=[spec["cores"]],
                                  precisions=["fp32"], threads=spec.get("threads"), streams=streams)
    try:
        tier = rt.tier
        x = np.random.default_rng(0).standard_normal((1, 3, tier.height, tier.width)).astype(np.float32)
        count, duration, warmup = spec.get("count"), spec.get("duration"), int(spec.get("warmup", 5))
        lat: list[float] = []
        if spec["mode"] == "sync":
            for _ in range(warmup):
                rt.predict(x)
            start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                rt.predict(x)
                lat.append((time.perf_counter() - t0) * 1e3)
                if (count and len(lat) >= count) or (not count and time.perf_counter() - start >= duration):
                    break
            wall = time.perf_counter() - start
        else:
            for f in [rt.submit(x) for _ in range(warmup * streams)]:
                f.result()
            slots, mutex, errors = threading.Semaphore(streams), threading.Lock(), []

            def done(t0, f):
                ms = (time.perf_counter() - t0) * 1e3
                try:
                    f.result()
                    with mutex:
                        lat.append(ms)
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                finally:
                    slots.release()

            submitted = 0
            start = time.perf_counter()
            while not errors:
                if (count and submitted >= count) or (not count and time.perf_counter() - start >= duration):
                    break
                slots.acquire()
                t0 = time.perf_counter()
                rt.submit(x).add_done_callback(lambda f, t0=t0: done(t0, f))
                submitted += 1
            for _ in range(streams):
                slots.acquire()
            wall = time.perf_counter() - start
            if errors:
                raise errors[0]
        runner = rt._runners[rt._rungs[0].cand.runner_key]
        arr = np.asarray(lat)
        return {"backend": spec["backend"], "mode": spec["mode"], "streams": streams, "tier": tier.to_dict(),
                "calls": len(lat), "wall_s": round(wall, 4), "images_per_s": round(len(lat) / wall, 2),
                "latency_ms": {q: round(float(np.percentile(arr, int(q))), 4) for q in ("50", "95", "99")},
                "rss_start_mb": rss0, "rss_end_mb": rss_mb(), "peak_rss_mb": own_peak_rss_mb(),
                "runner_settings": runner.describe()}
    finally:
        rt.close()


def child(spec: dict) -> dict:
    """``run_variant`` in a fresh interpreter (its own peak RSS); the result is its last stdout line."""
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"variant {spec['backend']} {spec['mode']} x{spec['streams']} failed: "
                           + (p.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    a = parse(argv)
    if a.child:
        print(json.dumps(run_variant(json.loads(a.child))), flush=True)
        return {}
    from veca_deploy.runtimes import backend_available
    from veca_deploy.selector.workload import default_levels, parse_levels

    fp = cm.fingerprint(a.threads)
    levels = parse_levels(a.concurrency) or default_levels()
    result = cm.header(fp, benchmark=NAME, model=f"{a.model} (random weights)", size=a.size, cores=a.cores,
                       concurrency=levels, rounds=a.rounds, duration_s=None if a.count else a.duration,
                       count=a.count, threads=a.threads)
    cm.log(f"machine: {result['machine']}")
    tmp = None if a.bundle else Path(tempfile.mkdtemp(prefix="veca-throughput-"))
    bdir = Path(a.bundle) if a.bundle else tmp / "bundle"
    backends = [b for b in a.backends if backend_available(b)]
    if not a.bundle:
        import veca_deploy

        cm.log(f"exporting {a.model} (random weights) C={a.cores} at {a.size}x{a.size} ...")
        t0 = time.perf_counter()
        veca_deploy.export(a.model, random_weights=True, out=bdir, cores=[a.cores], image_sizes=[(a.size, a.size)],
                           formats=["onnx" if b == "onnxruntime" else "openvino" for b in backends],
                           precisions=["fp32"], force=True)
        result["export_s"] = round(time.perf_counter() - t0, 1)
    variants = [(b, "sync", 1) for b in backends] + [(b, "async", k) for b in backends for k in levels]
    runs: dict[tuple, list[dict]] = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            b, mode, k = v
            res = child({"bundle": str(bdir), "backend": b, "mode": mode, "streams": k, "cores": a.cores,
                         "count": a.count, "duration": a.duration, "warmup": a.warmup, "threads": a.threads})
            runs[v].append(res)
            cm.log(f"  round {r + 1}/{a.rounds} {b} {mode} x{k}: {res['images_per_s']:.1f} img/s, "
                   f"p50 {res['latency_ms']['50']:.2f} ms, peak RSS {res['peak_rss_mb']:.0f} MiB")
    rows = []
    for b in backends:
        def summary(v):
            rs = runs[v]
            ips = [x["images_per_s"] for x in rs]
            return {"mode": v[1], "streams": v[2], "images_per_s": round(cm.med(ips), 2),
                    "images_per_s_rounds": ips,
                    "latency_ms": {q: round(cm.med([x["latency_ms"][q] for x in rs]), 4) for q in ("50", "95", "99")},
                    "peak_rss_mb": round(max(x["peak_rss_mb"] or 0 for x in rs), 1),
                    "runner_settings": rs[-1]["runner_settings"], "tier": rs[-1]["tier"]}

        sync = summary((b, "sync", 1))
        conc = [summary((b, "async", k)) for k in levels]
        best = max(conc, key=lambda s: s["images_per_s"])
        rows.append({"backend": b, "sync": sync, "concurrency": conc, "best_streams": best["streams"],
                     "best_images_per_s": best["images_per_s"],
                     "speedup_vs_sync": cm.ratio(best["images_per_s"], sync["images_per_s"])})
    result.update(bundle=str(bdir), rows=rows, raw={f"{b} {m} x{k}": v for (b, m, k), v in runs.items()})
    cm.finish(result)
    how = f"{a.count} calls" if a.count else f"{a.duration:g} s"
    md = (f"Machine: {result['machine']}. {a.model} (random weights) C={a.cores} at {a.size}x{a.size}, FP32, batch 1; "
          f"each variant in its own process, {how} per round, median images/s of {a.rounds} interleaved round(s).\n\n"
          + cm.md_table(["backend", "sync predict img/s"] + [f"{k} in flight img/s" for k in levels]
                        + ["best", "best / sync", "sync p50/p99 ms", "best p50/p99 ms", "sync peak RSS MiB",
                           "best peak RSS MiB"],
                        [[r["backend"], r["sync"]["images_per_s"]] + [c["images_per_s"] for c in r["concurrency"]]
                         + [f"{r['best_streams']} in flight", r["speedup_vs_sync"],
                            f"{r['sync']['latency_ms']['50']:.2f} / {r['sync']['latency_ms']['99']:.2f}",
                            "{:.2f} / {:.2f}".format(*[next(c for c in r["concurrency"]
                                                            if c["streams"] == r["best_streams"])["latency_ms"][q]
                                                       for q in ("50", "99")]),
                            r["sync"]["peak_rss_mb"],
                            next(c for c in r["concurrency"] if c["streams"] == r["best_streams"])["peak_rss_mb"]]
                         for r in rows])
          + "\n`sync`: `Runtime.predict` in a loop (today's path, LATENCY settings); `N in flight`: "
            "`Runtime.open(..., streams=N)` + `submit`, N requests kept in flight (OpenVINO: N infer requests with "
            "NUM_STREAMS=N and the THROUGHPUT hint; ONNX Runtime N parallel runs on one session, cores/N intra-op "
            "threads each). Latency: per call (sync) or submit to completion. Peak RSS: the variant's own process.\n")
    fig = None
    try:
        plt = cm.plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["sync"] + [f"x{k}" for k in levels]
        for i, r in enumerate(rows):
            vals = [r["sync"]["images_per_s"]] + [c["images_per_s"] for c in r["concurrency"]]
            ax.bar([j + 0.4 * i for j in range(len(labels))], vals, 0.4, label=r["backend"])
        ax.set_xticks([j + 0.2 for j in range(len(labels))], labels)
        ax.set(ylabel="images/s (median)", title=f"{a.model} {a.size}px C={a.cores} - {result['machine']}")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=8)
    except ImportError:
        fig = None
    cm.publish(a.out, NAME, result, md, fig)
    if tmp is not None:  # the exported bundle was ours (pass --bundle to keep one)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
