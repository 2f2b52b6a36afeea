"""Smoke run of benchmarks/preprocess_cost.py (issue 16: preprocessing that matches training and
costs little): 640x480 -> 28, 5 interleaved calls per path, into tmp_path. Checks the outputs'
structure and that the numbers agree with themselves and with the resize filters' maths (the
numpy antialiased resize is the reference filter; plain bilinear aliases on a 17x downscale). No
timing thresholds: smoke timings on a shared machine mean nothing."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
NAME = "preprocess_cost"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{NAME}", BENCH / f"{NAME}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path, object]:
    out = tmp_path_factory.mktemp("preprocess_bench")
    mod = _load()
    result = mod.main(["--smoke", "--out", str(out), "--no-plot"])
    return result, out, mod


def _pos(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def test_outputs_and_machine(smoke):
    result, out, _ = smoke
    js, md = out / f"{NAME}.json", out / f"{NAME}.md"
    assert js.is_file() and md.is_file()
    data = json.loads(js.read_text())
    assert data["benchmark"] == NAME and data["rows"] == json.loads(json.dumps(result["rows"], default=str))
    cpu = data["fingerprint"]["cpu"]
    assert isinstance(cpu["model"], str) and cpu["model"] and data["machine"].startswith(cpu["model"])
    assert isinstance(data["isa_flags"], list) and all(f in cpu["isa"] for f in data["isa_flags"])
    text = md.read_text()
    assert data["machine"] in text and "|---" in text
    assert _pos(data["peak_rss_mb"]) and data["peak_rss_mb"] >= data["inputs"][-1]["peak_rss_mb_after"] > 0
    assert data["started"] <= data["finished"]


def test_rows_for_each_available_path(smoke):
    result, _, mod = smoke
    expected = {"numpy-bilinear", "numpy-antialias", "preprocess"}
    if _has("PIL"):
        expected.add("pillow-antialias")
    if _has("cv2"):
        expected |= {"opencv-area", "opencv-linear"}
    if _has("onnx", "onnxruntime"):
        expected |= {"onnx-resize-in-graph", "onnx-resize-in-graph-excl"}
    if _has("openvino"):
        expected |= {"openvino-ppp-pillow", "openvino-ppp-linear", "openvino-ppp-pillow-default-hint"}
    assert set(result["paths_available"]) == expected
    assert set(result["paths_available"]) | set(result["skipped"]) == set(mod.PATHS)
    if not _has("cv2"):  # skipped cleanly, with the reason
        assert "opencv-area" in result["skipped"] and "opencv-linear" in result["skipped"]
    rows = result["rows"]
    configs = {(r["input"], r["output"]) for r in rows}
    assert configs == {("640x480", 28)}
    for cfg in configs:
        assert sorted(r["path"] for r in rows if (r["input"], r["output"]) == cfg) == sorted(expected)
    for r in rows:
        assert _pos(r["median_ms"]) and r["p90_ms"] >= r["median_ms"], r
        t = r["timing"]
        assert t["n"] == len(t["samples_ms"]) == result["rounds"] >= 5
        assert t["min_ms"] <= r["median_ms"] <= t["max_ms"]
        assert 0 <= r["mean_abs_err"] <= r["max_abs_err"] and r["max_abs_err_interior"] <= r["max_abs_err"]
        assert r["downscale"] == pytest.approx(480 / 28, abs=0.01)


def _row(result, path):
    return next(r for r in result["rows"] if r["path"] == path)


def test_errors_against_reference(smoke):
    result, _, _ = smoke
    aa, bil = _row(result, "numpy-antialias"), _row(result, "numpy-bilinear")
    assert aa["max_abs_err"] < 0.01  # the same triangle filter as interpolate(antialias=True)
    assert aa["downscale"] >= 8 and bil["mean_abs_err"] > aa["mean_abs_err"] and bil["max_abs_err"] > aa["max_abs_err"]
    pre = _row(result, "preprocess")
    assert pre["max_abs_err"] < 1.0  # antialiased; at most Pillow's uint8 rounding
    if "pillow-antialias" in result["paths_available"]:
        pil = _row(result, "pillow-antialias")
        assert pil["max_abs_err"] < 1.0 and bil["mean_abs_err"] > pil["mean_abs_err"]
    if "onnx-resize-in-graph-excl" in result["paths_available"]:
        assert _row(result, "onnx-resize-in-graph-excl")["max_abs_err"] < 0.01
        assert _row(result, "onnx-resize-in-graph")["max_abs_err_interior"] < 0.01
        assert "onnxruntime_antialias" in result["findings"]
    if "openvino-ppp-pillow" in result["paths_available"]:
        assert _row(result, "openvino-ppp-pillow")["settings"]["execution_precision"] == "f32"
        assert _row(result, "openvino-ppp-pillow")["max_abs_err"] < 0.01
        assert _row(result, "openvino-ppp-linear")["mean_abs_err"] > _row(result, "openvino-ppp-pillow")["mean_abs_err"]


def test_normalisation_round_trip():
    """The un-normalisation the errors are measured through inverts the bundle's normalisation."""
    import numpy as np

    mod = _load()
    x = np.random.default_rng(0).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(mod.unnormalize(mod._normalize(x)), x.transpose(2, 0, 1), atol=1e-3)


def test_missing_opencv_is_skipped(tmp_path, monkeypatch):
    """Without cv2 the OpenCV rows are skipped with the reason, and the rest still runs."""
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    mod = _load()
    result = mod.main(["--smoke", "--out", str(tmp_path), "--no-plot",
                       "--paths", "numpy-bilinear,opencv-area,opencv-linear"])
    assert set(result["skipped"]) == {"opencv-area", "opencv-linear"}
    assert [r["path"] for r in result["rows"]] == ["numpy-bilinear"] and result["paths_available"] == ["numpy-bilinear"]
    assert "opencv-area" in (tmp_path / f"{NAME}.md").read_text()  # the table says what it skipped
