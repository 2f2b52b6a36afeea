"""Throughput on one device (issue 19): images/s of batch-1 synchronous ``Runtime.predict`` calls vs
``Runtime.submit`` with N requests in flight (``Runtime.open(..., streams=N)``: OpenVINO
N infer requests + ``NUM_STREAMS=N``, ONNX Runtime N parallel runs on one session with
cores/N intra-op threads each), ONNX Runtime and OpenVINO side by side, veca_small (random
weights) at 256 px, FP32.

Where the gain comes from is measured beside it: ``sync x1 thread`` (``predict`` with one intra-op
thread) times the cores is what independent requests could give if nothing but intra-op scaling
were lost (the *ceiling* of running requests side by side), and ``--frames`` repeats everything
on raw camera frames (uint8 photo crops, ``--frame-size``), where ``submit`` also overlaps one
request's preprocessing (in the caller's thread) with another's inference.

Every variant (backend x input x sync / N in flight) runs in its own child process, so its peak RSS is its
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
    ap.add_argument("--frames", action="store_true", help="also feed raw uint8 camera frames (preprocessing in the loop)")
    ap.add_argument("--frame-size", default="480x640", help="camera frame HxW for --frames")
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
        if spec.get("input") == "frame":
            from veca_deploy.compare.comparator import real_images

            fh, fw = spec["frame_size"]
            photo = next((im for im in real_images(4) if im.ndim == 3 and min(im.shape[:2]) >= min(fh, fw)),
                         real_images(1)[0])
            x = np.ascontiguousarray(np.resize(photo, (fh, fw, 3)) if photo.shape[0] < fh or photo.shape[1] < fw
                                     else photo[:fh, :fw])
        else:
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
                "input": spec.get("input", "tensor"), "threads": spec.get("threads"),
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


# ---------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    """The concurrency curve per backend and input, and the decomposition of the gain (also what
    ``benchmarks/report.py`` puts in the README)."""
    rows, levels = result["rows"], result["concurrency"]
    how = f"{result['count']} calls" if result.get("count") else f"{result['duration_s']:g} s"

    def at(r, k):
        return next(c for c in r["concurrency"] if c["streams"] == k)

    curve = cm.md_table(
        ["backend", "input", "sync img/s (p50/p99 ms)"]
        + [f"{k} in flight img/s (p50/p99 ms)" for k in levels] + ["best / sync", "best peak RSS MiB"],
        [[r["backend"], r.get("input", "tensor"), f"{r['sync']['images_per_s']} ({r['sync']['latency_ms']['50']:.1f}/"
          f"{r['sync']['latency_ms']['99']:.1f})"]
         + [f"{at(r, k)['images_per_s']} ({at(r, k)['latency_ms']['50']:.1f}/{at(r, k)['latency_ms']['99']:.1f})"
            for k in levels]
         + [f"{r['speedup_vs_sync']} ({r['best_streams']} in flight)", at(r, r["best_streams"])["peak_rss_mb"]]
         for r in rows])
    tens = [r for r in rows if r.get("input", "tensor") == "tensor" and r.get("sync_1thread")]
    gain = cm.md_table(
        ["backend", "sync img/s", "sync x1 thread img/s", f"ceiling = {result.get('cores_used', 'cores')} x 1-thread / sync",
         "intra-op efficiency at batch 1", "best in flight / sync"],
        [[r["backend"], r["sync"]["images_per_s"], r["sync_1thread"]["images_per_s"], r["ceiling_vs_sync"],
          r["intra_op_efficiency"], r["speedup_vs_sync"]] for r in tens])
    frame = ""
    if result.get("frame_size"):
        fh, fw = result["frame_size"]
        frame = (f" `frame`: a raw uint8 {fh}x{fw} photo crop per call (the Runtime resizes and normalizes it: in "
                 "`predict`, in series with inference; in `submit`, in the caller's thread while earlier requests run).")
    return (f"Machine: {result['machine']}. {result['model']} C={result['cores']} at {result['size']}x{result['size']}, "
            f"FP32, batch 1; each variant in its own process, {how} per round, median images/s of {result['rounds']} "
            "interleaved round(s).\n\n"
            + curve
            + "\n`sync`: `Runtime.predict` in a loop (LATENCY settings, all cores); `N in flight`: "
              "`Runtime.open(..., streams=N)` + `submit`, N requests kept in flight (OpenVINO: N infer requests with "
              "NUM_STREAMS=N and the THROUGHPUT hint; ONNX Runtime N parallel runs on one session, cores/N intra-op "
              "threads each). Latency: per call (sync) or submit to completion. `tensor`: an already normalized "
              "float32 input (the runtime's figures alone)." + frame + "\n\n"
            + ("**Where the gain comes from.** Requests side by side gain only what one batch-1 request leaves "
              "unused: at best the cores x the one-thread rate (every core busy on its own request, no intra-op "
              "scaling loss). The ceiling column is that bound; a best-in-flight figure near it means the "
              "concurrency recovered all of it.\n\n" + gain if tens else ""))


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
    inputs = ["tensor"] + (["frame"] if a.frames else [])
    fh, fw = (int(v) for v in a.frame_size.lower().split("x"))
    from veca_deploy.runtimes.pool import usable_cores

    ncores = int(a.threads or usable_cores())
    # (backend, input, mode, in flight, threads): "sync1" is predict with one intra-op thread
    variants = [(b, i, "sync", 1, a.threads) for b in backends for i in inputs]
    variants += [(b, "tensor", "sync1", 1, 1) for b in backends]
    variants += [(b, i, "async", k, a.threads) for b in backends for i in inputs for k in levels]
    runs: dict[tuple, list[dict]] = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            b, inp, mode, k, th = v
            res = child({"bundle": str(bdir), "backend": b, "mode": "sync" if mode == "sync1" else mode, "streams": k,
                         "cores": a.cores, "count": a.count, "duration": a.duration, "warmup": a.warmup,
                         "threads": th, "input": inp, "frame_size": [fh, fw]})
            runs[v].append(res)
            cm.log(f"  round {r + 1}/{a.rounds} {b} {inp} {mode} x{k}: {res['images_per_s']:.1f} img/s, "
                   f"p50 {res['latency_ms']['50']:.2f} ms, peak RSS {res['peak_rss_mb']:.0f} MiB")

    def summary(v):
        rs = runs[v]
        ips = [x["images_per_s"] for x in rs]
        return {"mode": v[2], "streams": v[3], "threads": v[4], "images_per_s": round(cm.med(ips), 2),
                "images_per_s_rounds": ips,
                "latency_ms": {q: round(cm.med([x["latency_ms"][q] for x in rs]), 4) for q in ("50", "95", "99")},
                "peak_rss_mb": round(max(x["peak_rss_mb"] or 0 for x in rs), 1),
                "runner_settings": rs[-1]["runner_settings"], "tier": rs[-1]["tier"]}

    rows = []
    for b in backends:
        one = summary((b, "tensor", "sync1", 1, 1))
        for inp in inputs:
            sync = summary((b, inp, "sync", 1, a.threads))
            conc = [summary((b, inp, "async", k, a.threads)) for k in levels]
            best = max(conc, key=lambda s: s["images_per_s"])
            row = {"backend": b, "input": inp, "sync": sync, "concurrency": conc, "best_streams": best["streams"],
                   "best_images_per_s": best["images_per_s"],
                   "speedup_vs_sync": cm.ratio(best["images_per_s"], sync["images_per_s"])}
            if inp == "tensor":
                # requests side by side can at most recover what intra-op threading loses at batch 1
                row["sync_1thread"] = one
                row["ceiling_vs_sync"] = cm.ratio(ncores * one["images_per_s"], sync["images_per_s"])
                row["intra_op_efficiency"] = cm.ratio(sync["images_per_s"], ncores * one["images_per_s"])
            rows.append(row)
    result.update(bundle=str(bdir), rows=rows, inputs=inputs, frame_size=[fh, fw] if a.frames else None,
                  cores_used=ncores,
                  raw={f"{b} {i} {m} x{k}": v for (b, i, m, k, _), v in runs.items()})
    cm.finish(result)
    md = markdown(result)
    fig = None
    try:
        plt = cm.plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in rows:  # the latency-vs-throughput curve, one point per concurrency, sync as a cross
            pts = [(c["images_per_s"], c["latency_ms"]["50"], c["streams"]) for c in r["concurrency"]]
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{r['backend']} {r['input']}")[0]
            for x, y, k in pts:
                ax.annotate(f"x{k}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
            ax.plot([r["sync"]["images_per_s"]], [r["sync"]["latency_ms"]["50"]], "x", color=line.get_color())
        ax.set(xlabel="images/s (median)", ylabel="p50 latency ms (submit to result)",
               title=f"{a.model} {a.size}px C={a.cores} - {result['machine']}")
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
