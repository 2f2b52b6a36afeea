"""What does ``veca_deploy.Runtime.predict`` add over a bare backend call? Smallest tier of the
reference bundle (the cheapest model, where a fixed overhead shows most), batch 1.

Variants, timed interleaved call by call (A B C D, D C B A, ...; medians over thousands of calls, so
machine noise hits every variant alike), same artifact and the runner options the Runtime uses:
``bare``: the backend's own call (``InferenceSession.run`` / OpenVINO ``InferRequest.infer``) on
the Runtime's own runner, so all variants share one session; ``runner``: ``Runner.infer(feed)``
with its input checks;
``predict``: ``Runtime.predict(float32 NCHW)``; ``predict_uint8``: ``Runtime.predict`` of a raw
28x28 uint8 image (includes resize + normalization, informational). Target: ``predict`` within
5% or 100 us of ``bare``.

    python benchmarks/runtime_overhead.py --bundle DIR
    python benchmarks/runtime_overhead.py --smoke --out /tmp/x
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

NAME = "runtime_overhead"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--rounds", type=int, default=3000, help="interleaved rounds; one call per variant per round")
    ap.add_argument("--iters", type=int, default=1, help="calls per sample")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds, a.iters, a.backends = 20, 1, "onnxruntime"
    a.backends = [b for b in a.backends.split(",") if b]
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    import veca_deploy
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.runtimes import backend_available
    from veca_deploy.runtimes.base import CORE_SELECT, core_select

    fp = cm.fingerprint()
    result = cm.header(fp, benchmark=NAME, model="veca_tiny (built-in reference)")
    cm.log(f"machine: {result['machine']}")
    tmp = Path(tempfile.mkdtemp(prefix="veca-overhead-"))
    bdir, _ = cm.reference_bundle(a.bundle, tmp / "reference", a.smoke)
    bundle = Bundle.open(bdir)
    smallest = min(x.cores for x in bundle.artifacts)
    rows = []
    for backend in a.backends:
        fmt = "onnx" if backend == "onnxruntime" else "openvino"
        if not backend_available(backend) or not any(x.format == fmt for x in bundle.artifacts):
            continue
        rt = veca_deploy.Runtime.open(bdir, None, backend=backend, tiers=[smallest], precisions=["fp32"])
        tier = rt.tier
        art = bundle.get(tier.artifact)
        x = np.random.default_rng(0).standard_normal((1, 3, art.height, art.width)).astype(np.float32)
        raw = np.random.default_rng(0).integers(0, 256, (art.height, art.width), dtype=np.uint8)
        feed = {"images": x, **({CORE_SELECT: core_select(tier.cores)} if art.elastic else {})}
        # the Runtime's own runner: every variant drives the same session / thread pool, so the
        # comparison is not between two thread pools fighting over the cores
        runner = rt._runner(rt._rungs[0].cand)
        if backend == "onnxruntime":
            sess, names = runner.session, runner.output_names()
            bare = lambda: sess.run(names, feed)  # noqa: E731
        else:
            req = runner.request.one  # the batch-1 InferRequest itself, not the runner's lane dispatch
            bare = lambda: req.infer(feed)  # noqa: E731
        around: list[float] = []  # per predict call: wall time minus the backend call inside it

        def predict() -> None:
            t0 = time.perf_counter()
            p = rt.predict(x)
            around.append((time.perf_counter() - t0) * 1e3 - p.latency_ms)

        calls = {"bare": bare, "runner": lambda: runner.infer(feed), "predict": predict,
                 "predict_uint8": lambda: rt.predict(raw)}
        samples = cm.interleaved(calls, rounds=a.rounds, warmup=20, iters=a.iters)
        med = {k: cm.med(v) for k, v in samples.items()}
        in_call_us = cm.med(around) * 1e3
        over_us = (med["predict"] - med["bare"]) * 1e3
        over_pct = 100 * (med["predict"] / med["bare"] - 1)
        rows.append({"backend": backend, "tier": tier.to_dict(), "artifact": art.id, "elastic": art.elastic,
                     "timings": {k: cm.summary(v) for k, v in samples.items()},
                     "median_us": {k: round(v * 1e3, 2) for k, v in med.items()},
                     "predict_overhead_us": round(over_us, 2), "predict_overhead_pct": round(over_pct, 2),
                     "runner_overhead_us": round((med["runner"] - med["bare"]) * 1e3, 2),
                     "predict_in_call_us": round(in_call_us, 2),
                     "met": bool(over_pct <= 5.0 or over_us <= 100.0), "runner_settings": runner.describe()})
        cm.log(f"{backend} {art.id}: " + ", ".join(f"{k}={v * 1e3:.1f} us" for k, v in med.items())
               + f" -> overhead {over_us:.1f} us ({over_pct:.1f}%), in-call {in_call_us:.1f} us")
        rt.close()
    result.update(bundle=str(bdir), rows=rows, target="predict <= bare + 5% or + 100 us",
                  met=all(r["met"] for r in rows) if rows else None)
    cm.finish(result)
    md = (f"Machine: {result['machine']}. Reference bundle, smallest tier, batch 1, medians of {a.rounds} interleaved "
          f"rounds x {a.iters} calls (microseconds per call).\n\n"
          + cm.md_table(["backend", "artifact", "bare us", "Runner.infer us", "predict us", "predict(uint8) us",
                         "predict - bare us", "overhead %", "predict in-call us", "target met"],
                        [[r["backend"], r["artifact"], r["median_us"]["bare"], r["median_us"]["runner"],
                          r["median_us"]["predict"], r["median_us"]["predict_uint8"], r["predict_overhead_us"],
                          r["predict_overhead_pct"], r["predict_in_call_us"], "yes" if r["met"] else "no"]
                         for r in rows])
          + "\n`predict - bare`: difference of the interleaved medians (includes the cores' scheduling noise); "
            "`predict in-call`: per call, predict's wall time minus the backend call inside it (exactly what "
            "predict adds: input checks, feed, output slicing). The target is judged on `predict - bare`.\n")
    plt = cm.plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = ["bare", "runner", "predict", "predict_uint8"]
    for i, r in enumerate(rows):
        ax.bar([j + 0.4 * i for j in range(len(keys))], [r["median_us"][k] for k in keys], 0.4, label=r["backend"])
    ax.set_xticks([j + 0.2 for j in range(len(keys))], keys)
    ax.set(ylabel="us per call (median)", title=f"Runtime.predict overhead - {result['machine']}")
    ax.legend(fontsize=8)
    cm.publish(a.out, NAME, result, md, fig)
    return result


if __name__ == "__main__":
    main()
