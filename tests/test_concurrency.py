"""Concurrency and long runs (issue 8): ``Runtime.predict`` from many threads gives exactly what one
thread gives, also while the adaptive runtime switches tiers under it, and the soak benchmark's
smoke run works. Synthetic profiles (see test_selector.py) keep it deterministic and fast."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.reader import Bundle
from veca_deploy.runtimes import CORE_SELECT, IMAGES, core_select, create_runner

from .test_selector import Slowdown, write_profile

ROOT = Path(__file__).resolve().parents[1]
THREADS = 8
TOTAL_CALLS = 2000
ATOL = 1e-6


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conc") / "b"
    shutil.copytree(tiny_bundle, root)
    write_profile(root)  # synthetic: C=8 2 ms ... C=32 8 ms (+0.5 elastic, +1 OpenVINO)
    return root


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(8)
    out = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(12)]
    out += [rng.integers(0, 256, (41, 33, 3), dtype=np.uint8) for _ in range(2)]  # resized on the way in
    out += [rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)]  # a batch of three
    out += [rng.standard_normal((2, 3, 28, 28)).astype(np.float32)]  # normalized float NCHW
    return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    if set(a) != set(b):
        return f"outputs {sorted(a)} vs {sorted(b)}"
    for k in a:
        if a[k].shape != b[k].shape:
            return f"{k}: shape {a[k].shape} vs {b[k].shape}"
        diff = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
        if not diff <= ATOL:
            return f"{k}: max |diff| {diff:.3g}"
    return None


def _hammer(fn, n_threads: int, calls_per_thread: int) -> tuple[list[BaseException], list]:
    """Run ``fn(thread, i)`` from ``n_threads`` threads released together; collect errors and results."""
    errors: list[BaseException] = []
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        local = []
        try:
            start.wait()
            for i in range(calls_per_thread):
                local.append(fn(t, i))
        except BaseException as e:  # noqa: BLE001
            with lock:
                errors.append(e)
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=work, args=(t,), name=f"predict-{t}") for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a predict thread hung"
    return errors, results


def test_static_runtime_threads_match_single_thread(bundle, images):
    with veca_deploy.Runtime.open(bundle, budget_ms=1000, backend="onnxruntime", tiers=[8], measure=False) as rt:
        assert rt.tier.cores == 8 and rt.tier.backend == "onnxruntime"
        ref = [rt.predict(img).outputs for img in images]  # single-thread references
        order = random.Random(0)
        plan = [[order.randrange(len(images)) for _ in range(TOTAL_CALLS // THREADS)] for _ in range(THREADS)]

        def call(t: int, i: int):
            k = plan[t][i]
            p = rt.predict(images[k])
            return k, p.tier, _same(p.outputs, ref[k])

        t0 = time.perf_counter()
        errors, results = _hammer(call, THREADS, TOTAL_CALLS // THREADS)
        wall = time.perf_counter() - t0
    assert not errors, f"{len(errors)} error(s), first: {errors[0]!r}"
    assert len(results) == TOTAL_CALLS
    bad = [(k, why) for k, tier, why in results if why is not None]
    assert not bad, f"{len(bad)} of {TOTAL_CALLS} results differ from the single-thread run, first: {bad[0]}"
    assert {tier for _, tier, _ in results} == {rt.tier}
    assert wall < 120


def test_adaptive_switches_under_threads_never_mix_tiers(bundle, images):
    hook = Slowdown()
    with veca_deploy.Runtime.open(bundle, budget_ms=10, backend="onnxruntime", adaptive=True, window=2,
                                  patience=1, latency_hook=hook, measure=False) as rt:
        rungs = rt.tiers
        assert len(rungs) >= 3, rungs
        # single-thread reference per rung, computed outside the Runtime with the artifact's own runner
        b = Bundle.open(bundle)
        pre = b.preprocess
        ref: dict = {}
        for tier in rungs:
            art = b.get(tier.artifact)
            with create_runner("onnxruntime", b.path_of(art)) as runner:
                for k, img in enumerate(images):
                    x = img if img.dtype == np.float32 else pre(img, (tier.height, tier.width))
                    feed = {IMAGES: x}
                    if art.elastic:
                        feed[CORE_SELECT] = core_select(tier.cores)
                    ref[tier, k] = runner.infer(feed)

        stop = threading.Event()

        def weather() -> None:  # the device alternates between slow (3x profile) and normal
            while not stop.is_set():
                hook.factor = 3.0 if hook.factor == 1.0 else 1.0
                time.sleep(0.004)

        w = threading.Thread(target=weather, daemon=True)
        w.start()
        calls = 1000 // THREADS
        try:
            def call(t: int, i: int):
                k = (t * 5 + i) % len(images)
                p = rt.predict(images[k])
                return k, p.tier, (_same(p.outputs, ref[p.tier, k]) if (p.tier, k) in ref else "unknown tier")

            errors, results = _hammer(call, THREADS, calls)
        finally:
            stop.set()
            w.join()
        switches = rt.switches
    assert not errors, f"{len(errors)} error(s), first: {errors[0]!r}"
    assert len(results) == THREADS * calls
    served = {tier for _, tier, _ in results}
    assert len(switches) >= 4 and len(served) >= 2, (len(switches), served)  # switching really happened
    bad = [(tier, k, why) for k, tier, why in results if why is not None]
    assert not bad, f"{len(bad)} results do not match the tier they report, first: {bad[0]}"


def test_soak_smoke(bundle, tmp_path):
    """``benchmarks/soak.py --smoke``: 200 calls, RSS sampled, JSON + markdown (+ PNG) written; the
    header says which machine, and every summary figure follows from the samples beside it."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--smoke", "--bundle", str(bundle),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    d = json.loads((tmp_path / "soak-smoke.json").read_text())
    md = (tmp_path / "soak-smoke.md").read_text()
    assert (tmp_path / "soak-smoke.png").stat().st_size > 0
    cpu = d["fingerprint"]["cpu"]
    assert cpu["model"] and cpu["arch"] and 0 < cpu["usable_cores"] <= cpu["logical_cores"]
    assert d["machine"].startswith(cpu["model"]) and d["machine"] in md and d["fingerprint"]["runtimes"]["onnxruntime"]
    assert d["benchmark"] == "soak" and d["started"] <= d["finished"] and d["torch_loaded"] is False
    assert d["calls"] == 200 and d["errors"] == 0 and d["first_errors"] == [] and d["backend"] == "onnxruntime"
    assert sum(d["tiers_served"].values()) == d["calls"]  # every call served, by a tier it names
    samples = d["samples"]
    calls = [s["call"] for s in samples]
    assert len(samples) >= 10 and calls[0] == 0 and calls[-1] == 200 and calls == sorted(set(calls))
    assert all(np.isfinite(s["rss_mb"]) and s["rss_mb"] > 0 for s in samples)
    assert d["warmup_calls"] == 20
    after = [s["rss_mb"] for s in samples if s["call"] >= d["warmup_calls"]]
    assert d["rss_after_warmup_mb"] == after[0] and d["rss_end_mb"] == samples[-1]["rss_mb"]
    assert d["rss_peak_after_warmup_mb"] == max(after)
    assert d["growth_after_warmup_pct"] == pytest.approx(
        (d["rss_end_mb"] - d["rss_after_warmup_mb"]) / d["rss_after_warmup_mb"] * 100, abs=1e-3)
    assert d["peak_growth_after_warmup_pct"] == pytest.approx(
        (max(after) - after[0]) / after[0] * 100, abs=1e-3) and d["peak_growth_after_warmup_pct"] >= 0
    assert d["passed"] == (d["growth_after_warmup_pct"] < d["target_pct"])
    lat = d["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] and lat["mean"] > 0 and 0 < d["wall_s"]
    assert "growth after warm-up" in md and ("PASS" if d["passed"] else "FAIL") in md
