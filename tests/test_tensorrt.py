"""TensorRT path: the static checker, fingerprints and source selection run everywhere; engine
build and inference run only where TensorRT, cuda-python and an NVIDIA GPU are present (Jetson)."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the static check needs the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from veca_deploy.bundle.io import file_entry, write_manifest  # noqa: E402
from veca_deploy.bundle.manifest import Artifact, Manifest  # noqa: E402
from veca_deploy.errors import BackendUnavailable, BundleError, UsageError  # noqa: E402
from veca_deploy.convert.trt_check import (check_bundle_for_tensorrt, check_onnx_for_tensorrt,  # noqa: E402
                                          op_supported)
from veca_deploy.runtimes.jetson import fingerprint_matches, gpu_slug, tegra_release  # noqa: E402

H = W = 28
TIERS = [8, 16, 24, 32]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model():
    torch = pytest.importorskip("torch", reason="exporting the test model needs torch")
    from veca_deploy import create_model

    torch.manual_seed(0)
    return create_model("veca_tiny", num_classes=10).eval()


@pytest.fixture(scope="module")
def onnx_files(model, tmp_path_factory) -> dict[str, Path]:
    from veca_deploy.export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("onnx")
    fixed = export_onnx(model, d / "fixed.onnx", height=H, width=W, cores=8)
    elastic = export_onnx(model, d / "elastic.onnx", height=H, width=W, elastic_tiers=TIERS)
    return {"fixed": fixed, "elastic": elastic}


def make_bundle(root: Path, entries: list[dict]) -> Path:
    """A minimal bundle: each entry is {src, precision, cores, elastic?, tiers?}."""
    root.mkdir(parents=True, exist_ok=True)
    arts = []
    for e in entries:
        rel = f"onnx/{Path(e['src']).stem}-{e['precision']}.onnx"
        (root / rel).parent.mkdir(exist_ok=True)
        shutil.copyfile(e["src"], root / rel)
        fe = file_entry(root, rel)
        arts.append(Artifact(format="onnx", precision=e["precision"], cores=e["cores"], height=H, width=W,
                             path=rel, sha256=fe.sha256, bytes=fe.bytes, elastic=e.get("elastic", False),
                             tiers=e.get("tiers", []), outputs=["global", "patches", "logits"]))
    write_manifest(root, Manifest(model={"name": "veca_tiny"}, preprocess={"mean": [0.5] * 3, "std": [0.5] * 3},
                                  artifacts=arts))
    return root


def tiny_graph(nodes, inputs, outputs, initializers=(), opset=17, name="g") -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def qdq_graph(zp_dtype=TensorProto.INT8, zp_value=0, q_consumer="DequantizeLinear") -> onnx.ModelProto:
    """images -> Q -> DQ -> Relu, with the zero point dtype/value under test."""
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "scale")
    np_zp = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[zp_dtype]
    zp = numpy_helper.from_array(np.array(zp_value, np_zp), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["images", "scale", "zp"], ["q"], name="q0")]
    if q_consumer == "DequantizeLinear":
        nodes += [helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"], name="dq0"),
                  helper.make_node("Relu", ["dq"], ["y"], name="relu")]
    else:
        nodes += [helper.make_node(q_consumer, ["q"], ["y8"], name="consumer"),
                  helper.make_node("DequantizeLinear", ["y8", "scale", "zp"], ["y"], name="dq0")]
    return tiny_graph(nodes, [f32("images", ["batch", 3, 4, 4])], [f32("y", ["batch", 3, 4, 4])], [scale, zp])


# ---------------------------------------------------------------------------- static check: real graphs
def test_check_passes_on_exported_fixed_graph(onnx_files):
    rep = check_onnx_for_tensorrt(onnx_files["fixed"])
    assert rep.ok, rep.problems
    assert rep.dynamic_dims == {"images": {0: "batch"}}
    assert rep.unsupported_nodes == []
    assert rep.op_counts.get("LayerNormalization", 0) > 0 and rep.op_counts.get("MatMul", 0) > 0
    assert rep.opset == 17 and rep.warnings == []


def test_check_passes_on_exported_elastic_graph_and_reports_profiled_dims(onnx_files):
    rep = check_onnx_for_tensorrt(onnx_files["elastic"])
    assert rep.ok, rep.problems
    assert rep.dynamic_dims == {"images": {0: "batch"}, "core_select": {0: "cores"}}
    assert "core_select[0]" in rep.summary()


def test_check_bundle_reads_every_onnx_artifact_and_verifies_hashes(onnx_files, tmp_path):
    b = make_bundle(tmp_path / "b", [{"src": onnx_files["fixed"], "precision": "fp32", "cores": 8},
                                     {"src": onnx_files["elastic"], "precision": "fp32", "cores": 32,
                                      "elastic": True, "tiers": TIERS}])
    res = check_bundle_for_tensorrt(b)
    assert [aid for aid, _ in res] == ["onnx-fp32-c8-28x28", "onnx-fp32-elastic-28x28"]
    assert all(rep.ok for _, rep in res)
    with open(b / "onnx/fixed-fp32.onnx", "ab") as f:  # tamper: the hash check must refuse it
        f.write(b"\0")
    with pytest.raises(BundleError, match="fixed-fp32.onnx"):
        check_bundle_for_tensorrt(b)


# ---------------------------------------------------------------------------- static check: failures
def test_check_fails_on_operator_tensorrt_cannot_parse(tmp_path):
    nodes = [helper.make_node("Det", ["x"], ["d"], name="det"),
             helper.make_node("Frobnicate", ["x"], ["y"], name="custom", domain="com.example")]
    m = tiny_graph(nodes, [f32("images", ["batch", 3, 3]), ], [f32("d", ["batch"]), f32("y", ["batch", 3, 3])])
    m.graph.node[0].input[0] = "images"
    m.graph.node[1].input[0] = "images"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    rep = check_onnx_for_tensorrt(save(m, tmp_path / "ops.onnx"))
    assert not rep.ok
    text = " | ".join(rep.problems)
    assert "Det is not supported by TensorRT's ONNX parser" in text
    assert "custom-domain op com.example::Frobnicate" in text and "plugin" in text
    assert {n.op_type for n in rep.unsupported_nodes} == {"Det", "Frobnicate"}


def test_check_fails_on_string_normalizer_and_string_io(tmp_path):
    node = helper.make_node("StringNormalizer", ["text"], ["norm"], name="sn", case_change_action="LOWER")
    m = tiny_graph([node], [helper.make_tensor_value_info("text", TensorProto.STRING, [4])],
                   [helper.make_tensor_value_info("norm", TensorProto.STRING, [4])])
    rep = check_onnx_for_tensorrt(save(m, tmp_path / "sn.onnx"))
    assert not rep.ok
    assert any("StringNormalizer is not supported" in p for p in rep.problems)
    assert any("graph input 'text' is STRING" in p for p in rep.problems)


def test_check_fails_on_int64_graph_input(tmp_path):
    nodes = [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT, name="cast")]
    m = tiny_graph(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])], [f32("f", [1, 16])])
    rep = check_onnx_for_tensorrt(save(m, tmp_path / "i64.onnx"))
    assert not rep.ok
    assert rep.problems == [rep.problems[0]] and "graph input 'ids' is INT64" in rep.problems[0]


def test_check_fails_on_dynamic_spatial_dim(tmp_path):
    m = tiny_graph([helper.make_node("Relu", ["images"], ["y"])], [f32("images", ["batch", 3, "height", 28])],
                   [f32("y", ["batch", 3, "height", 28])])
    rep = check_onnx_for_tensorrt(save(m, tmp_path / "dyn.onnx"))
    assert not rep.ok and "dim 2 ('height') is dynamic" in rep.problems[0]
    assert rep.dynamic_dims == {"images": {0: "batch"}}


def test_check_fails_on_float64_initializer_that_reaches_the_engine(tmp_path):
    w = numpy_helper.from_array(np.ones((3,), np.float64), "w64")
    unused = numpy_helper.from_array(np.ones((3,), np.float64), "unused64")
    m = tiny_graph([helper.make_node("Add", ["images", "w64"], ["y"])], [f32("images", ["batch", 3])],
                   [f32("y", ["batch", 3])], [w, unused])
    rep = check_onnx_for_tensorrt(save(m, tmp_path / "f64.onnx"))
    assert not rep.ok
    assert len(rep.problems) == 1 and "initializer 'w64' is DOUBLE" in rep.problems[0]  # unused one is ignored


def test_qdq_signed_zero_point_zero_passes(tmp_path):
    rep = check_onnx_for_tensorrt(save(qdq_graph(), tmp_path / "ok.onnx"))
    assert rep.ok, rep.problems


def test_qdq_uint8_zero_point_fails_with_reason(tmp_path):
    rep = check_onnx_for_tensorrt(save(qdq_graph(TensorProto.UINT8, 128), tmp_path / "u8.onnx"))
    assert not rep.ok
    assert any("zero point is UINT8" in p and "signed INT8" in p for p in rep.problems)


def test_qdq_nonzero_int8_zero_point_and_bad_placement_fail(tmp_path):
    rep = check_onnx_for_tensorrt(save(qdq_graph(zp_value=3), tmp_path / "zp3.onnx"))
    assert any("zero point must be 0" in p for p in rep.problems)
    rep = check_onnx_for_tensorrt(save(qdq_graph(q_consumer="Identity"), tmp_path / "qid.onnx"))
    assert any("QuantizeLinear 'q0' feeds Identity" in p for p in rep.problems)
    assert any("DequantizeLinear 'dq0' reads Identity" in p for p in rep.problems)


def test_qdq_scale_must_be_constant(tmp_path):
    m = qdq_graph()
    m.graph.input.append(f32("runtime_scale", []))
    m.graph.node[0].input[1] = "runtime_scale"
    rep = check_onnx_for_tensorrt(save(m, tmp_path / "scale.onnx"))
    assert any("QuantizeLinear 'q0': scale must be a constant initializer" in p for p in rep.problems)


def test_operator_table_knows_later_tensorrt_releases():
    assert op_supported("LayerNormalization") == (True, "")
    ok, why = op_supported("Attention", trt_version="10.3")
    assert not ok and "10.14" in why
    assert op_supported("Attention", trt_version="10.14.1")[0]
    assert not op_supported("Unique")[0] and "not in" in op_supported("NoSuchOp")[1]


def test_unreadable_onnx_is_a_bundle_error(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(BundleError, match="cannot read ONNX"):
        check_onnx_for_tensorrt(p)


# ---------------------------------------------------------------------------- CLI
def test_check_trt_cli_passes_and_fails_with_one_line(onnx_files, tmp_path, capsys):
    from veca_deploy.cli import main

    good = make_bundle(tmp_path / "good", [{"src": onnx_files["fixed"], "precision": "fp32", "cores": 8}])
    assert main(["check-trt", str(good)]) == 0
    assert "onnx-fp32-c8-28x28" in capsys.readouterr().out
    assert main(["check-trt", str(good), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["artifact"] == "onnx-fp32-c8-28x28" and rows[0]["ok"] is True

    bad_onnx = save(qdq_graph(TensorProto.UINT8, 128), tmp_path / "u8.onnx")
    bad = make_bundle(tmp_path / "bad", [{"src": bad_onnx, "precision": "int8", "cores": 8}])
    assert main(["check-trt", str(bad)]) == 4  # ExportError
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would not build with TensorRT" in err[0] and "UINT8" in err[0]
    assert main(["check-trt", str(tmp_path / "missing")]) == 5  # BundleError, no traceback


def test_build_trt_cli_without_tensorrt_is_a_typed_error(onnx_files, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the missing-backend path cannot be exercised")
    except (ImportError, OSError):
        pass
    from veca_deploy.cli import main

    b = make_bundle(tmp_path / "b", [{"src": onnx_files["fixed"], "precision": "fp16", "cores": 8}])
    assert main(["build-trt", str(b), "-q"]) == 7
    err = capsys.readouterr().err
    assert "pip install 'veca-deploy[tensorrt]' or use the TensorRT that JetPack ships" in err
    assert "Traceback" not in err


def test_runner_module_imports_without_tensorrt_and_activation_is_typed():
    from veca_deploy.runtimes import create_runner

    r = create_runner("tensorrt", "/nonexistent/engine.plan")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except (ImportError, OSError):
        pass
    with pytest.raises(BackendUnavailable, match="JetPack"):
        r.activate()


# ---------------------------------------------------------------------------- fingerprints and selection
FP = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "cuda_runtime": "12.6",
      "jetpack": "6.2", "integrated": True}


def test_fingerprint_matches_same_device():
    assert fingerprint_matches({"fingerprint": dict(FP)}, dict(FP)) == (True, "match")
    assert fingerprint_matches(dict(FP), {**FP, "cuda_runtime": "12.2", "jetpack": "6.1"})[0]  # not tied


@pytest.mark.parametrize("key,value,needle", [
    ("gpu_name", "NVIDIA GeForce RTX 4090", "GPU differs: engine built for Orin"),
    ("compute_capability", "7.2", "compute capability differs"),
    ("tensorrt", "10.7.0", "TensorRT version differs: engine built for 10.3.0, this machine has 10.7.0"),
    ("tensorrt", None, "cannot read this machine's TensorRT version"),
])
def test_fingerprint_mismatch_reasons(key, value, needle):
    ok, reason = fingerprint_matches({"fingerprint": dict(FP)}, {**FP, key: value})
    assert not ok and needle in reason


def test_fingerprint_from_incomplete_sidecar_is_refused():
    ok, reason = fingerprint_matches({"fingerprint": {"gpu_name": "Orin"}}, dict(FP))
    assert not ok and "lacks compute capability" in reason
    assert fingerprint_matches({"fingerprint": "x"}, FP)[0] is False


def test_timing_cache_and_slug_names():
    from veca_deploy.convert.tensorrt_build import plan_paths, timing_cache_path

    assert gpu_slug(FP) == "orin-sm87"
    assert timing_cache_path(FP) == "tensorrt/timing-orin-sm87-trt10.3.0.cache"
    assert plan_paths("tensorrt-fp16-c8-28x28") == ("tensorrt/tensorrt-fp16-c8-28x28.plan",
                                                   "tensorrt/tensorrt-fp16-c8-28x28.json")


def test_tegra_release_parsing(tmp_path):
    p = tmp_path / "nv_tegra_release"
    p.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n")
    assert tegra_release(str(p))["l4t"] == "36.4.3" and tegra_release(str(p))["jetpack"] == "6.2"
    assert tegra_release(str(tmp_path / "absent")) is None


def test_select_sources_filters_precision_tiers_and_elastic(onnx_files, tmp_path):
    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.convert.tensorrt_build import select_sources

    b = make_bundle(tmp_path / "b", [{"src": onnx_files["fixed"], "precision": "fp16", "cores": 8},
                                     {"src": onnx_files["elastic"], "precision": "fp16", "cores": 32,
                                      "elastic": True, "tiers": TIERS},
                                     {"src": onnx_files["fixed"], "precision": "fp32", "cores": 8}])
    m = read_manifest(b)
    got = select_sources(m, tiers=[8, 16], precisions=("fp16",))
    assert [(s.artifact.id, s.tiers, s.engine_id) for s in got] == [
        ("onnx-fp16-c8-28x28", [8], "tensorrt-fp16-c8-28x28"),
        ("onnx-fp16-elastic-28x28", [8, 16], "tensorrt-fp16-elastic-28x28")]
    assert [s.artifact.id for s in select_sources(m, precisions=("fp16",), elastic=False)] == ["onnx-fp16-c8-28x28"]
    with pytest.raises(UsageError, match="the bundle has: fp16 c8, fp16 elastic, fp32 c8"):
        select_sources(m, precisions=("int8",))
    with pytest.raises(UsageError, match="unknown precision"):
        select_sources(m, precisions=("fp8",))


# ---------------------------------------------------------------------------- device tests (Jetson / GPU)
def export_fp16(model, path: Path, elastic_tiers: list[int] | None = None) -> Path:
    """An FP16 ONNX with float32 I/O (what a strongly typed FP16 engine is built from)."""
    import torch
    from torch import nn

    from veca_deploy.export.onnx_export import ElasticModule, TierModule, output_names

    class Half(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner.half()

        def forward(self, images, *rest):
            return tuple(o.float() for o in self.inner(images.half(), *rest))

    inner = ElasticModule(copy.deepcopy(model)) if elastic_tiers else TierModule(copy.deepcopy(model), 8)
    outs = output_names(model)
    args: tuple = (torch.zeros(1, 3, H, W),) + ((torch.zeros(max(elastic_tiers)),) if elastic_tiers else ())
    names = ["images"] + (["core_select"] if elastic_tiers else [])
    axes = {n: {0: "batch"} for n in ["images", *outs]}
    if elastic_tiers:
        axes["core_select"] = {0: "cores"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Half(inner), args, str(path), input_names=names, output_names=outs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def gpu_bundle(model, tmp_path_factory):
    pytest.importorskip("tensorrt", reason="needs the TensorRT Python bindings (JetPack or veca-deploy[tensorrt])")
    from veca_deploy.runtimes.jetson import device_fingerprint

    if not device_fingerprint()["gpu_name"]:
        pytest.skip("needs an NVIDIA GPU visible through cuda-python")
    from veca_deploy.convert.tensorrt_build import build_engines

    d = tmp_path_factory.mktemp("gpu")
    fixed = export_fp16(model, d / "fixed16.onnx")
    elastic = export_fp16(model, d / "elastic16.onnx", TIERS)
    b = make_bundle(d / "bundle", [{"src": fixed, "precision": "fp16", "cores": 8},
                                   {"src": elastic, "precision": "fp16", "cores": 32, "elastic": True,
                                    "tiers": TIERS}])
    arts = build_engines(b, precisions=("fp16",), max_batch=4)
    return b, arts


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _ort(path: Path, feed: dict) -> dict:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engines_are_in_the_manifest_with_sidecars(gpu_bundle):
    from veca_deploy.bundle.reader import Bundle

    b, arts = gpu_bundle
    assert {a.id for a in arts} == {"tensorrt-fp16-c8-28x28", "tensorrt-fp16-elastic-28x28"}
    bundle = Bundle.open(b)
    for a in arts:
        plan = bundle.path_of(bundle.get(a.id))  # hashes of plan and sidecar verified
        side = json.loads(plan.with_suffix(".json").read_text())
        assert side["build"]["strongly_typed"] and side["source"]["artifact"] == a.details["source"]
    assert list((b / "tensorrt").glob("timing-*-trt*.cache"))


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fixed_engine_matches_onnxruntime(gpu_bundle, cuda_graph):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.runtimes.trt import TensorRTRunner

    b, _ = gpu_bundle
    bundle = Bundle.open(b)
    x = np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(np.float32)
    ref = _ort(bundle.path_of(bundle.get("onnx-fp16-c8-28x28")), {"images": x})
    with TensorRTRunner(bundle.path_of(bundle.get("tensorrt-fp16-c8-28x28")), cuda_graph=cuda_graph) as r:
        for _ in range(2):  # second call replays the captured graph
            got = r.infer({"images": x})
        for name, want in ref.items():
            assert _cos(got[name], want) >= 0.999, name
        t = r.last_timings
        assert t["compute_ms"] > 0 and t["copy_ms"] >= 0 and t["cuda_graph"] == float(cuda_graph)
        assert r.describe()["version"]
        from veca_deploy.errors import InputError

        with pytest.raises(InputError, match="max-batch"):
            r.infer({"images": np.zeros((5, 3, H, W), np.float32)})


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_elastic_engine_picks_the_tier_profile(gpu_bundle):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.errors import InputError
    from veca_deploy.runtimes import core_select
    from veca_deploy.runtimes.trt import TensorRTRunner

    b, _ = gpu_bundle
    bundle = Bundle.open(b)
    x = np.random.default_rng(1).standard_normal((1, 3, H, W)).astype(np.float32)
    src = bundle.path_of(bundle.get("onnx-fp16-elastic-28x28"))
    with TensorRTRunner(bundle.path_of(bundle.get("tensorrt-fp16-elastic-28x28"))) as r:
        for tier in TIERS:
            feed = {"images": x, "core_select": core_select(tier)}
            got, want = r.infer(feed), _ort(src, feed)
            assert all(_cos(got[n], want[n]) >= 0.999 for n in want), tier
        with pytest.raises(InputError, match="not a tier"):
            r.infer({"images": x, "core_select": core_select(12)})


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_runner_refuses_an_engine_from_another_device(gpu_bundle, tmp_path):
    from veca_deploy.runtimes.trt import TensorRTRunner

    b, _ = gpu_bundle
    plan = b / "tensorrt" / "tensorrt-fp16-c8-28x28.plan"
    shutil.copyfile(plan, tmp_path / plan.name)
    side = json.loads(plan.with_suffix(".json").read_text())
    side["fingerprint"]["compute_capability"] = "7.2"
    (tmp_path / plan.with_suffix(".json").name).write_text(json.dumps(side))
    with pytest.raises(BundleError, match="rebuild with veca-deploy build-trt"):
        TensorRTRunner(tmp_path / plan.name).activate()
