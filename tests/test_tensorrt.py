"""TensorRT path. Everywhere: the static checker, fingerprints, source selection, build-trt without
TensorRT (exit 7, one line, no torch), Runtime's max_batch split and the TensorRT-release
decisions (network flags). No stand-in replaces TensorRT: everything that builds or runs an
engine runs only where the real TensorRT, cuda-python and an NVIDIA GPU are present
(Jetson / GPU server; skipped elsewhere with the reason): engines built from what ships (the
reference bundle's FP16 ONNX and S8S8 Q/DQ INT8 graphs, qdq-fp16 and qdq-fp32, every elastic
tier), gated and validated against the golden outputs."""

from __future__ import annotations

import json
import shutil
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


# ---------------------------------------------------------------------------- build-trt without TensorRT
NO_TORCH_NO_TRT = """
import json, sys

ATTEMPTS = []

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "onnxscript", "tensorrt", "tensorrt_bindings", "cuda"):
            ATTEMPTS.append(name)
            raise ImportError(f"{name} is blocked: this test simulates a device without it")
        return None

sys.meta_path.insert(0, _Block())
from veca_deploy.cli import main
rc = main(["build-trt", sys.argv[1]] + sys.argv[2:])
print(json.dumps({"rc": rc, "torch": [a for a in ATTEMPTS if a.split(".")[0] in ("torch", "torchvision", "onnxscript")]}))
"""


@pytest.mark.parametrize("extra", [[], ["-q", "--precision", "int8"]])
def test_build_trt_without_tensorrt_exits_7_with_one_line_and_no_torch(onnx_files, tmp_path, extra):
    """Runs in a subprocess where torch, TensorRT and cuda-python cannot be imported (so it means
    the same on a machine that has them): exit 7, exactly one line on stderr, and nothing on
    the build-trt path even tried to import torch."""
    import os
    import subprocess
    import sys

    b = make_bundle(tmp_path / "b", [{"src": onnx_files["fixed"], "precision": "fp16", "cores": 8}])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", NO_TORCH_NO_TRT, str(b), *extra], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tmp_path)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["rc"] == 7, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("veca-deploy: error: TensorRT is not usable here") and "JetPack" in lines[0]
    assert report["torch"] == [], f"the build-trt path imported {report['torch']}"


# ---------------------------------------------------------------------------- version-dependent API choices
def _trt_namespace(version: str, strongly_typed: bool = True):
    """Only the two attributes network_flags reads (a version string and the flag enum): the
    decision between TensorRT releases, not TensorRT."""
    from types import SimpleNamespace

    flags = SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed else {}))
    return SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)


def test_network_flags_tensorrt_10_and_11():
    """Strongly typed: the flag on TensorRT 10, nothing on 11 (deprecated there, always on)."""
    from veca_deploy.runtimes.jetson import network_flags

    assert network_flags(_trt_namespace("10.3.0")) == (1 << 1, "STRONGLY_TYPED flag")
    assert network_flags(_trt_namespace("11.1.0")) == (0, "default (TensorRT 11)")
    with pytest.raises(BackendUnavailable, match="no strongly typed networks"):
        network_flags(_trt_namespace("8.6.1", strongly_typed=False))


# ---------------------------------------------------------------------------- Runtime: max_batch
def test_runtime_predict_splits_batches_above_max_batch(tiny_bundle, tmp_path):
    """An artifact whose manifest says max_batch=2 (ONNX Runtime itself takes any batch, so the
    split is visible only in the calls): same outputs as the unsplit run, calls of <= 2 images."""
    import veca_deploy
    from veca_deploy.bundle.manifest import read_manifest

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    x = np.random.default_rng(0).integers(0, 255, (5, 28, 28, 3), dtype=np.uint8)
    with veca_deploy.Runtime.open(b, tiers=[8], backend="onnxruntime") as rt:
        want = rt.predict(x)
    m = read_manifest(b)
    for a in m.artifacts:
        a.max_batch = 2
    write_manifest(b, m)
    with veca_deploy.Runtime.open(b, tiers=[8], backend="onnxruntime") as rt:
        assert len(rt._runners) == 1
        runner = next(iter(rt._runners.values()))
        sizes: list[int] = []
        real = runner.infer

        def spy(feed, check=True):
            sizes.append(int(feed["images"].shape[0]))
            return real(feed, check=check)

        runner.infer = spy
        got = rt.predict(x)
        one = rt.predict(x[:1])
    assert sizes == [2, 2, 1, 1], sizes
    assert got.keys() and sorted(got.outputs) == sorted(want.outputs)
    for k in want.outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
        assert got[k].shape[0] == 5 and one[k].shape[0] == 1


# ---------------------------------------------------------------------------- device tests (real TensorRT + GPU)
def _real_tensorrt_or_skip() -> None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        pytest.skip("needs the real TensorRT Python bindings (JetPack or veca-deploy[tensorrt]); not installed here")
    from veca_deploy.runtimes.jetson import gpu_fingerprint, gpu_problem

    problem = gpu_problem(gpu_fingerprint())
    if problem:
        pytest.skip(f"needs an NVIDIA GPU visible through cuda-python: {problem}")


@pytest.fixture(scope="module")
def device_bundle(tmp_path_factory):
    """What ships: the reference model exported with golden outputs, FP16 ONNX and S8S8 QDQ INT8
    ONNX (elastic, every tier, and fixed tiers), then engines built from them on this GPU:
    FP16 and INT8 (qdq-fp16 source), max batch 4."""
    import os

    _real_tensorrt_or_skip()
    from veca_deploy.convert.tensorrt_build import build_engines

    b = tmp_path_factory.mktemp("device") / "ref"
    shipped = os.environ.get("VECA_DEVICE_BUNDLE")  # a bundle exported on the workstation (a Jetson has no torch)
    if shipped:
        shutil.copytree(shipped, b, ignore=shutil.ignore_patterns("tensorrt"))
        from veca_deploy.bundle.manifest import read_manifest

        m = read_manifest(b)
        m.artifacts = [a for a in m.artifacts if a.format != "tensorrt"]
        write_manifest(b, m)
    else:
        pytest.importorskip("torch", reason="exporting the reference bundle needs torch; on a Jetson set "
                                            "VECA_DEVICE_BUNDLE to a bundle exported with --elastic "
                                            "--precision fp32,fp16,int8 on the workstation")
        from veca_deploy.data import fashion_mnist_available

        if not fashion_mnist_available():
            pytest.skip("INT8 calibration of the reference model needs Fashion-MNIST, or set VECA_DEVICE_BUNDLE")
        import veca_deploy

        veca_deploy.export(None, out=b, formats=["onnx"], precisions=["fp32", "fp16", "int8"],
                           calib="fashion-mnist", elastic=True)
    arts = build_engines(b, precisions=("fp16", "int8"), max_batch=4)
    return b, arts


def _print_latency(arts) -> None:
    for a in arts:
        print(f"\n{a.id} [{a.details.get('int8_source') or a.precision}] p50 ms b=1: {a.details.get('latency_ms')}"
              + (f" INT8 vs FP16: {a.details.get('int8_vs_fp16')}" if a.precision == "int8" else ""))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_engines_are_gated_on_golden_outputs_at_every_tier(device_bundle, capsys):
    from veca_deploy.bundle.reader import Bundle

    b, arts = device_bundle
    ids = {a.id for a in arts}
    assert {"tensorrt-fp16-elastic-28x28", "tensorrt-int8-elastic-28x28", "tensorrt-fp16-c8-28x28",
            "tensorrt-int8-c8-28x28"} <= ids
    bundle = Bundle.open(b)
    for a in arts:
        stored = bundle.get(a.id)
        plan = bundle.path_of(stored)  # hashes of plan and sidecar verified
        side = json.loads(plan.with_suffix(".json").read_text())
        assert side["build"]["strongly_typed"] and side["source"]["artifact"] == a.details["source"]
        assert stored.max_batch == 4
        reps = stored.parity if stored.elastic else {str(stored.cores): stored.parity}
        assert sorted(reps, key=int) == [str(t) for t in stored.tiers]
        assert all(r["passed"] and r["reference"] == "pytorch-fp32" for r in reps.values())
        if a.precision == "int8":
            assert stored.details["int8_source"] == "qdq-fp16" and stored.details["int8_vs_fp16"]
    assert list((b / "tensorrt").glob("timing-*-trt*.cache"))
    with capsys.disabled():
        _print_latency(arts)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_validate_passes_on_the_engines(device_bundle):
    from veca_deploy.compare.validate import validate_bundle

    b, _ = device_bundle
    results = validate_bundle(b, backends="tensorrt")
    assert results and all(r.ok and not r.skipped for r in results), [(r.artifact, r.detail) for r in results]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_int8_engines_from_the_stored_s8s8_graph(device_bundle, tmp_path, capsys):
    from veca_deploy.compare.validate import validate_bundle
    from veca_deploy.convert.tensorrt_build import build_engines

    b, _ = device_bundle
    c = tmp_path / "qdq32"
    shutil.copytree(b, c)
    arts = build_engines(c, precisions=("int8",), max_batch=4, int8_source="qdq-fp32")
    assert all(a.details["int8_source"] == "qdq-fp32" for a in arts)
    assert any(a.elastic and a.tiers == TIERS for a in arts)
    results = validate_bundle(c, backends="tensorrt")
    assert all(r.ok for r in results), [(r.artifact, r.detail) for r in results]
    with capsys.disabled():
        _print_latency(arts)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_device_runner_matches_golden_with_and_without_cuda_graphs(device_bundle, cuda_graph):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.compare.checks import BundleReferences
    from veca_deploy.compare.comparator import Comparator
    from veca_deploy.errors import InputError
    from veca_deploy.runtimes.trt import TensorRTRunner

    b, _ = device_bundle
    bundle = Bundle.open(b)
    with Comparator() as comp:
        refs = BundleReferences(b, bundle.manifest, comp)
        for aid in ("tensorrt-fp16-elastic-28x28", "tensorrt-int8-elastic-28x28"):
            art = bundle.get(aid)
            reports = refs.check(art, options={"cuda_graph": cuda_graph})
            assert all(r.passed for r in reports.values()), [r.failures for r in reports.values()]
    x = refs.inputs(H, W)
    with TensorRTRunner(bundle.path_of(bundle.get("tensorrt-fp16-c8-28x28")), cuda_graph=cuda_graph) as r:
        for _ in range(2):  # the second call replays the captured graph
            r.infer({"images": x})
        t = r.last_timings
        assert t["compute_ms"] > 0 and t["copy_ms"] >= 0 and t["cuda_graph"] == float(cuda_graph)
        assert r.max_batch == 4
        with pytest.raises(InputError, match="max-batch"):
            r.infer({"images": np.zeros((5, 3, H, W), np.float32)})


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_elastic_engine_refuses_an_unbuilt_tier(device_bundle):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.errors import InputError
    from veca_deploy.runtimes import core_select
    from veca_deploy.runtimes.trt import TensorRTRunner

    b, _ = device_bundle
    bundle = Bundle.open(b)
    with TensorRTRunner(bundle.path_of(bundle.get("tensorrt-int8-elastic-28x28"))) as r:
        assert r.describe()["tiers"] == TIERS
        with pytest.raises(InputError, match="not a tier"):
            r.infer({"images": np.zeros((1, 3, H, W), np.float32), "core_select": core_select(12)})


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_runtime_splits_batches_above_the_engine_max(device_bundle):
    import veca_deploy

    b, _ = device_bundle
    x = np.random.default_rng(0).integers(0, 255, (9, H, W, 3), dtype=np.uint8)
    with veca_deploy.Runtime.open(b, tiers=[8], backend="tensorrt", precisions=["fp16"]) as rt:
        pred = rt.predict(x)
    assert pred["logits"].shape[0] == 9


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_streams_serve_requests_side_by_side(device_bundle):
    """streams=2: two lanes (engine + context + CUDA stream each); submit from many threads gives
    what predict gives, on every tier of the elastic engine."""
    import concurrent.futures as cf

    import veca_deploy

    b, _ = device_bundle
    x = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    with veca_deploy.Runtime.open(b, tiers=[8], backend="tensorrt", precisions=["fp16"], streams=2) as rt:
        want = rt.predict(x)["logits"]
        with cf.ThreadPoolExecutor(4) as ex:
            futs = [f for fs in ex.map(lambda _: [rt.submit(x) for _ in range(8)], range(4)) for f in fs]
        got = [f.result(timeout=120)["logits"] for f in futs]
        runner = next(iter(rt._runners.values()))
        assert runner.describe()["streams"] == 2 and len(got) == 32
        assert all(np.allclose(g, want, atol=1e-3) for g in got)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_device_runner_refuses_an_engine_from_another_device(device_bundle, tmp_path):
    from veca_deploy.runtimes.trt import TensorRTRunner

    b, _ = device_bundle
    plan = b / "tensorrt" / "tensorrt-fp16-c8-28x28.plan"
    shutil.copyfile(plan, tmp_path / plan.name)
    side = json.loads(plan.with_suffix(".json").read_text())
    side["fingerprint"]["compute_capability"] = "7.2"
    (tmp_path / plan.with_suffix(".json").name).write_text(json.dumps(side))
    with pytest.raises(BundleError, match="rebuild with veca-deploy build-trt"):
        TensorRTRunner(tmp_path / plan.name).activate()
