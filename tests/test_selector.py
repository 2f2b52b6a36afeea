"""Tier selection and the adaptive runtime, driven by synthetic profiles (deterministic: the shared
CPU is far too noisy to assert on real latencies) plus one real profiling run."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.io import write_manifest
from veca_deploy.bundle.reader import Bundle
from veca_deploy.cli import main
from veca_deploy.errors import BudgetError, UsageError
from veca_deploy.runtimes.fingerprint import device_fingerprint, device_id
from veca_deploy.runtimes.timing import PERCENTILES, Timing
from veca_deploy.selector import AdaptiveController, Profile, candidates, profile_path, save_profile, select
from veca_deploy.selector.profile import runner_revision
from veca_deploy.selector.candidates import Candidate, resolve_backends
from veca_deploy.selector.select import Measured, rank

#: synthetic p-anything latency (ms) per core count; openvino +1 ms, elastic +0.5 ms
BASE = {8: 2.0, 16: 4.0, 24: 6.0, 32: 8.0}


def synthetic_latency(c: Candidate) -> float:
    return BASE[c.cores] + (1.0 if c.backend == "openvino" else 0.0) + (0.5 if c.artifact.elastic else 0.0)


#: what bench records for a candidate whose golden gate passed (execution variants need one)
PASSED_GATE = {"passed": True, "min_cosine": 1.0, "failures": []}


def timing(lat: float, tail: float | None = None) -> dict:
    samples = [lat] * 90 + [tail if tail is not None else lat] * 10
    pct = {str(q): float(np.percentile(samples, q)) for q in PERCENTILES}
    return Timing(load_ms=1.0, first_ms=1.0, count=100, warmup=0, batch=1, mean_ms=float(np.mean(samples)),
                  min_ms=lat, max_ms=max(samples), percentiles_ms=pct, throughput_ips=1e3 / lat, rss_mb=None,
                  peak_rss_mb=None, samples_ms=samples).to_dict()


def write_profile(root: Path, latency=synthetic_latency, tails: dict[int, float] | None = None) -> Path:
    b = Bundle.open(root)
    fp = device_fingerprint()
    prof = Profile(device=device_id(fp), fingerprint=fp)
    for c in candidates(b, ["onnxruntime", "openvino"]):
        lat = latency(c)
        prof.entries[c.key] = {"artifact": c.artifact.id, "sha256": c.artifact.sha256, "error": None,
                               "runner_revision": runner_revision(c.backend), "gate": PASSED_GATE,
                               "timing": timing(lat, (tails or {}).get(c.cores))}
    return save_profile(b, prof)


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sel") / "b"
    shutil.copytree(tiny_bundle, root)
    write_profile(root)
    return root


# ---------------------------------------------------------------------------- selection
@pytest.mark.parametrize("budget,cores", [(3, 8), (5, 16), (7, 24), (10, 32), (1000, 32)])
def test_selection_follows_budget(bundle, budget, cores):
    sel = select(Bundle.open(bundle), budget, backend="onnxruntime,openvino", measure=False)
    assert sel.chosen.cand.cores == cores
    assert sel.chosen.latency_ms <= budget * 0.9
    # ties in quality go to the fastest backend / artifact: per-tier ONNX here
    assert sel.chosen.cand.tier.backend == "onnxruntime" and not sel.chosen.cand.artifact.elastic


def test_selection_monotone_in_budget(bundle):
    b = Bundle.open(bundle)
    chosen = [select(b, budget, measure=False).chosen.cand.cores for budget in (2.5, 4, 6, 8, 9.5, 50)]
    assert chosen == sorted(chosen) and chosen[0] == 8 and chosen[-1] == 32


def test_margin_and_percentile(tmp_path, tiny_bundle):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    write_profile(root, tails={32: 30.0})  # C=32 has a slow tail: p50 fits 10 ms, p95 does not
    b = Bundle.open(root)
    assert select(b, 10, percentile=50, backend="onnxruntime", measure=False).chosen.cand.cores == 32
    assert select(b, 10, percentile=95, backend="onnxruntime", measure=False).chosen.cand.cores == 24
    # margin: 6.6 ms budget fits C=24 (6 ms) with no margin, not with 10 %
    assert select(b, 6.6, margin=0.0, backend="onnxruntime", measure=False).chosen.cand.cores == 24
    assert select(b, 6.6, margin=0.1, backend="onnxruntime", measure=False).chosen.cand.cores == 16


def test_accuracy_from_manifest_beats_core_count(tmp_path, tiny_bundle):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    b = Bundle.open(root)
    for a in b.manifest.artifacts:  # pretend C=24 measured better than C=32
        a.accuracy = {"per_tier": {str(c): {8: 0.80, 16: 0.85, 24: 0.90, 32: 0.88}[c] for c in a.tiers}}
    write_manifest(root, b.manifest)
    write_profile(root)
    sel = select(Bundle.open(root), 100, backend="onnxruntime", measure=False)
    assert sel.chosen.cand.cores == 24 and sel.chosen.cand.accuracy == pytest.approx(0.90)


def test_card_top1_used_for_fp32(tmp_path, tiny_bundle):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    b = Bundle.open(root)
    b.manifest.model["card_top1"] = {"8": 70.0, "16": 91.0, "24": 80.0, "32": 85.0}  # cards say percent
    el = next(a for a in b.manifest.artifacts if a.elastic)
    el.accuracy = {"metric": "cosine", "per_tier": {str(c): 0.9999 for c in el.tiers}}  # not a top-1
    write_manifest(root, b.manifest)
    write_profile(root)
    sel = select(Bundle.open(root), 100, backend="onnxruntime", measure=False)
    assert sel.chosen.cand.cores == 16 and sel.chosen.cand.accuracy == pytest.approx(0.91)
    assert all(m.cand.accuracy == pytest.approx(0.85) for m in sel.ranked if m.cand.cores == 32)


def test_rank_without_accuracy_prefers_cores_size_precision(bundle):
    b = Bundle.open(bundle)
    base = next(a for a in b.artifacts if a.format == "onnx" and not a.elastic and a.cores == 16)
    import dataclasses

    def art(**kw):
        return dataclasses.replace(base, id="", **kw)

    ms = [Measured(Candidate(art(precision="int8"), 16, None), 1.0),
          Measured(Candidate(art(precision="fp16"), 16, None), 1.0),
          Measured(Candidate(art(), 16, None), 1.0),
          Measured(Candidate(art(height=56, width=56), 16, None), 5.0),
          Measured(Candidate(art(cores=32, tiers=[32]), 32, None), 5.0),
          Measured(Candidate(art(precision="int8"), 8, 0.5), 9.0)]  # the only measured accuracy wins
    order = [(m.cand.cores, m.cand.artifact.height, m.cand.artifact.precision) for m in rank(ms)]
    assert order == [(8, base.height, "int8"), (32, base.height, "fp32"), (16, 56, "fp32"),
                     (16, base.height, "fp32"), (16, base.height, "fp16"), (16, base.height, "int8")]


def test_budget_error_names_fastest(bundle):
    with pytest.raises(BudgetError, match=r"fastest.*C=8.*takes 2 ms"):
        select(Bundle.open(bundle), 1.5, backend="onnxruntime", measure=False)


@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf")])
def test_bad_budget_is_usage_error(bundle, budget):
    with pytest.raises(UsageError):
        select(Bundle.open(bundle), budget, measure=False)


def test_bad_backend_and_percentile(bundle):
    b = Bundle.open(bundle)
    with pytest.raises(UsageError, match="unknown backend"):
        select(b, 10, backend="cuda", measure=False)
    with pytest.raises(UsageError):
        select(b, 10, percentile=0, measure=False)
    with pytest.raises(UsageError):
        select(b, 10, margin=1.0, measure=False)
    assert resolve_backends("auto", b) == ["onnxruntime", "openvino"]


def test_stale_profile_entry_ignored(tmp_path, tiny_bundle):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    path = write_profile(root)
    d = json.loads(path.read_text())
    for e in d["entries"].values():
        e["sha256"] = "0" * 64  # as if the artifacts were re-exported since
    path.write_text(json.dumps(d))
    with pytest.raises(BudgetError, match="no latency profile"):
        select(Bundle.open(root), 10, measure=False)


def test_cli_exit_codes(bundle, capsys):
    assert main(["select", str(bundle), "--budget-ms", "0.5"]) == 8
    assert "fastest" in capsys.readouterr().err
    assert main(["select", str(bundle), "--budget-ms", "10", "--backend", "nope"]) == 2
    assert main(["select", str(bundle), "--budget-ms", "nan"]) == 2
    assert main(["select", str(bundle), "--budget-ms", "-1"]) == 2
    assert main(["select", str(bundle), "--budget-ms", "10", "--backend", "tensorrt"]) == 7  # not installed here
    capsys.readouterr()
    assert main(["select", str(bundle), "--budget-ms", "10", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["chosen"]["cores"] == 32 and d["limit_ms"] == pytest.approx(9.0)


def test_select_profiles_when_missing_and_writes_only_profile(tmp_path, tiny_bundle):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    sel = select(Bundle.open(root), 1000, backend="onnxruntime", tiers=[8, 16], count=3, warmup=1)
    assert sel.profiled and sel.chosen.cand.cores == 16
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    new = set(after) - set(before)
    assert new == {profile_path(root).relative_to(root)}
    assert all(after[k] == v for k, v in before.items())
    assert not list(tmp_path.glob(".*"))  # no leftovers beside the bundle either
    again = select(Bundle.open(root), 1000, backend="onnxruntime", tiers=[8, 16])
    assert not again.profiled


# ---------------------------------------------------------------------------- adaptive
def test_controller_no_flapping_near_boundary():
    ctl = AdaptiveController([8.0, 6.0, 4.0, 2.0], budget_ms=10, window=4, patience=2)
    rng = np.random.default_rng(0)
    level_seq = []
    for _ in range(400):  # runs at 1.6x profile: C=32 misses, C=24 (9.6) fits, going up is predicted to miss
        lat = ctl.ladder_ms[ctl.level] * 1.6 * (1 + 0.05 * rng.standard_normal())
        ctl.observe(lat)
        level_seq.append(ctl.level)
    assert len(ctl.history) <= 2 and level_seq[-1] in (1, 2)
    assert all(b >= a for a, b in zip(level_seq, level_seq[1:]))  # only ever stepped down


class Slowdown:
    """latency_hook: the profiled latency of the tier times ``factor`` (the real time is ignored)."""

    def __init__(self) -> None:
        self.factor = 1.0
        self.lock = threading.Lock()

    def __call__(self, measured_ms: float, tier) -> float:
        return (BASE[tier.cores] + (0.5 if "elastic" in tier.artifact else 0.0)) * self.factor


def test_adaptive_steps_down_and_back_up(bundle):
    hook = Slowdown()
    img = np.zeros((28, 28), np.uint8)
    with veca_deploy.Runtime.open(bundle, budget_ms=10, backend="onnxruntime", adaptive=True, window=4,
                                  patience=2, latency_hook=hook, measure=False) as rt:
        assert [t.cores for t in rt.tiers] == [32, 24, 16, 8]
        assert rt.tier.cores == 32
        # the next rung is already activated: a switch costs no compile
        assert rt._runners[(rt.tiers[1].artifact, rt.tiers[1].execution)].active
        for _ in range(12):
            rt.predict(img)
        assert rt.tier.cores == 32 and not rt.switches
        hook.factor = 3.0  # C=32: 24 ms, C=24: 18, C=16: 12, C=8: 6 -> must end at C=8
        calls = 0
        while rt.tier.cores != 8:
            rt.predict(img)
            calls += 1
            assert calls <= 3 * 4, "did not step down within one window per rung"
        for _ in range(40):  # still slow: stays at C=8 (C=16 predicted at 12 ms > 9)
            p = rt.predict(img)
        assert rt.tier.cores == 8 and p.tier.cores == 8 and len(rt.switches) == 3
        hook.factor = 1.0
        calls = 0
        while rt.tier.cores != 32:
            rt.predict(img)
            calls += 1
            assert calls <= 3 * 2 * 4 + 4, "did not step back up after the slowdown ended"
        for _ in range(40):
            rt.predict(img)
        levels = [lv for _, lv, _ in rt.switches]
        assert levels == [1, 2, 3, 2, 1, 0]  # down three rungs, up three rungs, nothing else
        assert rt.tier.cores == 32


def test_adaptive_thread_safety(bundle):
    """Four threads predict while the slowdown flips: every call is served by one consistent
    (runner, tier) snapshot, so its outputs are exactly what that tier computes for that input."""
    hook = Slowdown()
    errors: list[BaseException] = []
    seen: list[tuple[int, object, dict[str, np.ndarray]]] = []  # (thread, tier that served, outputs)
    with veca_deploy.Runtime.open(bundle, budget_ms=10, backend="openvino", adaptive=True, window=2,
                                  patience=1, latency_hook=hook, measure=False) as rt:
        rungs = list(rt.tiers)
        assert len(set(rungs)) == 4  # OpenVINO rungs: one infer request each, serialized by the runtime

        def work(k: int) -> None:
            try:
                for i in range(25):
                    hook.factor = 3.0 if (i // 5 + k) % 2 else 1.0
                    p = rt.predict(np.full((2, 30, 30), 7 * k, np.uint8))
                    seen.append((k, p.tier, dict(p.outputs)))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        switched_to = {rungs[level] for _, level, _ in rt.switches}
    assert not errors, errors[0]
    assert len(seen) == 100 and sorted(k for k, _, _ in seen) == sorted(list(range(4)) * 25)
    # a served tier is the first rung or one the controller switched to, never anything else
    served = {tier for _, tier, _ in seen}
    assert served <= {rungs[0]} | switched_to, (served, switched_to)
    # what each tier computes for each thread's image, from a static runtime per tier
    expected: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for tier in rungs:
        with veca_deploy.Runtime.open(bundle, backend="openvino", tiers=[tier.cores]) as ref:
            assert ref.tier == tier
            for k in range(4):
                expected[(tier.cores, k)] = ref.predict(np.full((2, 30, 30), 7 * k, np.uint8)).outputs
    # the tiers are told apart by their outputs, so a mixed-up snapshot could not pass unnoticed
    for k in range(4):
        g = [expected[(t.cores, k)]["global"] for t in rungs]
        assert all(not np.allclose(a, b, atol=1e-3) for i, a in enumerate(g) for b in g[i + 1:])
    for k, tier, out in seen:
        want = expected[(tier.cores, k)]
        assert set(out) == set(want)
        for name, y in out.items():
            assert y.shape == want[name].shape and y.shape[0] == 2
            np.testing.assert_allclose(y, want[name], rtol=1e-4, atol=1e-5, err_msg=f"thread {k} {tier} {name}")


def test_adaptive_needs_budget(bundle):
    with pytest.raises(UsageError, match="adaptive"):
        veca_deploy.Runtime.open(bundle, adaptive=True)


def test_measured_profile_is_read_back_and_drives_selection(tmp_path, tiny_bundle):
    """A profile measured by the harness (not written by the test): its numbers come from the
    timed samples, and select, reading it back, picks what the budget computed from them allows."""
    root = shutil.copytree(tiny_bundle, tmp_path / "b")
    first = select(Bundle.open(root), 1e6, backend="onnxruntime", tiers=[8, 32], count=12, warmup=1)
    assert first.profiled
    d = json.loads(profile_path(root).read_text())
    assert d["device"] == device_id() and d["fingerprint"]
    shas = {a.id: a.sha256 for a in Bundle.open(root).artifacts}
    p95: dict[str, tuple[int, float]] = {}  # candidate key -> (cores, p95 from the raw samples)
    for key, e in d["entries"].items():
        t = e["timing"]
        assert e["error"] is None and e["sha256"] == shas[e["artifact"]] and key == f"{e['artifact']}@c{e['cores']}"
        samples = t["samples_ms"]
        assert len(samples) == t["count"] == 12 and all(math.isfinite(s) and s > 0 for s in samples)
        pct = t["percentiles_ms"]
        assert t["min_ms"] <= pct["50"] <= pct["90"] <= pct["95"] <= pct["99"] <= t["max_ms"]
        assert t["min_ms"] == pytest.approx(min(samples), abs=1e-3) and t["max_ms"] == pytest.approx(max(samples), abs=1e-3)
        p95[key] = (e["cores"], float(np.percentile(samples, 95)))
    # per-tier ONNX at 8 and 32 plus the elastic graph at both
    assert set(p95) == {m.cand.key for m in first.ranked} and len(p95) == 4
    for _, limit_ms in p95.values():
        budget = limit_ms / (1 - 0.1) * (1 + 1e-9)  # exactly this candidate's p95 after the 10 % margin
        fits = [(lat, key, cores) for key, (cores, lat) in p95.items() if lat <= budget * (1 - 0.1)]
        most_cores = max(cores for _, _, cores in fits)
        want_lat, want_key = min((lat, key) for lat, key, cores in fits if cores == most_cores)
        sel = select(Bundle.open(root), budget, backend="onnxruntime", tiers=[8, 32], measure=False)
        assert not sel.profiled
        assert sel.chosen.cand.key == want_key and sel.chosen.latency_ms == pytest.approx(want_lat, rel=1e-12)
    fastest = min(lat for _, lat in p95.values())
    with pytest.raises(BudgetError, match=re.escape(f"takes {fastest:.3g} ms")):
        select(Bundle.open(root), fastest, backend="onnxruntime", tiers=[8, 32], measure=False)  # 10 % margin


# ---------------------------------------------------------------------------- passes
def _timing(samples: list[float], load: float | None = None, shapes=None) -> Timing:
    from veca_deploy.runtimes.timing import _summary

    return _summary(samples, sum(samples) / 1e3, load_ms=load, first_ms=None, warmup=0, batch=1, rss=None,
                    shapes=shapes or {"y": [1, 4]})


def test_merge_pools_the_passes_samples():
    from veca_deploy.errors import BundleError
    from veca_deploy.runtimes.timing import merge

    a, b = _timing([1.0, 1.0, 1.2], load=50.0), _timing([2.0, 2.2, 2.4, 2.6])
    m = merge([a, b])
    every = [1.0, 1.0, 1.2, 2.0, 2.2, 2.4, 2.6]
    assert m.count == 7 and m.passes == 2 and m.load_ms == 50.0 and m.samples_ms == every
    assert m.percentiles_ms["50"] == pytest.approx(float(np.percentile(every, 50)))
    assert m.percentiles_ms["95"] == pytest.approx(float(np.percentile(every, 95)))
    assert m.throughput_ips == pytest.approx(7 / (sum(every) / 1e3), rel=1e-3)
    assert merge([a]) is a
    with pytest.raises(BundleError, match="shapes changed"):
        merge([a, _timing([1.0], shapes={"y": [1, 5]})])


def test_pass_plan():
    from veca_deploy.selector.profile import pass_plan

    assert pass_plan(4, 100, None) == (4, 25, None)
    assert pass_plan(4, 6, None) == (1, 6, None)  # too few runs to split: one pass
    assert pass_plan(4, 10, None) == (2, 5, None)
    assert pass_plan(4, None, 2.0) == (4, None, 0.5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UsageError):
            pass_plan(bad, 100, None)


def test_passes_cancel_a_drifting_host(tmp_path, tiny_bundle, monkeypatch):
    """The host slows down while bench runs (seen: 20 % within the hour). Timed one after the other,
    the truly faster candidate measured last looks slower; spread over passes in reversed order
    (A B | B A | ...) both see the same drift and the ranking is the true one. The latencies are
    scripted (a shared CPU is too noisy to assert on); runners, gates and the merge are real."""
    from veca_deploy.selector import profile as prof_mod

    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    b = Bundle.open(root)
    slow, fast = [next(c for c in candidates(b, ["onnxruntime"], [k], ["fp32"]) if not c.artifact.elastic)
                  for k in (16, 8)]
    true = {slow.key: 1.1, fast.key: 1.0}
    calls: list[str] = []

    def drifting(runner, feed, *, count, duration_s, warmup, where):
        factor = 1.0 + 0.2 * len(calls)  # the host gets slower with every measurement
        calls.append(where)
        return _timing([true[where] * factor] * count)

    monkeypatch.setattr(prof_mod, "measure", drifting)
    one = prof_mod.measure_candidates(b, [slow, fast], count=40, warmup=0, passes=1)
    assert one.timing(slow).p50 < one.timing(fast).p50  # the wrong order
    calls.clear()
    four = prof_mod.measure_candidates(b, [slow, fast], count=40, warmup=0, passes=4)
    assert calls == [slow.key, fast.key, fast.key, slow.key] * 2
    assert four.timing(fast).p50 < four.timing(slow).p50  # the true order
    for c in (slow, fast):
        e = four.entries[c.key]
        assert e["timing"]["count"] == 40 and e["timing"]["passes"] == 4 and e["gate"]["passed"]
        assert e["timing"]["load_ms"] > 0  # the cold start of the first pass


def test_entries_from_an_older_runner_are_measured_again(tmp_path, tiny_bundle):
    """A release that changes what a runner executes (OpenVINO 2: batch 1 compiled static, the bf16
    graph tail) raises its revision; entries timed before are neither trusted nor held as errors."""
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    path = write_profile(root)
    d = json.loads(path.read_text())
    for e in d["entries"].values():
        e.pop("runner_revision")  # what every profile written before revisions holds
    path.write_text(json.dumps(d))
    b = Bundle.open(root)
    prof = veca_deploy.selector.load_profile(b)
    ov = [c for c in candidates(b, ["openvino"])]
    ort = [c for c in candidates(b, ["onnxruntime"])]
    assert runner_revision("openvino") > 1 and runner_revision("onnxruntime") == 1
    assert all(prof.timing(c) is None for c in ov) and all(prof.timing(c) is not None for c in ort)
    prof.entries[ov[0].key]["error"] = "refused by the old runner"
    assert prof.error(ov[0]) is None  # an old refusal is tried again too
    # the artifacts' own runs must be timed (a variant the profile lacks is skipped, never refused)
    own = [c for c in ov if not c.variant]
    with pytest.raises(BudgetError, match=rf"covering {len(own)} candidate\(s\) \({len(own)} timed by an older"):
        select(b, 10, backend="openvino", measure=False)
    assert select(b, 10, backend="onnxruntime", measure=False).chosen.cand.backend == "onnxruntime"
    # measured again, the entry carries today's revision and counts
    fresh = veca_deploy.selector.profile.measure_candidates(b, ov[:1], count=3, warmup=0, profile=prof)
    assert fresh.entries[ov[0].key]["runner_revision"] == runner_revision("openvino")
    assert fresh.timing(ov[0]) is not None


def test_without_a_budget_a_candidate_that_failed_here_is_not_chosen(tmp_path, tiny_bundle):
    """``select(budget_ms=None)`` needs no timing, but a candidate whose gate failed on this device
    (an error in its profile) or an execution variant not gated here is skipped all the same."""
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    b = Bundle.open(root)
    for a in b.manifest.artifacts:
        a.accuracy = {"per_tier": {str(c): {8: 0.80, 16: 0.85, 24: 0.88, 32: 0.90}[c] for c in a.tiers}}
    write_manifest(root, b.manifest)
    path = write_profile(root)
    best = select(Bundle.open(root), None, backend="onnxruntime", measure=False).chosen.cand
    assert best.cores == 32
    d = json.loads(path.read_text())
    d["entries"][best.key]["error"] = "wrong numbers vs the golden outputs here"
    path.write_text(json.dumps(d))
    sel = select(Bundle.open(root), None, backend="onnxruntime", measure=False)
    assert sel.chosen.cand.key != best.key and any(s.startswith(best.key) for s in sel.skipped)


def test_a_variant_not_gated_on_the_device_is_skipped_with_or_without_a_budget(tmp_path, tiny_bundle, monkeypatch):
    """Offline, for a device whose profile times an OpenVINO bf16 variant faster than anything but
    records no passed gate for it: never chosen, and a profile that lacks a variant entirely (older
    than the variant) still serves its artifacts with --no-measure instead of refusing."""
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    b = Bundle.open(root)
    fp = device_fingerprint()
    prof = Profile(device="another-device", fingerprint=fp)
    base = [c for c in candidates(b, ["openvino"], variants=False)]
    for c in base + [Candidate(c.artifact, c.cores, c.accuracy, "bf16", c.samples) for c in base]:
        prof.entries[c.key] = {"artifact": c.artifact.id, "sha256": c.artifact.sha256, "backend": c.backend,
                               "execution": c.variant, "error": None, "runner_revision": runner_revision(c.backend),
                               "threads": None, "timing": timing(0.1 if c.variant else synthetic_latency(c)),
                               "gate": None if c.variant else PASSED_GATE}
    for budget in (None, 100):
        sel = select(b, budget, profile=prof, offline=True, backend="openvino")
        assert sel.chosen.cand.variant is None
        assert {s.split(":")[0] for s in sel.skipped} >= {k for k in prof.entries if k.endswith("+bf16")}
    # this device offers bf16, but its profile predates the variant: --no-measure serves the artifacts
    import veca_deploy.runtimes as rt

    monkeypatch.setattr(rt, "supported_variants", lambda b, device="CPU", precision=None: ("bf16",) if b == "openvino" else ())
    for k in [k for k in prof.entries if k.endswith("+bf16")]:
        del prof.entries[k]
    prof.device = device_id(fp)
    save_profile(b, prof)
    sel = select(Bundle.open(root), 100, backend="openvino", measure=False)
    assert sel.chosen.cand.variant is None
    assert any(s.endswith("+bf16: not gated here (run veca-deploy bench)") for s in sel.skipped)


def test_an_execution_variant_is_timed_only_behind_a_passed_gate():
    """A profile entry of an execution variant counts only with a passed golden gate on the device
    that measured it; the artifact's default run needs none (it passed its gate at export)."""
    from veca_deploy.bundle.manifest import Artifact

    a = Artifact(format="openvino", precision="fp32", cores=8, height=28, width=28, path="openvino/a.xml",
                 sha256="0" * 64, bytes=1, id="a", tiers=[8])
    prof = Profile(device="d", fingerprint={})
    base, var = Candidate(a, 8, 0.9, None, 100), Candidate(a, 8, 0.9, "bf16", 100)
    for c, gate in ((base, None), (var, None)):
        prof.entries[c.key] = {"artifact": "a", "sha256": a.sha256, "error": None, "gate": gate,
                               "runner_revision": runner_revision(c.backend), "threads": None, "timing": timing(1.0)}
    assert prof.timing(base) is not None and prof.timing(var) is None
    prof.entries[var.key]["gate"] = {"passed": False, "failures": ["x"]}
    assert prof.timing(var) is None
    prof.entries[var.key]["gate"] = PASSED_GATE
    assert prof.timing(var) is not None
