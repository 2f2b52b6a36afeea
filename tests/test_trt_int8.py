"""The qdq-fp16 INT8 source of TensorRT engines (veca_deploy.convert.trt_int8), validated on this
machine in ONNX Runtime (CPU): the reference bundle's S8S8 Q/DQ graphs, rewritten with FP16 outside
the INT8 GEMMs, must pass the int8 gate against the bundle's golden outputs at every tier, and
have the structure a strongly typed TensorRT build turns into INT8 GEMMs with FP16 elsewhere.
No TensorRT is involved here."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the qdq-fp16 transform needs the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from veca_deploy.calibration.recipe import Fp16Recipe  # noqa: E402
from veca_deploy.convert.trt_int8 import (DEFAULT_INT8_SOURCE, INT8_SOURCES, QDQ_FP16_OPSET,  # noqa: E402
                                         check_int8_source, qdq_fp16_model, qdq_fp16_problems, write_qdq_fp16)
from veca_deploy.errors import ExportError, UsageError  # noqa: E402


@pytest.fixture(scope="module")
def int8_bundle(reference_bundle, tmp_path_factory) -> Path:
    """The reference bundle (trained weights, golden outputs) plus its S8S8 ONNX INT8 graphs
    (elastic + C=8), as ``quantize`` writes them."""
    from veca_deploy.calibration.quantize import quantize
    from veca_deploy.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("calibrating the reference model needs Fashion-MNIST (scripts/setup.sh installs it)")
    root = tmp_path_factory.mktemp("int8") / "ref"
    shutil.copytree(reference_bundle, root)
    quantize(root, precisions=["int8"], calib="fashion-mnist", formats=["onnx"], tiers=[8], eval_data=None)
    return root


def _gate(root: Path, art, rel: str):
    """The int8 gate of ``art``'s graph replaced by the file ``rel`` (inside ``root``), in ONNX
    Runtime on CPU against the golden outputs."""
    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.compare.checks import BundleReferences
    from veca_deploy.compare.comparator import Comparator

    with Comparator() as comp:
        refs = BundleReferences(root, read_manifest(root), comp)
        assert all(refs.has_golden(c, art.height, art.width) for c in art.tiers)
        return refs.check(dataclasses.replace(art, path=rel))


@pytest.mark.parametrize("which", ["onnx-int8-elastic-28x28", "onnx-int8-c8-28x28"])
def test_qdq_fp16_graph_passes_the_int8_gate_on_the_reference_bundle(int8_bundle, which, capsys):
    from veca_deploy.bundle.manifest import read_manifest

    art = next(a for a in read_manifest(int8_bundle).artifacts if a.id == which)
    rel = art.path[: -len(".onnx")] + ".qdq-fp16.onnx"
    info = write_qdq_fp16(int8_bundle / art.path, int8_bundle / rel)
    try:
        assert info["int8_source"] == "qdq-fp16" and info["opset_from"] == 17 and info["opset"] == QDQ_FP16_OPSET
        assert info["int8_gemms"] > 0 and info["scale_fp16_max_rel_error"] < 1e-3
        assert info["scales_below_fp16_normal"] == 0
        fp16 = _gate(int8_bundle, art, rel)
        fp32 = _gate(int8_bundle, art, art.path)
    finally:
        (int8_bundle / rel).unlink(missing_ok=True)
    assert sorted(fp16) == sorted(art.tiers)
    for tier, rep in fp16.items():
        assert rep.passed, rep.failures
        assert rep.reference == "pytorch-fp32" and rep.precision == "int8" and rep.images == 4
        assert rep.top1_agreement == 1.0
        with capsys.disabled():  # the measured numbers, for the record
            print(f"\n{which} C={tier}: qdq-fp16 cosine " + ", ".join(
                f"{k} {v.cosine:.5f}" for k, v in rep.outputs.items()) + " | S8S8 qdq-fp32 cosine " + ", ".join(
                f"{k} {v.cosine:.5f}" for k, v in fp32[tier].outputs.items()))


def test_qdq_fp16_structure_is_int8_gemms_with_fp16_elsewhere(int8_bundle, tmp_path):
    from veca_deploy.bundle.manifest import read_manifest

    art = next(a for a in read_manifest(int8_bundle).artifacts if a.id == "onnx-int8-elastic-28x28")
    src = onnx.load(str(int8_bundle / art.path))
    dst = tmp_path / "e.onnx"
    info = write_qdq_fp16(int8_bundle / art.path, dst)
    m = onnx.load(str(dst))
    assert qdq_fp16_problems(m) == []
    inits = {i.name: i for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == info["qdq_nodes"] == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in src.graph.node)
    assert all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in qdq)  # FP16 scales
    assert all(inits[n.input[2]].data_type == TensorProto.INT8 for n in qdq)  # zero points untouched
    # INT8 weights and calibrated scales are the same numbers (scales rounded to FP16)
    src_inits = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    for n in qdq[:40]:
        for name in (n.input[0], n.input[1]):
            if name in src_inits and name in inits:
                want = src_inits[name]
                got = numpy_helper.to_array(inits[name])
                if want.dtype == np.int8:
                    assert np.array_equal(got, want)
                else:
                    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-3)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    gemms = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert gemms and all(types[i] == TensorProto.FLOAT16 for n in gemms for i in n.input[:2])
    kept = [n for n in m.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept and all(types[n.input[0]] == TensorProto.FLOAT for n in kept)  # Fp16Recipe.keep_fp32
    assert {v.name: v.type.tensor_type.elem_type for v in m.graph.input} == {"images": TensorProto.FLOAT,
                                                                             "core_select": TensorProto.FLOAT}
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in m.graph.output)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["veca.int8_source"] == "qdq-fp16" and meta["veca.precision"] == "int8"
    # the S8S8 graph as stored is exactly what the checker flags
    problems = qdq_fp16_problems(src)
    assert any("opset 17" in p for p in problems) and any("scale is not an FP16 constant" in p for p in problems)
    # deterministic: build-trt records the sha256 of a graph anyone can rebuild from the bundle
    assert write_qdq_fp16(int8_bundle / art.path, tmp_path / "again.onnx")["sha256"] == info["sha256"]


def test_qdq_fp16_graph_passes_the_static_tensorrt_check(int8_bundle, tmp_path):
    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.convert.trt_check import check_onnx_for_tensorrt

    art = next(a for a in read_manifest(int8_bundle).artifacts if a.id == "onnx-int8-elastic-28x28")
    write_qdq_fp16(int8_bundle / art.path, tmp_path / "e.onnx")
    rep = check_onnx_for_tensorrt(tmp_path / "e.onnx")
    assert rep.ok, rep.problems
    assert rep.opset == QDQ_FP16_OPSET


# ---------------------------------------------------------------------------- small graphs
def _qdq_block(zp_dtype=TensorProto.INT8) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(DQ(int8 W)) -> + b -> LayerNorm -> Softmax -> y, opset 17, FP32."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    w_scale = (np.abs(w).max(0) / 127).astype(np.float32)
    w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    np_zp = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[zp_dtype]
    inits = [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_s"),
             numpy_helper.from_array(np.zeros(8, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(0.05, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np_zp), "x_zp"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "beta")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["wd"], name="dqw", axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["h"], name="add"),
             helper.make_node("LayerNormalization", ["h", "g", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("Softmax", ["ln"], ["y"], name="sm", axis=-1)]
    g = helper.make_graph(nodes, "blk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_small_qdq_graph_converts_and_runs_in_onnxruntime():
    m = _qdq_block()
    out, info = qdq_fp16_model(m)
    assert info["opset"] == QDQ_FP16_OPSET and info["int8_gemms"] == 1 and info["kept_fp32_ops"] == [
        "LayerNormalization", "Softmax"]
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    want, got = _run(m, x), _run(out, x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_refuses_graphs_that_are_not_s8s8_qdq():
    with pytest.raises(ExportError, match="UINT8 zero point.*target tensorrt"):
        qdq_fp16_model(_qdq_block(TensorProto.UINT8))
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="not a Q/DQ graph"):
        qdq_fp16_model(plain)
    twice, _ = qdq_fp16_model(_qdq_block())
    with pytest.raises(ExportError, match="already holds FP16"):
        qdq_fp16_model(twice)


def test_keep_fp32_list_comes_from_the_fp16_recipe():
    out, _ = qdq_fp16_model(_qdq_block(), Fp16Recipe(keep_fp32=("Softmax",)))
    # LayerNormalization now runs in FP16; the default recipe's checker says so
    assert any("LayerNormalization" in p and "runs in FP16" in p for p in qdq_fp16_problems(out))
    assert qdq_fp16_problems(out, Fp16Recipe(keep_fp32=("Softmax",))) == []


def test_int8_source_names():
    assert DEFAULT_INT8_SOURCE == "qdq-fp16" and set(INT8_SOURCES) == {"qdq-fp16", "qdq-fp32"}
    assert check_int8_source(None) == "qdq-fp16" and check_int8_source("QDQ-FP32") == "qdq-fp32"
    with pytest.raises(UsageError, match="unknown INT8 source 'fp8'"):
        check_int8_source("fp8")
