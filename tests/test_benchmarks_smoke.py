"""Smoke runs of every benchmark in benchmarks/ (tiny models, one small size, 2 rounds): each must
write its JSON + markdown (+ PNG) saying which machine it ran on, with rows for everything it was
asked to measure, finite positive numbers, and derived figures (ratios, GFLOP/s, overheads, the
Pareto front) consistent with the raw numbers beside them. No latency thresholds: smoke timings
on a shared CI machine mean nothing. In-process, one shared tiny reference bundle; the toolchain
benchmark runs two real export processes (~1 min, marked slow)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytest.importorskip("matplotlib")


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses (and pickling) look their module up there
    spec.loader.exec_module(mod)
    return mod


def _pos(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _outputs(out: Path, name: str, png: bool = True) -> dict:
    """The JSON of one benchmark run, after checking the markdown table, the plot and the header
    every benchmark writes: which machine (CPU model, cores, ISA, runtime versions), when."""
    js, md = out / f"{name}.json", out / f"{name}.md"
    assert js.is_file() and md.is_file()
    text = md.read_text()
    assert "|---" in text
    if png:
        assert (out / f"{name}.png").stat().st_size > 0
    data = json.loads(js.read_text())
    assert data["benchmark"] == name
    fp = data["fingerprint"]
    cpu = fp["cpu"]
    assert isinstance(cpu["model"], str) and cpu["model"] and cpu["arch"]
    assert _pos(cpu["logical_cores"]) and 0 < cpu["usable_cores"] <= cpu["logical_cores"]
    assert isinstance(cpu["isa"], list) and isinstance(fp["id"], str) and fp["id"]
    assert fp["runtimes"]["onnxruntime"] and fp["runtimes"]["numpy"]
    assert data["machine"].startswith(cpu["model"]) and f"{cpu['usable_cores']} cores" in data["machine"]
    assert data["machine"] in text  # the table says where it was measured
    fmt = "%Y-%m-%d %H:%M:%S"
    assert time.strptime(data["started"], fmt) <= time.strptime(data["finished"], fmt)
    return data


def _timing(t: dict, n: int | None = None) -> None:
    """A cm.summary() record: positive finite numbers, min <= median <= max, n samples."""
    assert all(_pos(t[k]) for k in ("median_ms", "min_ms", "max_ms"))
    assert t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    assert t["n"] == len(t["samples_ms"]) and all(_pos(v) for v in t["samples_ms"])
    assert t["median_ms"] == pytest.approx(statistics.median(t["samples_ms"]), abs=1e-3)
    if n is not None:
        assert t["n"] == n


def _ratio(value, num: float, den: float) -> None:
    """A ratio as the benchmark rounds it (cm.ratio: 3 decimals) from its own numbers."""
    assert _pos(value) and value == pytest.approx(num / den, rel=1e-3, abs=2e-3)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    import veca_deploy

    out = tmp_path_factory.mktemp("bench") / "bundle"
    veca_deploy.export(None, out=out, cores=[8, 16], formats=["onnx"], precisions=["fp32"], elastic=True)
    return out


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_scaling_smoke(tmp_path):
    """Every model x execution path x attention form once; each model's fastest form per path
    enters the ViT / VECA ratio, held against the analytic FLOP ratio; OpenVINO's attention kernels
    recorded (fused into a Subgraph or a Softmax left standing)."""
    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import model_config
    from veca_deploy.runtimes import backend_available, supported_variants

    scaling = _load("scaling")
    backends = ["onnxruntime"] + (["openvino"] if backend_available("openvino") else [])
    scaling.main(["--smoke", "--sizes", "28", "--backends", ",".join(backends), "--out", str(tmp_path)])
    d = _outputs(tmp_path, "scaling")
    assert d["sizes"] == [28] and d["backends"] == backends and len(d["cores"]) >= 2 and not d["failures"]
    want_paths = ["onnxruntime/fp32"] + ([f"openvino/{p}" for p in ("f32", *supported_variants("openvino"))]
                                         if "openvino" in backends else [])
    assert [p["id"] for p in d["paths"]] == want_paths
    veca = [f"{d['model']}_c{c}" for c in d["cores"]]
    backend = {p["id"]: p["backend"] for p in d["paths"]}
    want = {(m, p, s, f) for m in veca + [d["baseline"]] for p in want_paths for s in d["sizes"]
            for f in scaling.forms_for("auto", backend[p])}
    got = [(r["model"], r["path"], r["size"], r["attention"]) for r in d["rows"]]
    assert sorted(got) == sorted(want)  # every model x path x size x form, once
    assert {f for *_, f in got} == set(scaling.FORMS)
    peak = d["peak"]
    assert _pos(peak["start"]["median_gflops"]) and _pos(peak["end"]["median_gflops"])
    assert peak["gflops"] == max(peak["start"]["median_gflops"], peak["end"]["median_gflops"])
    for r in d["rows"]:
        _timing(r, n=r["rounds"] + (1 if r["first_call_kept"] else 0))
        name = d["baseline"] if r["cores"] is None else d["model"]
        cfg = model_config(name)
        assert r["tokens"] == (r["size"] // cfg.patch_size) ** 2
        assert r["flops"] == forward_flops(cfg, r["size"], r["size"], r["cores"])
        assert r["gflops"] == round(r["flops"] / 1e9, 2)
        assert r["achieved_gflops_s"] == pytest.approx(r["flops"] / (r["median_ms"] / 1e3) / 1e9, rel=1e-2, abs=0.01)
        if r["precision"] in ("fp32", "f32"):
            assert r["pct_of_peak"] == pytest.approx(100 * r["achieved_gflops_s"] / peak["gflops"], abs=0.1)
        else:  # the FP32 peak says nothing about a bf16 / f16 path
            assert r["pct_of_peak"] is None and r["runner"]["INFERENCE_PRECISION_HINT"] == r["precision"]
        # the graph holds the form it claims: one attention per layer (ViT) or two (VECA: cores, patches)
        n = cfg.num_layers * (1 if r["cores"] is None else 2)
        op = {"matmul": "Softmax", "mha": "MultiHeadAttention", "attention23": "Attention"}[r["attention"]]
        assert r["attention_ops"] == {op: n}
    assert [(e["size"], e["path"]) for e in d["ratios"]] == [(s, p) for s in d["sizes"] for p in want_paths]
    def forms(e, m):
        return {r["attention"]: r["median_ms"] for r in d["rows"]
                if (r["size"], r["path"], r["model"]) == (e["size"], e["path"], m)}

    for e in d["ratios"]:
        vit = forms(e, d["baseline"])
        assert e["vit_forms_ms"] == vit and e["vit_ms"] == min(vit.values()) and vit[e["vit_attention"]] == e["vit_ms"]
        flops_vit = forward_flops(model_config(d["baseline"]), e["size"], e["size"])
        for v, c in zip(veca, d["cores"]):
            ms = forms(e, v)
            assert e[f"{v}_ms"] == min(ms.values()) and ms[e[f"{v}_attention"]] == e[f"{v}_ms"]
            _ratio(e[f"vit_over_{v}"], e["vit_ms"], e[f"{v}_ms"])
            _ratio(e[f"{v}_over_vit"], e[f"{v}_ms"], e["vit_ms"])
            flop = flops_vit / forward_flops(model_config(d["model"]), e["size"], e["size"], c)
            assert e[f"flop_ratio_{v}"] == pytest.approx(flop, abs=1e-3)
            assert e[f"wall_over_flop_{v}"] == pytest.approx(e["vit_ms"] / e[f"{v}_ms"] / flop, abs=1e-3)
    kernels = d["openvino_attention_kernels"]
    assert set(kernels) == {f"{m}|matmul|{p}" for m in veca + [d["baseline"]] for p in want_paths
                            if backend[p] == "openvino"}
    for key, k in kernels.items():  # each attention either fused into a Subgraph or a Softmax left standing
        n = model_config(d["baseline"] if key.startswith(d["baseline"]) else d["model"]).num_layers
        assert k["attention_subgraphs"] + k["softmax_nodes"] >= n * (1 if key.startswith(d["baseline"]) else 2)
    assert set(d["form_parity"]) == {f"{m}|{f}|{p}" for m, p, s, f in want if f != "matmul"}
    assert all(0 <= err <= scaling.PARITY_ATOL for err in d["form_parity"].values())
    assert "wall / FLOP" in (tmp_path / "scaling.md").read_text()


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_deploy_speedup_smoke(tmp_path, tiny_bundle):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import model_config

    # --product-goal 1000: no path fits eager / 1000, so the product path takes its fallback (select
    # again at the fastest gated candidate's p50) and Runtime.open must serve that same decision
    _load("deploy_speedup").main(["--smoke", "--int8-tiers", "", "--bundle", str(tiny_bundle), "--out", str(tmp_path),
                                  "--product-goal", "1000"])
    d = _outputs(tmp_path, "deploy_speedup")
    assert d["int8_tiers"] == [] and d["reference_bundle"]["path"] == str(tiny_bundle)
    b = Bundle.open(tiny_bundle)
    ref_tiers = sorted({a.cores for a in b.artifacts if not a.elastic})
    want = [(d["model"], s, c) for s in d["sizes"] for c in d["cores"]]
    want += [("veca_tiny (reference)", 28, c) for c in ref_tiers]
    assert [(r["model"], r["size"], r["cores"]) for r in d["rows"]] == want
    for r in d["rows"]:
        # no INT8 asked for: FP32/FP16 only; the reference rows time what the bundle holds (ONNX FP32)
        from veca_deploy.runtimes import supported_variants

        native = ({f"ov_fp32_{v}" for v in supported_variants("openvino", precision="fp32")}  # bf16 where the CPU has it
                  | {f"ov_fp16_{v}" for v in supported_variants("openvino", precision="fp16")}
                  | {f"ort_fp32_{v}" for v in supported_variants("onnxruntime", precision="fp32")})
        variants = {"torch_fp32", "ort_fp32"} | (set() if r["reference"] else {"ov_fp32", "ov_fp16"} | native)
        assert set(r["ms"]) == set(r["timings"]) == variants and r["reference"] == r["model"].endswith("(reference)")
        cfg = model_config("veca_tiny") if not r["reference"] else b.manifest.model["config"]
        assert r["flops"] == forward_flops(cfg, r["size"], r["size"], r["cores"])
        for k, t in r["timings"].items():
            _timing(t)
            assert r["ms"][k] == t["median_ms"]
        assert set(r["speedup_vs_torch"]) == variants - {"torch_fp32"}
        for k, v in r["speedup_vs_torch"].items():
            _ratio(v, r["ms"]["torch_fp32"], r["ms"][k])
        # alone vs interleaved: the flag is exactly the variants beyond 20 % (no threshold on speed)
        for k in variants:
            _ratio(r["interleaved_over_alone"][k], r["ms"][k], r["alone_ms"][k])
        flagged = {f.split(":")[0] for f in r["flags"]}
        assert flagged == {k for k in variants if abs(r["interleaved_over_alone"][k] - 1) > 0.20}
        assert r["baseline_valid"] == ("torch_fp32" not in flagged)
        # GFLOP/s from its own numbers, against the peak of the variant's own backend and precision
        peaks = d["peaks"]["gflops"]
        for k in variants:
            assert r["gflops"][k] == pytest.approx(r["flops"] / r["ms"][k] / 1e6, rel=2e-3, abs=0.1)
            key = d["peaks"]["variant_peak"][k]
            assert r["pct_of_peak"][k] == pytest.approx(100 * r["gflops"][k] / peaks[key], rel=2e-3, abs=0.1)
    # the peaks: every backend/precision the variants need, each the best of two measurements
    need = {d["peaks"]["variant_peak"][k] for r in d["rows"] for k in r["ms"]}
    assert need <= set(d["peaks"]["gflops"]) and {"onnxruntime/int8", "numpy/fp32"} <= set(d["peaks"]["gflops"])
    for k, g in d["peaks"]["gflops"].items():
        start, end = d["peaks"]["start"]["peaks"][k], d["peaks"]["end"]["peaks"][k]
        assert _pos(g) and g == max(start["gflops"], end["gflops"])
        assert start["gflops"] == pytest.approx(2 * 64 * 64 * 256 / start["median_ms"] / 1e6, rel=2e-3, abs=0.1)
    # through the product: the real CLI exported, benched and selected; what Runtime served is that decision
    (p,) = d["product"]
    assert (p["cores"], p["size"]) == (8, 28) and [s["argv"][1] for s in p["steps"].values()] == [
        "export", "bench", "select"] and all(s["rc"] == 0 for s in p["steps"].values())
    assert p["int8_choice"].startswith("INT8 for target host")
    chosen = p["decision"]["chosen"]
    assert p["served"].startswith(f"C={chosen['cores']} ") and f"({chosen['artifact']})" in p["served"]
    assert chosen["latency_ms"] <= p["budget_ms"] and p["decision"]["percentile"] == 50
    assert p["budget_note"].startswith("no path fit eager / 1000") and p["met"] is False
    assert {q["key"] for q in p["profile"]} >= {f"{chosen['artifact']}@c8"}
    _ratio(p["speedup_vs_torch"], p["ms"]["torch_fp32"], p["ms"]["selected"])
    asked = (min(q["p50_ms"] for q in p["profile"] if q["p50_ms"]) * 1.001 if p.get("budget_note")
             else p["eager_alone_before_select_ms"])  # eager / goal, else the fastest gated path's own p50
    assert p["goal"] == 1000.0 and p["budget_ms"] == pytest.approx(asked, rel=1e-3, abs=1e-3)  # rounded up
    assert p["met"] == (p["speedup_vs_torch"] >= p["goal"])


def test_deploy_speedup_target_rows_follow_the_cpu_class():
    """The speed target row comes from the same ISA classifier as ``--target``: AMX 5x, AVX-512
    VNNI/BF16 2.5x, AVX2 1.5x (and the x86 classes between them the AVX2 floor), none on Arm; the
    peak row reads the inner column that runs what select chose."""
    from veca_deploy.runtimes.fingerprint import cpu_info

    ds = _load("deploy_speedup")
    flags = {"zen3": "avx avx2 fma", "zen4": "avx2 avx512f avx512_vnni avx512_bf16",
             "spr": "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile", "alder": "avx2 avx_vnni",
             "skx": "avx2 avx512f"}
    got = {k: ds.SPEED_TARGETS.get(ds.isa_class({"cpu": cpu_info(f"flags\t: {v}\n") | {"arch": "x86_64"}}))
           for k, v in flags.items()}
    assert got == {"zen3": 1.5, "zen4": 2.5, "spr": 5.0, "alder": 1.5, "skx": 1.5}
    arm = {"cpu": cpu_info("Features\t: fp asimd asimdhp asimddp\n") | {"arch": "aarch64"}}
    assert ds.isa_class(arm) == "arm" and ds.SPEED_TARGETS.get("arm") is None
    have = {"ov_int8": 1, "ov_int8_bf16": 1, "ov_fp32": 1, "ort_int8": 1, "ort_int8_u8s8": 1}
    assert ds.inner_variant({"backend": "openvino", "precision": "int8", "execution": "bf16"}, None, have) == "ov_int8_bf16"
    assert ds.inner_variant({"backend": "openvino", "precision": "int8", "execution": None}, None, have) == "ov_int8"
    assert ds.inner_variant({"backend": "onnxruntime", "precision": "int8"}, "INT8 ... ONNX U8S8 [--target]",
                            have) == "ort_int8_u8s8"
    assert ds.inner_variant({"backend": "onnxruntime", "precision": "int8"}, "ONNX S8S8", have) == "ort_int8"
    assert ds.inner_variant({"backend": "onnxruntime", "precision": "fp32", "execution": "bf16"}, None,
                            {**have, "ort_fp32_bf16": 1}) == "ort_fp32_bf16"
    assert ds.inner_variant({"backend": "openvino", "precision": "fp32", "execution": "f16"}, None, have) is None
    assert ds.inner_variant(None, None, have) is None


def test_gemm_peak_models_compute_the_matmul():
    """The peak models are the GEMM they claim: FP32 exact, U8S8 QDQ within quantization error,
    and ONNX Runtime really runs the QDQ one in integer kernels."""
    import tempfile

    import onnx
    import onnxruntime as ort

    sys.path.insert(0, str(BENCH))
    from _peak import gemm_models

    with tempfile.TemporaryDirectory() as tmp:
        files = gemm_models(Path(tmp), 32, 64, 48)
        w = onnx.numpy_helper.to_array(onnx.load(str(files["fp32"])).graph.initializer[0])
        x = np.random.default_rng(0).uniform(-1, 1, (32, 64)).astype(np.float32)
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        y32 = ort.InferenceSession(str(files["fp32"]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        y8 = ort.InferenceSession(str(files["int8"]), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.allclose(y32, x @ w, atol=1e-4)
        cos = float((y8 * y32).sum() / np.linalg.norm(y8) / np.linalg.norm(y32))
        assert cos > 0.99
        ops = {n.op_type for n in onnx.load(str(Path(tmp) / "opt.onnx")).graph.node}
        assert ops & {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger"}, ops


def test_selection_quality_smoke(tmp_path, tiny_bundle):
    """The real CLI (eval, bench, select --json) on a copy of the reference bundle, then every fitting
    candidate re-timed interleaved: the chosen candidate, the tie set by the selector's own rule and
    chosen / fastest-tied, consistent with the numbers beside them (no threshold on speed)."""
    import shutil

    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.selector.candidates import candidates, resolve_backends

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))  # eval and bench write into it
    out = tmp_path / "out"
    _load("selection_quality").main(["--smoke", "--eval", "always", "--bundle", str(bundle), "--out", str(out)])
    d = _outputs(out, "selection_quality", png=False)
    b = Bundle.open(bundle)
    keys = {c.key for c in candidates(b, resolve_backends("auto", b))}
    ev = d["evaluation"]
    assert ev["ran"] and ev["samples"] == [200] and ev["per_image_records"] == ev["candidates"] == len(keys)
    assert [c["argv"][1] for c in d["commands"]] == ["eval", "bench"] + ["select"] * len(d["budgets"])
    assert [x["label"] for x in d["budgets"]] == ["5", "tight"]
    judged = [x for x in d["budgets"] if x["select_rc"] == 0]
    assert d["budgets"][-1] in judged  # the tight budget is taken from the profile: something fits it
    for x in d["budgets"]:
        assert x["select_rc"] in (0, 8) and (x["select_rc"] == 8) == ("error" in x)
    timings = d["retime"]["timings"]
    for x in judged:
        fitting = {r["key"] for r in x["rows"]}
        assert len(fitting) == x["fitting"] > 0 and fitting <= keys and fitting <= set(timings)
        assert x["chosen"] in fitting and x["chosen_in_tie_set"] and x["agrees_with_decision"]
        assert x["leader"] in x["tie_set"] and set(x["tie_set"]) <= fitting
        assert x["decision"]["leader"] == x["leader"] and sorted(x["decision"]["tied"]) == sorted(x["tie_set"])
        ms = {r["key"]: r["retimed_ms"] for r in x["rows"]}
        for k, v in ms.items():
            _timing(timings[k], n=d["retime"]["rounds"])
            assert v == timings[k]["median_ms"]
        assert x["chosen_ms"] == ms[x["chosen"]]
        assert x["fastest_in_tie_set_ms"] == ms[x["fastest_in_tie_set"]] == min(ms[k] for k in x["tie_set"])
        assert x["fastest_fitting_ms"] == min(ms.values())
        _ratio(x["ratio"], x["chosen_ms"], x["fastest_in_tie_set_ms"])
        assert x["ratio"] >= 1 - 1e-3 and x["met"] == (x["ratio"] <= d["target_ratio"] == 1.25)
        assert [r["key"] for r in x["rows"] if r["tied"]] == x["tie_set"]
        assert all((r["comparison"] is None) == r["leader"] for r in x["rows"])
        assert all(r["comparison"] == "paired" for r in x["rows"] if not r["leader"])  # same 200 images
    assert d["met"] == all(x["met"] for x in judged)


def test_elastic_tiers_smoke(tmp_path, tiny_bundle):
    from veca_deploy.bundle.reader import Bundle

    _load("elastic_tiers").main(["--smoke", "--bundle", str(tiny_bundle), "--out", str(tmp_path)])
    d = _outputs(tmp_path, "elastic_tiers")
    b = Bundle.open(tiny_bundle)  # the manifest as the benchmark's eval left it
    assert d["evaluation"]["samples"] == 200 and d["evaluation"]["dataset"] == "fashion-mnist:test"
    assert sorted((p["artifact"], p["cores"]) for p in d["points"]) == sorted(
        (a.id, c) for a in b.artifacts for c in a.tiers)  # every artifact at every tier, the elastic one too
    for p in d["points"]:
        _timing(p)
        a = b.get(p["artifact"])
        assert p["ms"] == p["median_ms"] and p["elastic"] == a.elastic and p["precision"] == a.precision
        assert p["bytes"] == a.bytes + sum(f.bytes for f in a.files)
        assert p["accuracy"] == b.accuracy_of(a, p["cores"]) and 0.5 < p["accuracy"] <= 1  # trained: chance is 0.1
    # the Pareto front is exactly the undominated points
    pts = d["points"]

    def dominated(p):
        return any(q is not p and q["ms"] <= p["ms"] and q["accuracy"] >= p["accuracy"]
                   and (q["ms"] < p["ms"] or q["accuracy"] > p["accuracy"]) for q in pts)

    assert [p["pareto"] for p in pts] == [not dominated(p) for p in pts] and any(p["pareto"] for p in pts)
    front = sorted(((p["artifact"], p["cores"]) for p in pts if p["pareto"]), key=lambda k: k)
    assert sorted((f["artifact"], f["cores"]) for f in d["pareto_front"]) == front
    assert [f["ms"] for f in d["pareto_front"]] == sorted(f["ms"] for f in d["pareto_front"])


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
@pytest.mark.slow
def test_toolchain_cost_smoke(tmp_path):
    """Two fresh ``veca-deploy export`` processes (FP32+FP16 at 2 tiers + elastic, INT8 at one
    tier with 300 calibration images): wall time, peak RSS and stages per run, and the overhead
    ratio against the bare forward passes the run needed."""
    _load("toolchain_cost").main(["--smoke", "--out", str(tmp_path)])
    d = _outputs(tmp_path, "toolchain_cost")
    assert [r["config"] for r in d["runs"]] == ["fp32+fp16", "int8"]
    for r in d["runs"]:
        assert r["rc"] == 0 and r["error"] is None, r["stderr_tail"]
        assert _pos(r["wall_s"]) and _pos(r["peak_rss_gb"]) and _pos(r["bundle_bytes"]) and r["size"] == 28
        st = r["stages"]
        assert st and all(math.isfinite(v["seconds"]) and v["seconds"] >= 0 for v in st.values())
        assert sum(v["seconds"] for v in st.values()) <= r["wall_s"] + 0.1 * len(st)  # inside the process's life
        assert all(v["peak_rss_gb"] <= r["peak_rss_gb"] + 1e-3 for v in st.values())
        assert st["PyTorch reference (golden)"]["seconds"] > 0
        tiers = r["argv"][r["argv"].index("--cores") + 1].split(",")
        assert sorted(r["forward_ms"]) == sorted(tiers) and all(_pos(v) for v in r["forward_ms"].values())
        for stage, per in r["passes"].items():
            assert set(per) <= set(tiers) and all(_pos(n) for n in per.values()), stage
        assert ("calibration" in r["passes"]) == (r["calib_count"] is not None)
        if r["calib_count"]:
            assert r["passes"]["calibration"] == {c: r["calib_count"] for c in tiers}
        bare = sum(n * r["forward_ms"][c] for per in r["passes"].values() for c, n in per.items()) / 1e3
        assert r["bare_forward_s"] == pytest.approx(bare, rel=0.02, abs=0.1)
        assert r["overhead_ratio"] == pytest.approx(r["wall_s"] / r["bare_forward_s"], rel=0.03)


def test_runtime_overhead_smoke(tmp_path, tiny_bundle):
    from veca_deploy.bundle.reader import Bundle

    _load("runtime_overhead").main(["--smoke", "--bundle", str(tiny_bundle), "--out", str(tmp_path)])
    d = _outputs(tmp_path, "runtime_overhead")
    b = Bundle.open(tiny_bundle)
    assert [r["backend"] for r in d["rows"]] == ["onnxruntime"]  # what --smoke asks for
    for r in d["rows"]:
        assert r["tier"]["cores"] == min(a.cores for a in b.artifacts) and r["artifact"] == r["tier"]["artifact"]
        assert b.get(r["artifact"]).format == "onnx"
        keys = {"bare", "runner", "predict", "predict_uint8"}
        assert set(r["timings"]) == set(r["median_us"]) == keys
        for k in keys:
            _timing(r["timings"][k], n=20)
            assert r["median_us"][k] == pytest.approx(r["timings"][k]["median_ms"] * 1e3, abs=0.1)
        us = r["median_us"]
        assert r["predict_overhead_us"] == pytest.approx(us["predict"] - us["bare"], abs=0.1)
        assert r["runner_overhead_us"] == pytest.approx(us["runner"] - us["bare"], abs=0.1)
        assert r["predict_overhead_pct"] == pytest.approx(100 * (us["predict"] / us["bare"] - 1), abs=0.05)
        assert math.isfinite(r["predict_in_call_us"])
        assert r["met"] == (r["predict_overhead_pct"] <= 5.0 or r["predict_overhead_us"] <= 100.0)
    assert d["met"] == all(r["met"] for r in d["rows"])


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores (two pinned device classes)")
def test_fleet_slicing_smoke(tmp_path, tiny_bundle):
    """Two pinned device classes, two signed slices: each slice validates with the public key,
    serves its device's choice without profiling, and its byte count is the files it holds."""
    from veca_deploy.bundle.reader import Bundle

    d = _load("fleet_slicing").main(["--smoke", "--bundle", str(tiny_bundle), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "fleet_slicing-smoke.json").read_text())["devices"] == d["devices"]
    assert "|---" in (tmp_path / "fleet_slicing-smoke.md").read_text()
    full = Bundle.open(tiny_bundle)
    def size(a):
        return a.bytes + sum(f.bytes for f in a.files)

    total = sum(size(a) for a in full.artifacts)
    assert len(d["devices"]) == 2 and {x["usable_cores"] for x in d["devices"]} == {1, 2}
    for dev in d["devices"]:
        assert dev["validated"] and dev["signed_by"] and dev["served_same_choice"] and dev["served_profiled"] is False
        assert dev["chosen"].split("@")[0] in dev["artifacts"] and dev["artifacts_total"] == len(full.artifacts)
        assert 0 < dev["bytes_after"] < dev["bytes_before"]
        assert dev["fraction"] == pytest.approx(dev["bytes_after"] / dev["bytes_before"], abs=1e-3)
        shipped = sum(size(full.get(aid)) for aid in dev["artifacts"])
        assert shipped <= dev["bytes_after"] and dev["bytes_before"] >= total
    assert {c["device"] for c in d["fleet"]} == {x["device"] for x in d["devices"]}
    assert all(c["rc"] == 0 and c["peak_rss_mb"] > 0 for c in d["commands"])


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_profile_ops_smoke(tmp_path):
    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import model_config

    mod = _load("profile_ops")
    mod.main(["--smoke", "--out", str(tmp_path)])
    d = _outputs(tmp_path, "profile_ops")
    # ov-bf16 runs only where the CPU executes bf16 natively (AVX512-BF16 / AMX), else it is skipped
    expected = [v for v in mod.VARIANTS if v not in mod.BF16_VARIANTS or mod.ov_bf16_native()]
    assert [r["variant"] for r in d["results"]] == expected == d["variants"]
    assert d["flops"] == forward_flops(model_config(d["model"]), d["size"], d["size"], d["cores"])
    base = {}
    for r in d["results"]:
        assert r["backend"] == ("onnxruntime" if r["variant"].startswith("ort-") else "openvino")
        _timing(r)
        assert r["gflops_s"] == pytest.approx(d["flops"] / (r["median_ms"] / 1e3) / 1e9, rel=1e-2, abs=0.01)
        if r["variant"] in ("ort-fp32", "ov-f32"):
            base[r["backend"]] = r["median_ms"]
        prof = r["profile"]
        assert _pos(prof["total_ms"])
        ops = prof["by_op_type"]
        assert ops and all(_pos(e["ms"]) and e["pct"] >= 0 for e in ops)
        assert [e["ms"] for e in ops] == sorted((e["ms"] for e in ops), reverse=True)
        assert sum(e["ms"] for e in ops) <= prof["total_ms"] + 0.001 * len(ops)  # top 20 of the total
        assert sum(e["pct"] for e in ops) <= 100.0 + 0.1 * len(ops)
    for r in d["results"]:
        _ratio(r["speedup_vs_fp32_same_backend"], base[r["backend"]], r["median_ms"])
    names = {r["variant"]: " ".join(e["name"] for e in r["profile"]["by_op_type"]) for r in d["results"]}
    assert "MatMul" in names["ort-fp32"] and "QuantizeLinear" not in names["ort-fp32"]
    assert "QuantizeLinear" in names["ort-int8-s8s8"] and "QLinearMatMul" in names["ort-int8-u8s8"]
    # OpenVINO reports the kernel that really ran: integer matrix products only in the NNCF graph
    int_fc = {r["variant"]: [e["name"] for e in r["profile"]["by_op_type"] if e["name"].startswith("FullyConnected")
                             and any(t in e["name"].lower() for t in ("i8]", "u8]"))] for r in d["results"]}
    assert int_fc["ov-int8"] and not int_fc["ov-f32"]


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
    throughput = json.loads((results / "throughput.json").read_text())
    assert "latency vs concurrency" in text and throughput["machine"] in text
    assert all(f"{r['speedup_vs_sync']}x ({r['best_streams']} in flight" in text for r in throughput["rows"]
               if r.get("input", "tensor") == "tensor")
    # another machine's results (benchmarks/results/amx): the issue-15 rows, each naming its machine
    amx = json.loads((results / "amx" / "deploy_speedup.json").read_text())
    for p in amx.get("product", []):
        if p.get("ms"):
            assert f"{p['speedup_vs_torch']}x ({p['served']}" in text
    peak = amx["target_fastest_pct_of_peak_c16_512"]
    assert f"{peak['pct_of_peak']}% ({peak['fastest']}" in text
    amx_scaling = json.loads((results / "amx" / "scaling.json").read_text())
    assert all(f"{r['wall_over_flop_veca_small_c16']:.2f}x" in text for r in amx_scaling["ratios"]
               if r["size"] == 1024 and r.get("wall_over_flop_veca_small_c16") is not None)
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
