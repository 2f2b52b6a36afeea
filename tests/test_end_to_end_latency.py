"""End-to-end latency (issue 16): with a declared input size, bench/select/Runtime budget on
preprocessing that size plus inference, report both parts, and store the preprocessing cost in
the device profile; ``predict(deadline_ms=)`` reports overruns and feeds the controller;
first-run profiling reports progress and can be bounded in time."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.reader import Bundle
from veca_deploy.cli import main
from veca_deploy.errors import BudgetError, UsageError
from veca_deploy.selector.preprocess_cost import parse_input_size
from veca_deploy.selector.profile import load_profile, read_profile
from veca_deploy.selector.select import select

BIG = (1500, 2000)  # a photo: tens of ms to antialias down to 28x28, the model takes ~1 ms


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "b"
    shutil.copytree(tiny_bundle, root)
    assert main(["bench", str(root), "--backend", "onnxruntime", "--count", "10", "--quiet"]) == 0
    return root


def test_input_size_parsing():
    assert parse_input_size("1080x1920") == (1080, 1920) and parse_input_size("512") == (512, 512)
    assert parse_input_size((3000, 4000)) == (3000, 4000) and parse_input_size(None) is None
    for bad in ("big", "1x2x3", "0x10", "99999x10", (1, "a")):
        with pytest.raises(UsageError):
            parse_input_size(bad)


def test_select_budgets_on_preprocessing_plus_inference(bundle):
    b = Bundle.open(bundle)
    plain = select(b, 1000, backend="onnxruntime", measure=False)
    full = select(b, 1000, backend="onnxruntime", measure=False, input_size=BIG)
    inf = {m.cand.key: m.latency_ms for m in plain.ranked}
    for m in full.ranked:
        assert m.inference_ms == pytest.approx(inf[m.cand.key])
        assert m.preprocess_ms > 0 and m.latency_ms == pytest.approx(m.inference_ms + m.preprocess_ms)
    assert full.to_dict()["input_size"] == list(BIG) and "preprocess_ms" in full.to_dict()["chosen"]
    # stored in this device's profile: a second selection reuses it (same numbers)
    prof = load_profile(b)
    assert prof.preprocess and all(r["input_size"] == list(BIG) for r in prof.preprocess.values())
    again = select(b, 1000, backend="onnxruntime", measure=False, input_size=BIG)
    assert [m.latency_ms for m in again.ranked] == [m.latency_ms for m in full.ranked]
    # a budget that inference alone fits but inference + preprocessing does not
    fastest = min(full.ranked, key=lambda m: m.latency_ms)
    budget = (min(inf.values()) + 0.5 * fastest.preprocess_ms) / 0.9
    assert select(b, budget, backend="onnxruntime", measure=False).chosen
    with pytest.raises(BudgetError, match="preprocessing a 1500x2000 input"):
        select(b, budget, backend="onnxruntime", measure=False, input_size=BIG)


def test_offline_selection_needs_the_devices_preprocessing_cost(bundle, tmp_path):
    b = Bundle.open(bundle)
    src = next((bundle / "profiles").glob("*.json"))
    d = json.loads(src.read_text())
    d.pop("preprocess", None)
    (tmp_path / "dev.json").write_text(json.dumps(d))
    prof = read_profile(tmp_path / "dev.json")
    with pytest.raises(BudgetError, match="bench --input-size 720x1280"):
        select(b, 1000, profile=prof, offline=True, input_size=(720, 1280))


def test_bench_and_select_cli_report_both_parts(bundle, tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(["bench", str(bundle), "--backend", "onnxruntime", "--count", "5", "--quiet", "--input-size", "720x1280",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "720x1280" in text and "preprocessing per image" in text
    prof = read_profile(out)
    rec = next(r for r in prof.preprocess.values() if r["input_size"] == [720, 1280])
    assert rec["input_size"] == [720, 1280] and rec["size"] == [28, 28] and len(rec["samples_ms"]) >= 3
    code = main(["select", str(bundle), "--budget-ms", "1000", "--profile", str(out), "--input-size", "720x1280",
                 "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["input_size"] == [720, 1280]
    c = d["chosen"]
    assert c["latency_ms"] == pytest.approx(c["inference_ms"] + c["preprocess_ms"], abs=2e-4)
    code = main(["select", str(bundle), "--budget-ms", "1000", "--backend", "onnxruntime", "--input-size", "720x1280",
                 "--no-measure"])
    text = capsys.readouterr().out
    assert code == 0 and "ms preprocessing a 720x1280 image +" in text
    code = main(["bench", str(bundle), "--input-size", "wide", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "HxW" in err and len(err.strip().splitlines()) == 1


def test_runtime_reports_preprocessing_and_deadlines(bundle):
    img = np.random.default_rng(0).integers(0, 256, (*BIG, 3), dtype=np.uint8)
    with veca_deploy.Runtime.open(bundle, 1000, backend="onnxruntime", measure=False, input_size=BIG) as rt:
        assert rt.selection.input_size == BIG
        p = rt.predict(img)
        assert p.preprocess_ms > 0 and p.total_ms == pytest.approx(p.preprocess_ms + p.latency_ms)
        assert not p.late and rt.deadline_misses == 0
        late = rt.predict(img, deadline_ms=1e-6)
        assert late.late and rt.deadline_misses == 1
        on_time = rt.predict(np.zeros((1, 3, 28, 28), np.float32), deadline_ms=60_000)
        assert not on_time.late and on_time.preprocess_ms < p.preprocess_ms
        for bad in (0, -1, float("nan"), "5", True):
            with pytest.raises(UsageError, match="deadline_ms"):
                rt.predict(img, deadline_ms=bad)


def test_overruns_feed_the_adaptive_controller(bundle, monkeypatch):
    seen = []
    with veca_deploy.Runtime.open(bundle, 1000, backend="onnxruntime", measure=False, adaptive=True,
                                  input_size=BIG) as rt:
        real = rt._observe
        monkeypatch.setattr(rt, "_observe", lambda ms, level: (seen.append(ms), real(ms, level)))
        img = np.random.default_rng(0).integers(0, 256, (*BIG, 3), dtype=np.uint8)
        p = rt.predict(img)
        rt.predict(np.zeros((28, 28), np.uint8), deadline_ms=50_000.0)  # a raw image, on time: no floor
        late = rt.predict(np.zeros((28, 28), np.uint8), deadline_ms=1e-6)
    # the controller saw preprocessing + inference (the ladder was budgeted on the total)
    assert seen[0] == pytest.approx(p.total_ms, rel=1e-6)
    assert seen[1] < 50_000 and late.late and seen[2] >= 1e-6


def test_first_run_profiling_reports_progress_and_is_bounded(tiny_bundle, tmp_path, caplog):
    fresh = tmp_path / "fresh"
    shutil.copytree(tiny_bundle, fresh, ignore=shutil.ignore_patterns("profiles"))
    steps = []
    with veca_deploy.Runtime.open(fresh, 1000, backend="onnxruntime", time_limit_s=0.5,
                                  progress=lambda msg="", **k: steps.append(msg)) as rt:
        assert rt.selection.profiled
    prof = load_profile(Bundle.open(fresh))
    timed = [e["timing"] for e in prof.entries.values() if e.get("timing")]
    assert timed and len([s for s in steps if s and s != "profiling"]) >= len(timed)
    # bounded by time, not by the default 50 runs: each candidate's timed runs stop once its share
    # of the limit is spent (the harness's own clock; one run may overshoot it)
    share_ms = 500 / len(timed)
    assert all(t["count"] >= 5 and t["count"] * t["mean_ms"] <= max(share_ms + t["max_ms"], 5 * t["max_ms"])
               for t in timed)
    assert any(t["count"] != 50 for t in timed)
    # without a callback the steps go to the veca_deploy logger
    again = tmp_path / "again"
    shutil.copytree(tiny_bundle, again, ignore=shutil.ignore_patterns("profiles"))
    with caplog.at_level(logging.INFO, logger="veca_deploy"):
        veca_deploy.Runtime.open(again, 1000, backend="onnxruntime", time_limit_s=0.3).close()
    assert any("Runtime.open:" in r.getMessage() for r in caplog.records)
    with pytest.raises(UsageError, match="time_limit_s"):
        shutil.rmtree(again / "profiles")
        veca_deploy.Runtime.open(again, 1000, backend="onnxruntime", time_limit_s=-1)
