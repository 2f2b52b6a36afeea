"""Smoke runs of every benchmark in benchmarks/ (tiny models, one small size, 2 rounds): each must
write its JSON + markdown (+ PNG) with the expected keys and positive numbers. In-process, one
shared tiny reference bundle, so the whole file stays well under a minute on 2 cores."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytest.importorskip("matplotlib")


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _outputs(out: Path, name: str, png: bool = True) -> dict:
    js, md = out / f"{name}.json", out / f"{name}.md"
    assert js.is_file() and md.is_file()
    assert "|---" in md.read_text()
    if png:
        assert (out / f"{name}.png").stat().st_size > 0
    data = json.loads(js.read_text())
    for key in ("machine", "fingerprint", "started", "finished"):
        assert key in data, key
    return data


def _pos(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    import veca_deploy

    out = tmp_path_factory.mktemp("bench") / "bundle"
    veca_deploy.export(None, out=out, cores=[8, 16], formats=["onnx"], precisions=["fp32"], elastic=True)
    return out


def test_scaling_smoke(tmp_path):
    _load("scaling").main(["--smoke", "--cores", "8", "--backends", "onnxruntime", "--out", str(tmp_path)])
    d = _outputs(tmp_path, "scaling")
    assert d["rows"] and all(_pos(r["median_ms"]) and _pos(r["achieved_gflops_s"]) and _pos(r["flops"])
                             for r in d["rows"])
    assert _pos(d["peak"]["gflops"])
    assert any(_pos(e.get("vit_over_veca_tiny_c8")) for e in d["ratios"])


def test_deploy_speedup_smoke(tmp_path, tiny_bundle):
    _load("deploy_speedup").main(["--smoke", "--int8-tiers", "", "--bundle", str(tiny_bundle), "--out", str(tmp_path)])
    d = _outputs(tmp_path, "deploy_speedup")
    assert len(d["rows"]) >= 3  # veca_tiny random at 28 px + the reference bundle's two tiers
    for r in d["rows"]:
        assert _pos(r["ms"]["torch_fp32"]) and _pos(r["ms"]["ort_fp32"])
        assert all(_pos(v) for v in r["speedup_vs_torch"].values())


def test_elastic_tiers_smoke(tmp_path, tiny_bundle):
    _load("elastic_tiers").main(["--smoke", "--bundle", str(tiny_bundle), "--out", str(tmp_path)])
    d = _outputs(tmp_path, "elastic_tiers")
    assert d["points"] and all(_pos(p["ms"]) for p in d["points"])
    assert any(p["elastic"] for p in d["points"]) and d["pareto_front"]
    assert all(0 < p["accuracy"] <= 1 for p in d["points"] if p["accuracy"] is not None)


def test_toolchain_cost_smoke(tmp_path):
    _load("toolchain_cost").main(["--smoke", "--out", str(tmp_path)])
    d = _outputs(tmp_path, "toolchain_cost")
    assert _pos(d["export_wall_s"]) and d["stages_s"]
    fp32 = next(s for s in d["sizes"] if s["format"] == "onnx" and s["precision"] == "fp32")
    assert _pos(fp32["one_tier_bytes"]) and _pos(fp32["elastic_bytes"]) and _pos(fp32["elastic_over_one_tier"])


def test_runtime_overhead_smoke(tmp_path, tiny_bundle):
    _load("runtime_overhead").main(["--smoke", "--bundle", str(tiny_bundle), "--out", str(tmp_path)])
    d = _outputs(tmp_path, "runtime_overhead")
    assert d["rows"]
    for r in d["rows"]:
        assert all(_pos(v) for v in r["median_us"].values())
        assert "predict_overhead_pct" in r and isinstance(r["met"], bool)


def test_profile_ops_smoke(tmp_path):
    _load("profile_ops").main(["--smoke", "--out", str(tmp_path)])
    d = _outputs(tmp_path, "profile_ops")
    assert [r["variant"] for r in d["results"]] == list(_load("profile_ops").VARIANTS)
    for r in d["results"]:
        assert _pos(r["median_ms"]) and _pos(r["profile"]["total_ms"])
        # every profile names real operators, and the FP32 graphs spend time in MatMul-like kernels
        assert r["profile"]["by_op_type"] and all(_pos(e["ms"]) for e in r["profile"]["by_op_type"][:1])
    ort32 = next(r for r in d["results"] if r["variant"] == "ort-fp32")
    assert any("MatMul" in e["name"] for e in ort32["profile"]["by_op_type"])


def test_report_reproduces_the_committed_results(tmp_path):
    """benchmarks/report.py builds the README section from benchmarks/results: every figure it prints
    comes from a JSON there, and it only rewrites the text between its markers."""
    report = _load("report")
    results = BENCH / "results"
    scaling = json.loads((results / "scaling.json").read_text())
    text = report.section(results)
    assert scaling["machine"] in text
    for r in scaling["ratios"]:
        if r["size"] == 1024 and r.get("vit_over_veca_small_c16"):
            assert f"{r['vit_over_veca_small_c16']:.2f}x" in text
    overhead = json.loads((results / "runtime_overhead.json").read_text())
    assert all(f"{r['predict_overhead_us']:+.0f} us" in text for r in overhead["rows"])
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{report.BEGIN}\nstale\n{report.END}\nafter\n")
    report.main(["--results", str(results), "--readme", str(readme)])
    once = readme.read_text()
    assert "stale" not in once and once.startswith("# title\n\nbefore\n") and once.endswith("after\n")
    report.main(["--results", str(results), "--readme", str(readme)])
    assert readme.read_text() == once  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        report.main(["--results", str(results), "--readme", str(readme)])
