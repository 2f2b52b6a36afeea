"""The camera-stream example (issue 19) and queueing-aware serving: below the capacity the workload
selection reports, the example drops no frame; above it the selection names the limit and, run
anyway, frames are dropped and counted; ``submit`` reports queueing delay, applies ``deadline_ms`` to
submit-to-result time, and adaptive mode steps down on queueing delay alone (each inference still
fits the budget). Counting assertions only: no timing thresholds (shared cores)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import veca_deploy
from veca_deploy.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "camera_streams.py"


@pytest.fixture(scope="module")
def bundle(reference_bundle, tmp_path_factory) -> Path:
    """A private copy: the example saves the concurrency profile it measures into the bundle."""
    root = tmp_path_factory.mktemp("camera") / "b"
    shutil.copytree(reference_bundle, root)
    return root


def _run(bundle: Path, tmp_path: Path, *args: str) -> tuple[int, dict | None, str]:
    out = tmp_path / "report.json"
    p = subprocess.run([sys.executable, str(EXAMPLE), str(bundle), "--backend", "onnxruntime", "--frame-size",
                        "96x128", "--json", str(out), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, (json.loads(out.read_text()) if out.is_file() else None), p.stdout + p.stderr


def test_below_capacity_no_frame_is_dropped(bundle, tmp_path):
    rc, rep, text = _run(bundle, tmp_path, "--streams", "2", "--fps", "8", "--seconds", "3", "--budget-ms", "500",
                         "--queue", "4")
    assert rc == 0, text
    capacity = rep["workload"]["chosen"]["throughput_ips"]
    assert rep["required_ips"] == 16 and capacity > 4 * rep["required_ips"]  # well below what select reported
    t = rep["total"]
    assert t["offered"] >= 2 * 8 * 3 - 2 and t["dropped"] == 0 and t["errors"] == 0 and t["unfinished"] == 0
    assert t["served"] == t["offered"] == sum(s["served"] for s in rep["per_stream"])
    assert [s["stream"] for s in rep["per_stream"]] == [0, 1]
    assert rep["tier_timeline"] and sum(seg["frames"] for seg in rep["tier_timeline"]) == t["served"]
    chosen = rep["workload"]["chosen"]
    assert rep["tier_timeline"][0]["tier"].startswith(f"C={chosen['cores']} {chosen['precision']}")
    assert rep["concurrency"] == chosen["streams"] and "frames offered" in text


def test_above_capacity_the_limit_is_named_and_frames_drop(bundle, tmp_path):
    rc, rep, text = _run(bundle, tmp_path, "--streams", "4", "--fps", "100000", "--seconds", "1")
    assert rc == 8 and rep is None
    assert "throughput limit" in text and "100000 fps" in text and "img/s" in text
    rc, rep, text = _run(bundle, tmp_path, "--streams", "4", "--fps", "100000", "--seconds", "1", "--ignore-capacity")
    assert rc == 0, text
    t = rep["total"]
    assert rep["workload"]["limit"] == "throughput"
    assert t["dropped"] > 0 and t["served"] > 0 and t["errors"] == 0
    assert t["offered"] == t["served"] + t["dropped"] + t["unfinished"]
    assert all(s["dropped"] > 0 for s in rep["per_stream"])


def test_example_rejects_bad_arguments(bundle, tmp_path):
    for args in (["--fps", "0"], ["--frame-size", "10x"], ["--streams", "-1"]):
        p = subprocess.run([sys.executable, str(EXAMPLE), str(bundle), *args], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "error:" in p.stderr


# ---------------------------------------------------------------------------- queueing in the Runtime
def test_submit_reports_queueing_and_applies_deadlines(tiny_bundle):
    img = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    with veca_deploy.Runtime.open(tiny_bundle, None, backend="onnxruntime", tiers=[8], streams=1) as rt:
        with pytest.raises(UsageError):
            rt.submit(img, deadline_ms=0)
        futs = [rt.submit(img) for _ in range(40)]
        preds = [f.result(timeout=120) for f in futs]
        assert all(p.queue_ms >= 0 for p in preds)
        # one stream: the last of a burst waited for the 39 ahead of it, the first for none of them
        assert preds[-1].queue_ms > preds[0].queue_ms
        assert preds[-1].queue_ms >= sum(p.latency_ms for p in preds[:-1]) * 0.5
        assert all(abs(p.total_ms - (p.preprocess_ms + p.queue_ms + p.latency_ms)) < 1e-9 for p in preds)
        assert rt.deadline_misses == 0 and not any(p.late for p in preds)
        late = [rt.submit(img, deadline_ms=1e-6) for _ in range(5)]
        assert all(f.result(timeout=120).late for f in late) and rt.deadline_misses == 5
        assert rt.predict(img).queue_ms == 0.0


def test_adaptive_steps_down_on_queueing_delay_alone(tiny_bundle, tmp_path):
    """A burst far above what one stream serves: each inference fits the budget, the queue does not."""
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    budget = 40.0
    img = np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)
    with veca_deploy.Runtime.open(root, budget, backend="onnxruntime", precisions=["fp32"], adaptive=True,
                                  streams=1, adaptive_options={"warmup": 2}) as rt:
        top = rt.tier
        preds = [f.result(timeout=300) for f in [rt.submit(img) for _ in range(300)]]
        inference = float(np.median([p.latency_ms for p in preds]))
        assert inference < budget, "each inference alone must fit for this test to mean anything"
        assert max(p.queue_ms for p in preds) > budget
        assert rt.switches, "queueing delay over the budget must step the tier down"
        assert rt.switches[0][1] == 1 and rt.tier != top
