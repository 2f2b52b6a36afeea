"""add_precisions / quantize / evaluate on a bundle, the accuracy gate and the CLI refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from veca_deploy.bundle.manifest import Artifact, Manifest, read_manifest
from veca_deploy.data import fashion_mnist_available
from veca_deploy.errors import QuantizationError

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("qcache"))


@pytest.fixture(scope="module")
def quantized(tiny_bundle, tmp_path_factory, cache_dir) -> Path:
    """tiny_bundle + FP16 and INT8 for tier 8 and the elastic graph (300 calibration images)."""
    import veca_deploy

    out = tmp_path_factory.mktemp("quantized") / "b"
    shutil.copytree(tiny_bundle, out)
    veca_deploy.quantize(out, precisions=["fp16", "int8"], calib="fashion-mnist", count=300, tiers=[8],
                         eval_limit=400, cache_dir=cache_dir)
    return out


def test_quantize_adds_gated_artifacts(quantized):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.convert.trt_check import check_onnx_for_tensorrt

    b = Bundle.open(quantized)
    ids = {a.id for a in b.artifacts}
    want = {"onnx-fp16-c8-28x28", "onnx-int8-c8-28x28", "openvino-int8-c8-28x28", "onnx-fp16-elastic-28x28",
            "onnx-int8-elastic-28x28"}
    assert want <= ids and "onnx-int8-c16-28x28" not in ids  # --tiers 8 honoured
    for aid in want:
        a = b.get(aid)
        b.path_of(a)  # hashes and sizes recorded correctly
        assert a.details["recipe"] and a.details["derived_from"].startswith(f"{a.format}-fp32")
        acc = a.accuracy
        assert acc["samples"] == 400 and acc["dataset"] == "fashion-mnist:test" and acc["metric"] == "cosine"
        vals = acc["per_tier"].values() if a.elastic else [acc["cosine"]]
        assert min(vals) >= 0.99
    i8 = b.get("onnx-int8-c8-28x28")
    assert i8.path == "onnx/c8_28x28.int8.onnx" and i8.details["recipe"]["variant"] == "S8S8-symmetric"
    assert i8.parity["passed"] and min(o["cosine"] for o in i8.parity["outputs"].values()) >= 0.99
    assert check_onnx_for_tensorrt(quantized / i8.path).ok
    ov = b.get("openvino-int8-c8-28x28")
    assert ov.path == "openvino/int8/c8_28x28.xml" and [f.path for f in ov.files] == ["openvino/int8/c8_28x28.bin"]
    el = b.get("onnx-int8-elastic-28x28")
    assert el.elastic and el.tiers == [8, 16, 24, 32] and set(el.parity) == {"8", "16", "24", "32"}
    cal = b.manifest.calibration
    assert cal["count"] == 300 and cal["source"] == "fashion-mnist:train" and cal["disjoint_from_eval"] is True
    assert cal["forced_below_minimum"] is False and "onnx_int8" in cal["recipes"]


def test_int8_runs_in_openvino_itself(quantized):
    from veca_deploy.runtimes import create_runner

    x = np.zeros((2, 3, 28, 28), np.float32)
    with create_runner("openvino", quantized / "openvino/int8/c8_28x28.xml") as r:
        out = r.infer({"images": x})
    assert out["global"].shape[0] == 2 and np.isfinite(out["global"]).all()


def _fed_by_fake_quantize(op) -> bool:
    """Whether ``op``'s first input comes from a FakeQuantize (through reshapes and converts)."""
    from veca_deploy.calibration.keep_float import ov_source

    return ov_source(op, 0).get_type_name() == "FakeQuantize"


def test_rope_rotations_and_patch_embedding_stay_float_in_openvino_int8(quantized, tmp_path, cache_dir):
    """NNCF leaves RoPE's pair rotation (a product with a signed permutation, exact in float), the
    patch embedding (reads the image) and the products that map core positions (RoPE's angles,
    the per-layer position update) in float, weights and input, while the projections are
    quantized; the recipe records it, and switched off they are quantized like any product."""
    import openvino as ov

    from veca_deploy.calibration.data import CalibrationSet
    from veca_deploy.calibration.keep_float import openvino_float_ops, signed_permutation
    from veca_deploy.calibration.openvino_quant import quantize_openvino_int8
    from veca_deploy.calibration.recipe import NncfRecipe
    from veca_deploy.model import create_model
    from veca_deploy.model.veca import rotation_matrix

    assert signed_permutation(rotation_matrix(8).numpy())
    assert not signed_permutation(np.eye(3) * 2) and not signed_permutation(np.ones((2, 2)))
    assert not signed_permutation(np.eye(2, 3)) and not signed_permutation(np.zeros((2, 2)))
    core = ov.Core()
    src = quantized / "openvino/fp32/c8_28x28.xml"
    fp32 = core.read_model(str(src))
    rot = openvino_float_ops(fp32, input_layer=False, coordinates=False)
    first = openvino_float_ops(fp32, rotations=False, coordinates=False)
    coords = openvino_float_ops(fp32, rotations=False, input_layer=False)
    layers = create_model("veca_tiny").cfg.num_layers
    assert len(rot) == 2 * layers  # q and k in every layer
    # the position update between layers and the angles it moves (the first layer's are constants, folded)
    assert len(coords) == 2 * (layers - 1)
    q = core.read_model(str(quantized / "openvino/int8/c8_28x28.xml"))
    assert sorted(openvino_float_ops(q, input_layer=False, coordinates=False)) == sorted(rot)  # constants as they were
    assert sorted(openvino_float_ops(q, rotations=False, input_layer=False)) == sorted(coords)
    ops = {op.get_friendly_name(): op for op in q.get_ops()}
    assert not any(_fed_by_fake_quantize(ops[n]) for n in rot + coords)
    assert any(_fed_by_fake_quantize(op) for op in q.get_ops() if op.get_type_name() == "MatMul")
    # the patch embedding reads the image: in float too (the largest INT8 error when quantized)
    assert first and all(ops[n].get_type_name() == "Convolution" and not _fed_by_fake_quantize(ops[n]) for n in first)
    assert all(ops[n].input_value(1).get_node().get_type_name() == "Constant" for n in first)  # float weights
    recipes = read_manifest(quantized).calibration["recipes"]
    for r in ("openvino_int8", "onnx_int8"):
        assert recipes[r]["float_rotations"] is True and recipes[r]["float_input_layer"] is True
        assert recipes[r]["float_coordinates"] is True
    # switched off: quantized like the projections
    cal = CalibrationSet(images=np.random.default_rng(0).standard_normal((8, 3, 28, 28)).astype(np.float32))
    dst = tmp_path / "rot.xml"
    quantize_openvino_int8(src, dst, cal, NncfRecipe(float_rotations=False, float_input_layer=False,
                                                     float_coordinates=False), cache_dir=cache_dir)
    q = core.read_model(str(dst))
    assert openvino_float_ops(q, input_layer=False) == []
    ops = {op.get_friendly_name(): op for op in q.get_ops()}
    assert all(_fed_by_fake_quantize(ops[n]) for n in rot + first + coords)


def test_rope_rotations_and_patch_embedding_stay_float_in_onnx_int8(quantized, tmp_path, cache_dir):
    """The same three kinds of product stay float in ONNX Runtime's QDQ graphs (both schemes): no
    DequantizeLinear feeds them, while the projections are fed by one."""
    import onnx

    from veca_deploy.calibration.data import CalibrationSet
    from veca_deploy.calibration.keep_float import onnx_float_nodes
    from veca_deploy.calibration.onnx_quant import quantize_onnx_int8
    from veca_deploy.calibration.recipe import ort_recipe
    from veca_deploy.model import create_model

    def dequantized_inputs(path: Path) -> dict[str, bool]:
        g = onnx.load(str(path)).graph
        made_by = {o: n.op_type for n in g.node for o in n.output}
        return {n.name: any(made_by.get(i) == "DequantizeLinear" for i in n.input) for n in g.node}

    fp32 = onnx.load(str(quantized / "onnx/c8_28x28.onnx"))
    rot = onnx_float_nodes(fp32, input_layer=False, coordinates=False)
    first = onnx_float_nodes(fp32, rotations=False, coordinates=False)
    coords = onnx_float_nodes(fp32, rotations=False, input_layer=False)
    layers = create_model("veca_tiny").cfg.num_layers
    assert len(rot) == 2 * layers and len(first) == 1 and len(coords) == 2 * (layers - 1)
    shipped = dequantized_inputs(quantized / "onnx/c8_28x28.int8.onnx")  # the default S8S8 recipe
    assert not any(shipped[n] for n in rot + first + coords) and sum(shipped.values()) > len(rot)
    cal = CalibrationSet(images=np.random.default_rng(0).standard_normal((8, 3, 28, 28)).astype(np.float32))
    for scheme in ("u8s8", "s8s8"):
        dst = tmp_path / f"{scheme}.onnx"
        quantize_onnx_int8(quantized / "onnx/c8_28x28.onnx", dst, cal,
                           ort_recipe(scheme=scheme, float_rotations=False, float_input_layer=False,
                                      float_coordinates=False), cache_dir=cache_dir)
        off = dequantized_inputs(dst)
        assert all(off[n] for n in rot + first + coords), scheme  # switched off: quantized like any product


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process (a subprocess would pay the import time again)."""
    from veca_deploy.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def test_cli_refuses_tiny_and_mismatched_calibration_and_leaves_bundle(quantized, tmp_path, capsys):
    before = (quantized / "manifest.json").read_bytes()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "tiny.npy", rng.integers(0, 255, (50, 28, 28), dtype=np.uint8))
    code, err = _cli(capsys, "quantize", str(quantized), "--precision", "int8", "--calib", str(tmp_path / "tiny.npy"),
                     "-q")
    assert code == QuantizationError.exit_code and len(err.splitlines()) == 1
    assert "only 50 images" in err and "--allow-small-calib" in err
    np.save(tmp_path / "rgba.npy", rng.integers(0, 255, (400, 28, 28, 4), dtype=np.uint8))
    code, err = _cli(capsys, "quantize", str(quantized), "--calib", str(tmp_path / "rgba.npy"), "-q")
    assert code == QuantizationError.exit_code and "C in (1, 3)" in err and len(err.splitlines()) == 1
    code, err = _cli(capsys, "quantize", str(quantized), "--calib", str(tmp_path / "nope"), "-q")
    assert code == QuantizationError.exit_code and "not found" in err
    assert (quantized / "manifest.json").read_bytes() == before
    assert not list(quantized.parent.glob(".b.partial-*"))


def test_forced_small_calibration_is_recorded(quantized, tmp_path, cache_dir):
    import veca_deploy

    out = tmp_path / "forced"
    shutil.copytree(quantized, out)
    m = veca_deploy.quantize(out, precisions=["int8"], calib="fashion-mnist", count=64, force=True, tiers=[16],
                             formats=["onnx"], eval_data=None, cache_dir=cache_dir)
    assert m.calibration["forced_below_minimum"] is True and m.calibration["count"] == 64
    assert read_manifest(out).calibration["count"] == 64
    assert any(a.id == "onnx-int8-c16-28x28" for a in read_manifest(out).artifacts)


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under a bundle, by relative path."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_parity_gate_leaves_bundle_untouched(quantized, tmp_path):
    """A real parity failure, no stub: INT8 scales calibrated on 16 black images (allowed with
    allow_small, as --allow-small-calib does) break the golden photos' features once the image
    itself is quantized (``float_input_layer=False``; the default keeps the patch embedding in
    float, and the LayerNorms after it then give black images sane ranges)."""
    import veca_deploy
    from veca_deploy.calibration.recipe import OrtRecipe

    np.save(tmp_path / "const.npy", np.zeros((16, 28, 28), np.uint8))
    before_manifest = (quantized / "manifest.json").read_bytes()
    before = _snapshot(quantized)
    assert not (quantized / "onnx" / "c24_28x28.int8.onnx").exists()
    with pytest.raises(QuantizationError, match=r"parity gate failed, nothing added: onnx/c24_28x28\.int8\.onnx "
                                                r"\(c=24\) \w+: cosine"):
        veca_deploy.quantize(quantized, precisions=["int8"], calib=str(tmp_path / "const.npy"), allow_small=True,
                             tiers=[24], formats=["onnx"], recipe=OrtRecipe(float_input_layer=False))
    assert (quantized / "manifest.json").read_bytes() == before_manifest
    assert _snapshot(quantized) == before  # the onnx/ folder and everything else, byte for byte
    assert not list(quantized.parent.glob(".b.partial-*"))


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_failed_accuracy_gate_leaves_bundle_untouched(reference_bundle, tmp_path, cache_dir):
    """A real top-1 gate failure on real images, no stub, on any CPU: a first INT8 build (300
    Fashion-MNIST calibration images; parity passes) finds the test images where INT8 is wrong and
    FP32 right; a held-out .npz of those hard images plus as many easy ones makes the same,
    deterministic INT8 build fall far more than 1 point below FP32, and nothing is added."""
    import onnxruntime as ort

    import veca_deploy
    from veca_deploy.data import fashion_mnist
    from veca_deploy.preprocess import Preprocess

    opts = dict(precisions=["int8"], calib="fashion-mnist", count=300, tiers=[32], formats=["onnx"], cache_dir=cache_dir)
    trial = tmp_path / "trial"
    shutil.copytree(reference_bundle, trial)
    m = veca_deploy.quantize(trial, eval_data=None, **opts)
    x, y = fashion_mnist("test")
    feed = Preprocess.from_dict(m.preprocess)(list(x[:4000]), (28, 28))
    pred = {}
    for prec in ("fp32", "int8"):
        art = next(a for a in m.artifacts if a.format == "onnx" and a.precision == prec and a.cores == 32 and not a.elastic)
        sess = ort.InferenceSession(str(trial / art.path), providers=["CPUExecutionProvider"])
        pred[prec] = np.concatenate([sess.run(["logits"], {"images": feed[i:i + 500]})[0].argmax(1)
                                     for i in range(0, len(feed), 500)])
    hard = np.flatnonzero((pred["fp32"] == y[:4000]) & (pred["int8"] != y[:4000]))
    if len(hard) < 2:
        pytest.skip(f"INT8 loses only {len(hard)} of 4,000 images here: no hard set to gate on")
    easy = np.flatnonzero((pred["fp32"] == y[:4000]) & (pred["int8"] == y[:4000]))[: len(hard)]
    idx = np.concatenate([hard, easy])
    np.savez(tmp_path / "hard.npz", images=x[idx], labels=y[idx])
    target = tmp_path / "b"
    shutil.copytree(reference_bundle, target)
    before = _snapshot(target)
    with pytest.raises(QuantizationError, match=r"accuracy gate failed, nothing added: onnx-int8-c32-28x28 c=32: "
                                                r"top-1 \d+\.\d+% vs FP32 100\.00%"):
        veca_deploy.quantize(target, eval_data=str(tmp_path / "hard.npz"), **opts)
    assert _snapshot(target) == before  # the onnx/ folder and everything else, byte for byte
    assert not list(tmp_path.glob(".b.partial-*"))


def test_eval_cli_writes_json_and_manifest(quantized, tmp_path, capsys):
    target = tmp_path / "ev"
    shutil.copytree(quantized, target)
    code, err = _cli(capsys, "eval", str(target), "--limit", "100", "--json", str(tmp_path / "r.json"), "--backend",
                     "onnxruntime", "--allow-drop", "0.5", "--overwrite", "-q")
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["samples"] == 100 and rep["dataset"] == "fashion-mnist:test" and not rep["gate"]["failures"]
    assert {r["backend"] for r in rep["results"]} == {"onnxruntime"}
    m = read_manifest(target)
    a = next(a for a in m.artifacts if a.id == "onnx-int8-c8-28x28")
    assert a.accuracy["samples"] == 100 and a.accuracy["allowed_drop"] == 0.5
    assert m.calibration["allow_drop"] == 0.5


def _art(fmt: str, prec: str, c: int, elastic: bool = False) -> Artifact:
    return Artifact(format=fmt, precision=prec, cores=c, height=28, width=28, path=f"{fmt}/{prec}{c}{elastic}",
                    sha256="0", bytes=1, elastic=elastic, tiers=[8, 16] if elastic else [c],
                    outputs=["global", "patches", "logits"])


def test_top1_gate_compares_same_tier_and_backend_and_honours_allow_drop():
    from veca_deploy.calibration.evaluate import gate

    m = Manifest(model={}, preprocess={}, artifacts=[
        _art("onnx", "fp32", 8), _art("openvino", "fp32", 8), _art("onnx", "int8", 8), _art("openvino", "int8", 8),
        _art("onnx", "fp32", 16, elastic=True), _art("onnx", "int8", 16, elastic=True)])
    res = {"onnx-fp32-c8-28x28": {"metric": "top1", "top1": 0.900},
           "openvino-fp32-c8-28x28": {"metric": "top1", "top1": 0.880},
           "onnx-int8-c8-28x28": {"metric": "top1", "top1": 0.892},       # -0.8: fine
           "openvino-int8-c8-28x28": {"metric": "top1", "top1": 0.875},   # -0.5 vs its own runtime
           "onnx-fp32-elastic-28x28": {"metric": "top1", "per_tier": {"8": 0.90, "16": 0.91}},
           "onnx-int8-elastic-28x28": {"metric": "top1", "per_tier": {"8": 0.899, "16": 0.895}}}  # -1.5 at 16
    fails = gate(m, res)
    assert len(fails) == 1 and "onnx-int8-elastic-28x28 c=16" in fails[0] and "-1.50 points" in fails[0]
    assert gate(m, res, allow_drop=2.0) == []
    res["onnx-int8-c8-28x28"]["top1"] = 0.80
    assert any("onnx-int8-c8-28x28 c=8" in f for f in gate(m, res, allow_drop=2.0))
    cos = {"onnx-int8-c8-28x28": {"metric": "cosine", "cosine": 0.985}}
    assert gate(m, cos) and not gate(m, cos, allow_drop=1.0)  # 0.99 floor lowered by 1 point


def _quantize_reference_c8(reference_bundle: Path, tmp_path: Path, cache_dir: str, **options):
    """A copy of the reference bundle with ONNX INT8 for tier 8 (gated on 1000 test images):
    (bundle folder, the INT8 artifact, FP32 top-1 of the same tier)."""
    import veca_deploy

    out = tmp_path / "ref"
    shutil.copytree(reference_bundle, out)
    m = veca_deploy.quantize(out, precisions=["int8"], calib="fashion-mnist", tiers=[8], formats=["onnx"],
                             eval_limit=1000, cache_dir=cache_dir, **options)
    fp32 = next(a for a in m.artifacts if a.id == "onnx-fp32-c8-28x28").accuracy["top1"]
    return out, next(a for a in m.artifacts if a.id == "onnx-int8-c8-28x28"), fp32


@pytest.mark.slow
@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
@pytest.mark.skipif(not (Path(__file__).parents[1] / "veca_deploy/weights/veca_tiny/model.safetensors").is_file(),
                    reason="reference weights not trained yet")
def test_reference_model_int8_within_one_point(reference_bundle, tmp_path, cache_dir):
    out, int8, fp32 = _quantize_reference_c8(reference_bundle, tmp_path, cache_dir)
    assert fp32 > 0.8 and fp32 - int8.accuracy["top1"] <= 0.01
    # the gate keeps per-image records: one bit per image, as many right as the top-1 says, and
    # INT8 and its FP32 reference name the same images (so the selector can pair them)
    from veca_deploy.compare.records import unpack_hits

    rec = int8.accuracy
    hits = unpack_hits(rec["correct"]["8"], rec["samples"])
    assert hits is not None and int(hits.sum()) == round(rec["top1"] * rec["samples"])
    ref = next(a for a in read_manifest(out).artifacts
               if a.format == int8.format and a.precision == "fp32" and a.cores == 8 and not a.elastic)
    assert ref.accuracy["sample_id"] == rec["sample_id"] and ref.accuracy["samples"] == rec["samples"]


@pytest.mark.slow
@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
@pytest.mark.skipif(not (Path(__file__).parents[1] / "veca_deploy/weights/veca_tiny/model.safetensors").is_file(),
                    reason="reference weights not trained yet")
def test_u8s8_scheme_uses_integer_kernels_and_is_refused_by_tensorrt(reference_bundle, tmp_path, cache_dir):
    """--int8-scheme u8s8: gated like S8S8, recorded, fused into ORT's QLinearMatMul, never built by TensorRT."""
    import onnx
    import onnxruntime as ort

    from veca_deploy.convert.trt_check import check_onnx_for_tensorrt

    out, art, fp32 = _quantize_reference_c8(reference_bundle, tmp_path, cache_dir, int8_scheme="u8s8")
    assert fp32 - art.accuracy["top1"] <= 0.01
    assert art.details["recipe"]["variant"] == "U8S8-reduce-range" and art.details["recipe"]["reduce_range"]
    g = onnx.load(str(out / art.path))
    zps = {i.name: i.data_type for i in g.graph.initializer}
    act_zp = [zps.get(n.input[2]) for n in g.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert act_zp and all(t == onnx.TensorProto.UINT8 for t in act_zp)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out / art.path), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearMatMul") >= 10, sorted(set(fused))
    rep = check_onnx_for_tensorrt(out / art.path)
    assert not rep.ok and any("zero point" in p for p in rep.problems)


def test_unknown_int8_scheme_is_a_usage_error():
    from veca_deploy.calibration.recipe import OrtRecipe, ort_recipe
    from veca_deploy.errors import UsageError

    with pytest.raises(UsageError, match="s8s8"):
        ort_recipe(scheme="u4")
    with pytest.raises(UsageError, match="s8s8"):  # also on top of an explicit recipe
        ort_recipe(scheme="u4", base=OrtRecipe(method="percentile"))


def test_scheme_and_method_apply_on_top_of_an_explicit_recipe():
    from veca_deploy.calibration.recipe import OrtRecipe, ort_recipe

    r = ort_recipe("entropy", "u8s8", base=OrtRecipe(op_types=("MatMul",)))
    assert (r.op_types, r.method, r.symmetric, r.reduce_range) == (("MatMul",), "entropy", False, True)
    assert ort_recipe(base=OrtRecipe(method="percentile")).method == "percentile"
