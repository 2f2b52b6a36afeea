"""Throughput (issue 19): ``Runtime.submit`` with N requests in flight gives exactly what ``predict``
gives (ONNX Runtime and OpenVINO), from many threads, through close with pending work; ``bench
--concurrency`` stores its measurements in the profile; workload selection (``select --streams
--fps``, ``Runtime.open(streams_needed=, fps=)``) chooses or fails naming the limit. Selection runs on
synthetic profiles (deterministic); no timing thresholds anywhere (shared cores)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
import threading
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.reader import Bundle
from veca_deploy.cli import main
from veca_deploy.errors import BackendUnavailable, BudgetError, InputError, UsageError
from veca_deploy.runtimes import CORE_SELECT, IMAGES, core_select, create_runner
from veca_deploy.runtimes.pool import check_streams, create_pool, measure_pool, stream_threads
from veca_deploy.selector import Profile, candidates, load_profile, profile_path, save_profile, select
from veca_deploy.selector.profile import runner_revision
from veca_deploy.selector.workload import (WorkloadError, concurrency_timings, default_levels, parse_levels,
                                           select_workload)

from .test_selector import synthetic_latency, timing

BACKENDS = ["onnxruntime", "openvino"]
ATOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images() -> list:
    rng = np.random.default_rng(19)
    out = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(10)]
    out += [rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)]  # resized on the way in
    out += [rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)]  # a batch of three
    out += [rng.standard_normal((2, 3, 28, 28)).astype(np.float32)]  # normalized float NCHW
    return out


def _diff(a, b) -> float:
    assert set(a.keys()) == set(b.keys())
    worst = 0.0
    for k in a.keys():
        assert a[k].shape == b[k].shape, k
        worst = max(worst, float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))))
    return worst


# ---------------------------------------------------------------------------- submit
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("streams", [1, 2])
def test_submit_returns_what_predict_returns(tiny_bundle, images, backend, streams):
    with veca_deploy.Runtime.open(tiny_bundle, None, backend=backend, tiers=[16], streams=streams) as rt:
        assert rt.streams == streams
        ref = [rt.predict(x) for x in images]
        futs = [rt.submit(x) for x in images]
        got = [f.result(timeout=60) for f in futs]
        for r, g in zip(ref, got):
            assert type(g) is type(r) and g.tier == r.tier == rt.tier
            assert _diff(r, g) <= ATOL
            assert math.isfinite(g.latency_ms) and g.latency_ms >= 0 and g.preprocess_ms >= 0
        runner = rt._runners[rt._rungs[0].cand.runner_key]
        settings = runner.describe()
        if streams > 1 and backend == "openvino":
            assert settings["NUM_STREAMS"] == str(streams) and settings["PERFORMANCE_HINT"] == "THROUGHPUT"
        if streams == 1:  # today's settings exactly
            assert "streams" not in settings and settings.get("PERFORMANCE_HINT", "LATENCY") == "LATENCY"


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_threads_submitting_get_their_own_results(tiny_bundle, backend):
    """6 threads x 12 submits of distinct images, 3 in flight: every future holds the result of its
    own image (per-caller order = the order of that caller's futures)."""
    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(24)]
    with veca_deploy.Runtime.open(tiny_bundle, None, backend=backend, tiers=[8], streams=3) as rt:
        ref = [rt.predict(x) for x in imgs]
        errors, per_thread = [], {}
        start = threading.Barrier(6)

        def work(t: int) -> None:
            try:
                start.wait()
                order = [(t * 5 + i) % len(imgs) for i in range(12)]
                futs = [(j, rt.submit(imgs[j])) for j in order]
                per_thread[t] = [(j, f.result(timeout=60)) for j, f in futs]
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors[:1]
        assert sorted(per_thread) == list(range(6))
        for t, results in per_thread.items():
            assert [j for j, _ in results] == [(t * 5 + i) % len(imgs) for i in range(12)]
            for j, pred in results:
                assert _diff(ref[j], pred) <= ATOL, (t, j)


def test_submit_bad_input_raises_in_the_caller(tiny_bundle):
    with veca_deploy.Runtime.open(tiny_bundle, None, backend="onnxruntime", tiers=[8], streams=2) as rt:
        with pytest.raises(InputError):
            rt.submit(np.zeros((28, 28, 4), np.uint8))
        with pytest.raises(InputError):
            rt.submit(np.full((1, 3, 28, 28), np.nan, np.float32))
        # the caller may overwrite its buffer right after submit: the request keeps its own copy
        x = np.random.default_rng(0).standard_normal((1, 3, 28, 28)).astype(np.float32)
        want = rt.predict(x)
        fut = rt.submit(x)
        x[:] = 0
        assert _diff(want, fut.result(timeout=60)) <= ATOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_drains_or_cancels_pending_work(tiny_bundle, backend):
    img = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    rt = veca_deploy.Runtime.open(tiny_bundle, None, backend=backend, tiers=[8], streams=2)
    ref = rt.predict(img)
    futs = [rt.submit(img) for _ in range(60)]
    rt.close()  # drains: everything queued still runs
    assert all(f.done() and not f.cancelled() for f in futs)
    assert all(_diff(ref, f.result()) <= ATOL for f in futs)
    with pytest.raises(UsageError, match="closed"):
        rt.submit(img)
    with pytest.raises(UsageError, match="closed"):
        rt.predict(img)

    rt = veca_deploy.Runtime.open(tiny_bundle, None, backend=backend, tiers=[8], streams=2)
    futs = [rt.submit(img) for _ in range(300)]
    rt.close(cancel_pending=True)  # what has not started is cancelled, the rest completes
    assert all(f.done() for f in futs)
    for f in futs:
        if f.cancelled():
            with pytest.raises(CancelledError):
                f.result()
        else:
            assert _diff(ref, f.result()) <= ATOL
    rt.close()  # idempotent


def test_cancelled_future_and_adaptive_switch_under_submit(tiny_bundle, tmp_path):
    """Adaptive mode under submit: a slowdown steps down the ladder; every request is served whole
    by the tier it was submitted at (outputs equal that tier's own runner's)."""
    from .test_selector import write_profile

    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    write_profile(root)
    slow = {"on": False}
    hook = lambda ms, tier: 50.0 if slow["on"] else 1.0  # noqa: E731
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(8)]
    with veca_deploy.Runtime.open(root, 10, backend="onnxruntime", adaptive=True, latency_hook=hook, streams=2,
                                  measure=False, window=4, patience=2) as rt:
        assert len(rt.tiers) > 1
        first = [rt.submit(x) for x in imgs]
        [f.result(timeout=60) for f in first]
        slow["on"] = True
        preds = []
        for _ in range(12):  # in waves: a request takes its tier at submit time, so later waves see the switch
            wave = [(x, rt.submit(x)) for x in imgs]
            preds += [(x, f.result(timeout=60)) for x, f in wave]
        assert rt.switches, "the slowdown should have stepped down"
        seen = {p.tier for _, p in preds}
        assert seen <= set(rt.tiers) and len(seen) > 1
        b = Bundle.open(root)
        for tier in seen:
            art = b.get(tier.artifact)
            with create_runner(tier.backend, b.path_of(art)) as r:
                for x, p in preds:
                    if p.tier != tier:
                        continue
                    feed = {IMAGES: b.preprocess(x, (tier.height, tier.width))}
                    if art.elastic:
                        feed[CORE_SELECT] = core_select(tier.cores)
                    assert _diff(r.infer(feed), p.outputs) <= ATOL
        f = rt.submit(imgs[0])
        f.cancel()  # cancelling before it runs drops it; never an error
        assert f.done()


def test_stream_checks_and_backends_without_async_refused():
    from veca_deploy.formats import BACKENDS as TABLE

    assert check_streams(2, "tensorrt") == 2 and TABLE["tensorrt"].thread_safe  # lanes (runtimes/trt.py)
    with pytest.raises(BackendUnavailable, match="not supported for someday-backend yet"):
        check_streams(2, "someday-backend")
    assert check_streams(1, "someday-backend") == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(UsageError):
            check_streams(bad)
    assert stream_threads(4, 16) == 4 and stream_threads(4, 2) == 1 and stream_threads(1, 3) == 3
    assert default_levels(2) == [1, 2] and default_levels(16) == [1, 2, 4, 8, 16] and default_levels(1) == [1, 2]
    assert parse_levels("4,1,2,2") == [1, 2, 4]
    with pytest.raises(UsageError):
        parse_levels("1,x")
    with pytest.raises(UsageError):
        parse_levels("0")


@pytest.mark.parametrize("backend", BACKENDS)
def test_measure_pool_keeps_requests_in_flight(tiny_bundle, backend):
    b = Bundle.open(tiny_bundle)
    art = next(a for a in b.artifacts if a.format == ("onnx" if backend == "onnxruntime" else "openvino")
               and not a.elastic and a.cores == 8)
    runner = create_runner(backend, b.path_of(art), streams=2, inference_precision="f32")
    with create_pool(runner, 2) as pool:
        feed = {IMAGES: np.random.default_rng(0).standard_normal((1, 3, 28, 28)).astype(np.float32)}
        t = measure_pool(pool, feed, count=12, warmup=2)
        assert t.count == 12 and t.batch == 1 and t.throughput_ips > 0 and len(t.samples_ms) == 12
        assert set(t.percentiles_ms) == {"50", "90", "95", "99"} and t.output_shapes
    with pytest.raises(UsageError, match="closed"):
        pool.submit(feed)
    runner.close()


# ---------------------------------------------------------------------------- bench --concurrency
def test_bench_concurrency_writes_the_profile_key(tiny_bundle, tmp_path, capsys):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    rc = main(["bench", str(root), "--backend", "onnxruntime,openvino", "--tiers", "8", "--precision", "fp32",
               "--count", "6", "--warmup", "1", "--concurrency", "1,2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "in flight" in out and "img/s" in out
    b = Bundle.open(root)
    prof = load_profile(b)  # the old reader reads it
    cands = [c for c in candidates(b, ["onnxruntime", "openvino"], [8], ["fp32"]) if c.key in prof.entries]
    assert cands
    for c in cands:
        e = prof.entries[c.key]
        assert e["timing"] and not e["error"]  # the existing keys are unchanged
        conc = e["concurrency"]
        assert sorted(conc) == ["1", "2"]
        for k, d in conc.items():
            assert d["streams"] == int(k) and d["count"] == 6 and d["throughput_ips"] > 0
            assert set(d["percentiles_ms"]) >= {"50", "95", "99"} and d["measured"] and d["runner"]
        assert sorted(concurrency_timings(prof, c)) == [1, 2]
    ov = [c for c in cands if c.backend == "openvino"]
    if ov:
        assert prof.entries[ov[0].key]["concurrency"]["2"]["runner"]["NUM_STREAMS"] == "2"
    # the profile stays readable by select and the fleet reader, and a bench without
    # --concurrency keeps the (still valid) measurements
    from veca_deploy.fleet.profiles import device_classes

    (dev,) = device_classes(b, [profile_path(root, prof.device)])
    assert dev.matched >= len(cands)
    assert select(b, 1000, backend="onnxruntime", tiers=[8], measure=False).chosen
    assert main(["bench", str(root), "--backend", "onnxruntime", "--tiers", "8", "--precision", "fp32",
                 "--count", "3", "--warmup", "0", "--quiet"]) == 0
    capsys.readouterr()
    prof2 = load_profile(b)
    c = next(c for c in cands if c.backend == "onnxruntime")
    assert prof2.entries[c.key]["measured"] != "" and sorted(prof2.entries[c.key]["concurrency"]) == ["1", "2"]
    assert main(["bench", str(root), "--concurrency", "0", "--quiet"]) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------- workload selection
def synthetic_concurrency(c, k: int) -> tuple[float, float]:
    """(images/s, latency ms) at k in flight: latency grows by half the base per extra request."""
    lat = synthetic_latency(c) * (1 + 0.5 * (k - 1))
    return k * 1e3 / lat, lat


def write_concurrency_profile(root: Path, levels=(1, 2, 4)) -> Path:
    b = Bundle.open(root)
    from veca_deploy.runtimes.fingerprint import device_fingerprint, device_id

    fp = device_fingerprint()
    prof = Profile(device=device_id(fp), fingerprint=fp)
    for c in candidates(b, ["onnxruntime", "openvino"]):
        conc = {}
        for k in levels:
            ips, lat = synthetic_concurrency(c, k)
            conc[str(k)] = {**timing(lat), "throughput_ips": ips, "streams": k}
        prof.entries[c.key] = {"artifact": c.artifact.id, "sha256": c.artifact.sha256, "backend": c.backend,
                               "runner_revision": runner_revision(c.backend),
                               "execution": c.variant, "error": None, "timing": timing(synthetic_latency(c)),
                               "gate": {"passed": True, "min_cosine": 1.0, "failures": []},
                               "concurrency": conc}
    return save_profile(b, prof)


@pytest.fixture(scope="module")
def wbundle(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workload") / "b"
    shutil.copytree(tiny_bundle, root)
    write_concurrency_profile(root)
    return root


@pytest.mark.parametrize("streams,fps,budget,cores,k", [
    (1, 100, 100, 32, 1),   # C=32 carries 125 img/s alone
    (5, 30, 20, 32, 2),     # 150 img/s: C=32 needs 2 in flight (167 img/s, 12 ms <= 18)
    (10, 30, 20, 16, 2),    # 300 img/s: C=32 tops at 200, C=24 at 267; C=16 at 2 in flight: 333, 6 ms
    (10, 30, 5.5, 8, 1),    # 300 img/s within 4.95 ms: only C=8 (500 img/s at 2 ms)
])
def test_workload_picks_most_accurate_candidate_and_fewest_in_flight(wbundle, streams, fps, budget, cores, k):
    ws = select_workload(Bundle.open(wbundle), streams, fps, budget, backend="onnxruntime", measure=False)
    assert (ws.chosen.cand.cores, ws.streams) == (cores, k)
    assert ws.chosen.throughput_ips >= streams * fps and ws.chosen.latency_ms <= budget * 0.9
    assert not ws.chosen.cand.artifact.elastic  # ties go to the faster per-tier graph
    sel = ws.selection()  # what Runtime serves: the chosen one, ladder at that concurrency
    assert sel.chosen.cand == ws.chosen.cand and sel.decision["streams"] == k
    d = ws.to_dict()
    assert d["chosen"]["streams"] == k and d["required_ips"] == streams * fps and d["points"]
    json.dumps(d)


@pytest.mark.parametrize("streams,fps,budget,limit,words", [
    (100, 30, 20, "throughput", "the most is 800 img/s"),             # 3000 img/s: nobody carries it
    (1, 10, 1, "latency", "the lowest p95 is 2 ms"),                 # 10 img/s in 0.9 ms: nobody that fast
    (100, 30, 1, "throughput and latency", "the most is 800 img/s"),
])
def test_workload_failure_names_the_limit(wbundle, streams, fps, budget, limit, words):
    with pytest.raises(WorkloadError) as ei:
        select_workload(Bundle.open(wbundle), streams, fps, budget, backend="onnxruntime", measure=False)
    e = ei.value
    assert isinstance(e, BudgetError) and e.exit_code == 8 and e.limit == limit
    msg = str(e)
    assert "\n" not in msg and f"({limit} limit)" in msg and words in msg and e.best


def test_workload_uses_only_requested_levels_and_refuses_missing(wbundle, tiny_bundle, tmp_path):
    b = Bundle.open(wbundle)
    ws = select_workload(b, 5, 30, 20, backend="onnxruntime", levels=[4], measure=False)
    assert ws.streams == 4 and {p.streams for p in ws.points} == {4}
    with pytest.raises(BudgetError, match="bench --concurrency"):
        select_workload(b, 5, 30, 20, backend="onnxruntime", levels=[8], measure=False)
    root = tmp_path / "nocon"
    shutil.copytree(tiny_bundle, root)
    from .test_selector import write_profile

    write_profile(root)  # batch-1 timings only: old profiles
    with pytest.raises(BudgetError, match="bench --concurrency"):
        select_workload(Bundle.open(root), 1, 1, 20, backend="onnxruntime", measure=False)
    for bad in [(0, 30), (2, 0), (2, float("nan")), (1.5, 3)]:
        with pytest.raises(UsageError):
            select_workload(b, *bad, 20, measure=False)


def test_select_cli_workload(wbundle, capsys, tmp_path):
    rc = main(["select", str(wbundle), "--budget-ms", "20", "--streams", "5", "--fps", "30",
               "--backend", "onnxruntime", "--no-measure"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 request(s) in flight" in out and "C=32" in out
    rc = main(["select", str(wbundle), "--budget-ms", "20", "--streams", "5", "--fps", "30",
               "--backend", "onnxruntime", "--no-measure", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["chosen"]["cores"] == 32 and d["chosen"]["streams"] == 2
    rc = main(["select", str(wbundle), "--budget-ms", "20", "--streams", "100", "--fps", "30", "--no-measure"])
    err = capsys.readouterr().err
    assert rc == 8 and len(err.strip().splitlines()) == 1 and "throughput limit" in err
    rc = main(["select", str(wbundle), "--budget-ms", "1", "--streams", "1", "--fps", "10", "--no-measure"])
    err = capsys.readouterr().err
    assert rc == 8 and len(err.strip().splitlines()) == 1 and "latency limit" in err
    assert main(["select", str(wbundle), "--budget-ms", "20", "--streams", "5", "--no-measure"]) == 2
    capsys.readouterr()
    # offline, for the device that measured the profile
    prof_file = next((wbundle / "profiles").glob("*.json"))
    other = tmp_path / "p.json"
    shutil.copy(prof_file, other)
    rc = main(["select", str(wbundle), "--budget-ms", "20", "--streams", "10", "--fps", "30", "--profile",
               str(other), "--backend", "onnxruntime", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["chosen"]["cores"] == 16


def test_runtime_open_for_a_workload(wbundle):
    img = np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8)
    with veca_deploy.Runtime.open(wbundle, 20, backend="onnxruntime", streams_needed=10, fps=30,
                                  measure=False) as rt:
        assert rt.streams == 2 and rt.tier.cores == 16 and rt.workload.streams == 2
        assert _diff(rt.predict(img), rt.submit(img).result(timeout=60)) <= ATOL
    with pytest.raises(WorkloadError):
        veca_deploy.Runtime.open(wbundle, 20, backend="onnxruntime", streams_needed=100, fps=30, measure=False)
    with pytest.raises(UsageError):
        veca_deploy.Runtime.open(wbundle, 20, backend="onnxruntime", streams_needed=10, measure=False)


# ---------------------------------------------------------------------------- benchmark smoke
@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_throughput_benchmark_smoke(tmp_path):
    pytest.importorskip("openvino")
    bench = ROOT / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("bench_throughput", bench / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    res = mod.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "throughput.json").read_text())
    md = (tmp_path / "throughput.md").read_text()
    assert data["benchmark"] == "throughput" and data["machine"] in md and "|---" in md
    assert data["fingerprint"]["cpu"]["model"] and data["started"] <= data["finished"]
    assert {r["backend"] for r in data["rows"]} == {"onnxruntime", "openvino"} == {r["backend"] for r in res["rows"]}
    for r in data["rows"]:
        assert r["sync"]["images_per_s"] > 0 and r["sync"]["peak_rss_mb"] > 0
        assert [c["streams"] for c in r["concurrency"]] == [2] and r["best_streams"] == 2
        assert r["speedup_vs_sync"] == round(r["best_images_per_s"] / r["sync"]["images_per_s"], 3)
        for c in r["concurrency"]:
            assert c["images_per_s"] > 0 and c["latency_ms"]["50"] > 0 and c["peak_rss_mb"] > 0
