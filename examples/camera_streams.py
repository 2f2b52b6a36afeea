"""Serve several simulated camera streams from real photos at a fixed frame rate (issue 19).

    python examples/camera_streams.py BUNDLE --streams 4 --fps 15 --budget-ms 100 --seconds 20
    python examples/camera_streams.py BUNDLE --streams 4 --fps 15 --budget-ms 100 --adaptive --json out.json

What an edge box watching N cameras does: every camera delivers a frame each 1/fps seconds (the
streams are staggered); a frame is **dropped** when its camera already has ``--queue`` frames
waiting or running (a real camera overwrites its buffer); every other frame is **served** (its
result comes back), and **late** when that took more than the budget (arrival to result). Before anything runs,
``Runtime.open(..., streams_needed=N, fps=F)`` picks the most accurate tier and the number of
requests in flight that carry N x F images/s within the budget (measuring what the bundle's
profile lacks); when none does it prints which limit fails (throughput or latency) with the best
figures and exits 8, unless ``--ignore-capacity`` runs the most accurate tier anyway (to watch
frames drop). ``--adaptive`` lets the runtime step tiers down when latency *including queueing
delay* overruns the budget.

Each camera is its own thread that preprocesses its frame (resize from the camera's frame size to
the tier's) and submits it, so preprocessing of one stream overlaps inference of the others.
Frames are crops of real photos (scikit-image's, a folder of yours with ``--photos``, or
Fashion-MNIST items when neither is installed). Only the runtime install is needed (numpy,
onnxruntime and/or openvino); no torch.

Reports, per stream and in total: frames offered, served, dropped, late; latency percentiles
(arrival to result); the tier used over time; the controller's switches.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import veca_deploy
from veca_deploy.errors import BudgetError, VecaError

EXIT_WORKLOAD = 8  # the CLI's BudgetError exit code (WorkloadError is one)


# ---------------------------------------------------------------------------- frames
def camera_frames(n: int, size: tuple[int, int], photos: str | None = None) -> list[np.ndarray]:
    """``n`` uint8 HxWx3 frames of ``size``: centred crops of real photos, tiled when a photo is smaller."""
    imgs: list[np.ndarray] = []
    if photos:
        from PIL import Image

        for p in sorted(Path(photos).iterdir()):
            if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                with Image.open(p) as im:
                    imgs.append(np.asarray(im.convert("RGB")))
            if len(imgs) >= n:
                break
        if not imgs:
            raise SystemExit(f"error: no PNG/JPEG/BMP/WebP photos in {photos}")
    else:
        from veca_deploy.compare.comparator import real_images

        imgs = real_images(max(n, 2))
    h, w = size
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        reps = (-(-h // img.shape[0]), -(-w // img.shape[1]), 1)
        big = np.tile(img, reps) if reps[:2] != (1, 1) else img
        top, left = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        out.append(np.ascontiguousarray(big[top:top + h, left:left + w, :3]))
    return out


# ---------------------------------------------------------------------------- the simulation
class StreamStats:
    """One camera's counters (updated from its thread and the runtime's completion threads)."""

    def __init__(self) -> None:
        self.offered = self.served = self.dropped = self.late = self.errors = 0
        self.in_flight = 0
        self.latencies: list[float] = []


def run_streams(rt: "veca_deploy.Runtime", frames: list[np.ndarray], *, streams: int, fps: float, seconds: float,
                budget_ms: float | None, queue: int = 2, drain_s: float = 30.0) -> dict[str, Any]:
    """Drive ``streams`` cameras at ``fps`` for ``seconds`` through ``rt.submit`` and count what happened."""
    period = 1.0 / fps
    stats = [StreamStats() for _ in range(streams)]
    lock = threading.Lock()
    timeline: list[tuple[float, str]] = []  # (completion time, tier) in completion order
    t0 = time.perf_counter() + 0.05  # every camera starts from the same origin

    def finished(s: int, arrival: float, fut) -> None:
        now = time.perf_counter()
        st = stats[s]
        with lock:
            st.in_flight -= 1
            try:
                pred = fut.result()
            except BaseException:  # noqa: BLE001 - counted; the report says how many
                st.errors += 1
                return
            ms = (now - arrival) * 1e3
            st.latencies.append(ms)
            st.served += 1
            if budget_ms is not None and ms > budget_ms:
                st.late += 1
            timeline.append((now - t0, f"C={pred.tier.cores} {pred.tier.precision} {pred.tier.backend}"))

    def camera(s: int) -> None:
        st = stats[s]
        arrival = t0 + s * period / streams  # staggered, like unsynchronised cameras
        k = 0
        while arrival - t0 < seconds:
            wait = arrival - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            st.offered += 1
            with lock:
                full = st.in_flight >= queue
                if not full:
                    st.in_flight += 1
            if full:
                with lock:
                    st.dropped += 1
            else:
                try:
                    fut = rt.submit(frames[(s + k) % len(frames)], deadline_ms=budget_ms)
                except VecaError:
                    with lock:
                        st.in_flight -= 1
                        st.errors += 1
                else:
                    fut.add_done_callback(lambda f, s=s, a=arrival: finished(s, a, f))
            k += 1
            arrival += period
            # a camera thread that fell behind (preprocessing slower than the frame rate) loses the
            # frames it could not even hand over: the sensor overwrote them
            while time.perf_counter() > arrival + period and arrival - t0 < seconds:
                st.offered += 1
                with lock:
                    st.dropped += 1
                arrival += period
                k += 1

    threads = [threading.Thread(target=camera, args=(s,), name=f"camera-{s}", daemon=True) for s in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter() + drain_s
    while time.perf_counter() < end:
        with lock:
            if all(st.in_flight == 0 for st in stats):
                break
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    return _report(stats, timeline, rt, streams=streams, fps=fps, seconds=seconds, budget_ms=budget_ms, queue=queue,
                   wall_s=wall)


def _pcts(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"50": None, "95": None, "99": None}
    a = np.asarray(xs)
    return {q: round(float(np.percentile(a, int(q))), 3) for q in ("50", "95", "99")}


def _segments(timeline: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """The tier used over time: consecutive completions on one tier merged into a segment."""
    segs: list[dict[str, Any]] = []
    for t, tier in sorted(timeline):
        if segs and segs[-1]["tier"] == tier:
            segs[-1]["to_s"], segs[-1]["frames"] = round(t, 3), segs[-1]["frames"] + 1
        else:
            segs.append({"tier": tier, "from_s": round(t, 3), "to_s": round(t, 3), "frames": 1})
    return segs


def _report(stats: list[StreamStats], timeline, rt, **info: Any) -> dict[str, Any]:
    per = []
    for s, st in enumerate(stats):
        per.append({"stream": s, "offered": st.offered, "served": st.served, "dropped": st.dropped, "late": st.late,
                    "errors": st.errors, "unfinished": st.in_flight, "latency_ms": _pcts(st.latencies)})
    keys = ("offered", "served", "dropped", "late", "errors", "unfinished")
    total = {k: sum(p[k] for p in per) for k in keys}
    total["latency_ms"] = _pcts([x for st in stats for x in st.latencies])
    total["served_fps"] = round(total["served"] / max(info["seconds"], 1e-9), 2)
    total["in_budget_fraction"] = round((total["served"] - total["late"]) / max(total["offered"], 1), 4)
    return {**info, "wall_s": round(info["wall_s"], 3), "required_ips": round(info["streams"] * info["fps"], 3),
            "concurrency": rt.streams, "adaptive": rt.adaptive, "total": total, "per_stream": per,
            "tier_timeline": _segments(timeline), "switches": [list(h) for h in rt.switches],
            "deadline_misses": rt.deadline_misses}


# ---------------------------------------------------------------------------- command line
def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise argparse.ArgumentTypeError(f"frame size {text} out of range (8..4096)")
    return h, w


def _positive(kind):
    def parse(text: str):
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--streams", type=_positive(int), default=2, help="cameras")
    ap.add_argument("--fps", type=_positive(float), default=10.0, help="frames per second of each camera")
    ap.add_argument("--budget-ms", type=_positive(float), default=100.0, help="arrival-to-result budget per frame")
    ap.add_argument("--percentile", type=float, default=95)
    ap.add_argument("--seconds", type=_positive(float), default=10.0)
    ap.add_argument("--queue", type=_positive(int), default=2, help="frames a camera may have waiting or running")
    ap.add_argument("--frame-size", type=_size, default=(480, 640), help="camera frame HxW (default 480x640)")
    ap.add_argument("--photos", default=None, help="a folder of photos to crop frames from")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tiers", default=None, help="comma-separated core tiers to consider")
    ap.add_argument("--precisions", default=None, help="comma-separated precisions to consider")
    ap.add_argument("--concurrency", type=_positive(int), default=None,
                    help="requests in flight (default: what the workload selection picks)")
    ap.add_argument("--adaptive", action="store_true", help="step tiers down when latency + queueing overruns")
    ap.add_argument("--ignore-capacity", action="store_true",
                    help="run the most accurate tier even when the workload does not fit")
    ap.add_argument("--json", default=None, help="also write the report here")
    a = ap.parse_args(argv)
    tiers = [int(t) for t in a.tiers.split(",")] if a.tiers else None
    precisions = a.precisions.split(",") if a.precisions else None
    common = dict(backend=a.backend, tiers=tiers, precisions=precisions, percentile=a.percentile, adaptive=a.adaptive)
    workload = None
    try:
        try:
            rt = veca_deploy.Runtime.open(a.bundle, a.budget_ms, streams_needed=a.streams, fps=a.fps,
                                          streams=a.concurrency, **common)
            workload = rt.workload.to_dict()
        except BudgetError as e:
            print(f"capacity: {e}", file=sys.stderr)
            if not a.ignore_capacity:
                return EXIT_WORKLOAD
            workload = {"error": str(e), "limit": getattr(e, "limit", "")}
            common["adaptive"] = False  # the most accurate tier, as asked; nothing fits the budget anyway
            rt = veca_deploy.Runtime.open(a.bundle, None, streams=a.concurrency or 1, **common)
        with rt:
            frames = camera_frames(max(4, a.streams), a.frame_size, a.photos)
            print(f"serving {a.streams} stream(s) x {a.fps:g} fps ({a.streams * a.fps:g} frames/s) for "
                  f"{a.seconds:g} s on {rt.tier}, {rt.streams} in flight, budget {a.budget_ms:g} ms"
                  + (", adaptive" if rt.adaptive else ""))
            report = run_streams(rt, frames, streams=a.streams, fps=a.fps, seconds=a.seconds, budget_ms=a.budget_ms,
                                 queue=a.queue)
    except VecaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report["workload"] = workload
    report["frame_size"] = list(a.frame_size)
    t = report["total"]
    lat = t["latency_ms"]
    print(f"frames offered {t['offered']}, served {t['served']}, dropped {t['dropped']}, late {t['late']}"
          + (f", errors {t['errors']}" if t["errors"] else "")
          + (f"; latency p50 {lat['50']:.1f} ms, p95 {lat['95']:.1f} ms, p99 {lat['99']:.1f} ms" if lat["50"] else ""))
    for seg in report["tier_timeline"]:
        print(f"  {seg['from_s']:7.2f}-{seg['to_s']:7.2f} s  {seg['tier']}  ({seg['frames']} frames)")
    for call, level, why in report["switches"]:
        print(f"  switch after call {call} to rung {level}: {why}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
