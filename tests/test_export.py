"""Export: bundles, parity gates, elastic graphs, metadata, inspect/validate, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file

import veca_deploy
from veca_deploy.bundle import read_manifest
from veca_deploy.cli import main as cli_main
from veca_deploy.errors import ExportError, OutputExistsError, UsageError
from veca_deploy.runtimes import create_runner
from veca_deploy.runtimes.base import core_select


def test_author_checkpoint_export_matches_author_outputs(tmp_path, golden_dir):
    """ONNX Runtime on the exported graph vs the authors' PyTorch outputs (golden), C=16 and C=8."""
    meta = json.loads((golden_dir / "cases.json").read_text())
    cases = load_file(str(golden_dir / "cases.safetensors"))
    out = tmp_path / "b"
    wanted = [c for c in meta["cases"] if c["active_cores"] in (8, 16)]
    sizes = sorted({(c["height"], c["width"]) for c in wanted})
    veca_deploy.export(str(golden_dir / "checkpoint.pt"), out=out, cores=[8, 16], image_sizes=sizes,
                       formats=["onnx"], precisions=["fp32"])
    m = read_manifest(out)
    for c in wanted:
        art = m.find("onnx", "fp32", c["active_cores"], (c["height"], c["width"]), elastic=False)[0]
        with create_runner("onnxruntime", out / art.path) as r:
            got = r.infer({"images": cases[f"case{c['case']}.input"]})
        np.testing.assert_allclose(got["global"], cases[f"case{c['case']}.global"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["patches"], cases[f"case{c['case']}.patches"], atol=1e-4, rtol=0)
    assert any(h != w for h, w in sizes)  # a non-square tier is covered


def test_bundle_manifest_contract(tiny_bundle):
    m = read_manifest(tiny_bundle)
    assert m.schema_version == 1
    assert m.model["random_weights"] is True and m.model["source"] == "registry:veca_tiny"
    assert set(m.preprocess) >= {"mean", "std", "color_order", "resize"}
    assert {"torch", "onnx", "onnxruntime", "openvino"} <= set(m.versions)
    kinds = {(a.format, a.precision, a.elastic) for a in m.artifacts}
    assert kinds == {("onnx", "fp32", False), ("openvino", "fp32", False), ("onnx", "fp32", True)}
    assert sorted({c for c, _, _ in m.tiers()}) == [8, 16, 24, 32]
    for a in m.artifacts:
        d = a.to_dict()
        for key in ("format", "precision", "cores", "height", "width", "path", "sha256", "bytes", "parity", "flops", "params"):
            assert key in d
        assert (tiny_bundle / a.path).stat().st_size == a.bytes
        assert a.flops > 0 and a.params == m.model["parameters"]
    flops = {a.cores: a.flops for a in m.find("onnx", "fp32", elastic=False)}
    assert flops[8] < flops[16] < flops[32]


def test_elastic_graph_serves_every_tier_with_one_set_of_weights(tiny_bundle):
    m = read_manifest(tiny_bundle)
    el = m.find("onnx", "fp32", elastic=True)[0]
    assert el.tiers == [8, 16, 24, 32] and set(el.parity) == {"8", "16", "24", "32"}
    per_tier = m.find("onnx", "fp32", elastic=False)
    assert el.bytes <= 1.1 * min(a.bytes for a in per_tier)
    x = np.random.default_rng(0).standard_normal((2, 3, 28, 28)).astype(np.float32)
    with create_runner("onnxruntime", tiny_bundle / el.path) as r:
        for a in per_tier:
            with create_runner("onnxruntime", tiny_bundle / a.path) as fixed:
                want = fixed.infer({"images": x})
            got = r.infer({"images": x, "core_select": core_select(a.cores)})
            for k in want:
                np.testing.assert_allclose(got[k], want[k], atol=1e-5)


def test_tier_metadata_inside_files(tiny_bundle):
    from veca_deploy.convert.onnx_graph import read_metadata
    from veca_deploy.convert.openvino_ir import read_rt_info

    m = read_manifest(tiny_bundle)
    a = m.find("onnx", "fp32", 16, elastic=False)[0]
    meta = read_metadata(tiny_bundle / a.path)
    assert meta["veca.cores"] == "16" and meta["veca.height"] == "28" and meta["veca.precision"] == "fp32"
    ov = m.find("openvino", "fp32", 24)[0]
    info = read_rt_info(tiny_bundle / ov.path)
    assert info.get("cores") == "24" and info.get("model") == "veca_tiny"


def test_graph_quality(tiny_bundle):
    m = read_manifest(tiny_bundle)
    a = m.find("onnx", "fp32", 8, elastic=False)[0]
    g = onnx.load(str(tiny_bundle / a.path))
    ops = [n.op_type for n in g.graph.node]
    for banned in ("Dropout", "RandomUniform", "RandomNormal", "RandomUniformLike", "Range", "Trilu"):
        assert banned not in ops, banned
    # patch RoPE tables are constants: only the per-image core angles need Cos/Sin
    # (one pair per layer >= 1, plus at most one for layer 0)
    assert ops.count("Cos") <= 4 and ops.count("Sin") <= 4
    assert a.details["simplify"]["nodes_after"] < a.details["simplify"]["nodes_before"]
    assert g.opset_import[0].version == 17


def _initializer_shapes(g) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(i.dims) for i in g.graph.initializer}


def test_graph_form_for_backends_that_fuse(tiny_bundle):
    """The graph form docs/performance.md measured on OpenVINO: RoPE tables of the patches are
    constants (Sin/Cos only on the cores' rows), SwiGLU's fc1 is two products (no split of its
    activation), each attention is reshape -> transpose -> attention with nothing between, and the
    blocks' LayerNorms are bare normalisations (their affine folded into the products after them)."""
    from onnx import shape_inference

    m = read_manifest(tiny_bundle)
    cfg = m.model["config"]
    d, hm, layers = cfg["hidden_dim"], int(cfg["hidden_dim"] * cfg["mlp_ratio"]), cfg["num_layers"]
    a = m.find("onnx", "fp32", 8, elastic=False)[0]
    g = shape_inference.infer_shapes(onnx.load(str(tiny_bundle / a.path)))
    dims = {v.name: [x.dim_value for x in v.type.tensor_type.shape.dim] for v in g.graph.value_info}
    trig = [n for n in g.graph.node if n.op_type in ("Sin", "Cos")]
    assert trig and all(dims[n.output[0]][-2] == 8 for n in trig), [dims.get(n.output[0]) for n in trig]
    inits = _initializer_shapes(g)
    products = [inits.get(n.input[1]) for n in g.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert products.count((d, hm)) == 2 * layers, "fc1 as its u and v halves, two products per block"
    assert (d, 2 * hm) not in products and (2 * hm, d) not in products
    assert not [n for n in g.graph.node if n.op_type == "Split"]
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in g.graph.initializer}
    norms = [n for n in g.graph.node if n.op_type == "LayerNormalization"]
    bare = [n for n in norms if np.all(arrays[n.input[1]] == 1) and np.all(arrays[n.input[2]] == 0)]
    assert len(bare) == 2 * layers and len(norms) > len(bare)  # final_norm keeps its (random) affine


def test_latency_weights_leave_no_constant_parameter():
    """--random-weights / benchmarks: nothing a simplifier could fold away (zero biases, unit scales)."""
    import torch

    from veca_deploy.model.registry import create_model, latency_weights

    torch.manual_seed(0)
    m = create_model("veca_tiny")
    constant = [n for n, p in m.named_parameters() if bool((p == p.reshape(-1)[0]).all())]
    assert "blocks.0.fc1.bias" in constant and "pos_alpha" in constant  # the training init
    latency_weights(m, seed=1)
    assert [n for n, p in m.named_parameters() if bool((p == p.reshape(-1)[0]).all())] == []
    torch.manual_seed(0)
    again = latency_weights(create_model("veca_tiny"), seed=1)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), again.parameters()))  # seeded


def test_registry_name_needs_random_weights(tmp_path):
    with pytest.raises(UsageError, match="--random-weights"):
        veca_deploy.export("veca_small", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_existing_output_is_kept_without_force(tiny_bundle, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_bundle, out)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(OutputExistsError):
        veca_deploy.export("veca_tiny", random_weights=True, out=out, cores=[8], formats=["onnx"], precisions=["fp32"])
    assert (out / "manifest.json").read_bytes() == before


def test_failed_parity_gate_writes_nothing(tmp_path, monkeypatch):
    from veca_deploy.compare import gates

    # no real graph is bit-exact: the gate must trip
    monkeypatch.setitem(gates.GATES, "fp32", gates.Gate("fp32", max_rel=0.0))
    with pytest.raises(ExportError, match="parity gate failed.*onnx/c8_28x28.onnx"):
        veca_deploy.export("veca_tiny", random_weights=True, out=tmp_path / "b", cores=[8], formats=["onnx"],
                           precisions=["fp32"])
    assert os.listdir(tmp_path) == []  # no bundle, no staging leftovers


def test_bad_export_arguments(tmp_path):
    for kw, msg in [(dict(cores=[12]), "not a tier"), (dict(image_sizes=[(30, 28)]), "multiple of the patch"),
                    (dict(formats=["tflite"]), "unknown format"), (dict(precisions=["int4"]), "unknown precision"),
                    (dict(precisions=["int8"]), "calibration data")]:
        with pytest.raises(UsageError, match=msg):
            veca_deploy.export("veca_tiny", random_weights=True, out=tmp_path / "b", **kw)
    assert not (tmp_path / "b").exists()


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_dynamo_exporter_and_static_batch(tmp_path):
    out = tmp_path / "d"
    veca_deploy.export("veca_tiny", random_weights=True, out=out, cores=[16], formats=["onnx"], precisions=["fp32"],
                       exporter="dynamo", batch=2, opset=18)
    a = read_manifest(out).artifacts[0]
    assert a.batch == 2 and a.details["exporter"] == "dynamo"
    g = onnx.load(str(out / a.path))
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


# ------------------------------------------------------------------------------- CLI
def _cli(*args) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "veca_deploy.cli", *args], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_cli_inspect_and_validate(tiny_bundle):
    assert cli_main(["inspect", str(tiny_bundle)]) == 0
    code, text = _cli("inspect", str(tiny_bundle), "--json")
    assert code == 0 and json.loads(text)["schema_version"] == 1
    code, text = _cli("validate", str(tiny_bundle))
    assert code == 0, text
    assert "valid" in text


def test_validate_names_a_tampered_file(tiny_bundle, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(tiny_bundle, out)
    m = read_manifest(out)
    victim = m.find("openvino", "fp32", 16)[0]
    bin_path = out / victim.files[0].path
    data = bytearray(bin_path.read_bytes())
    data[100] ^= 0xFF
    bin_path.write_bytes(bytes(data))
    code, text = _cli("validate", str(out))
    assert code == 5
    assert "openvino-fp32-c16-28x28" in text and "sha256 mismatch" in text
    assert "Traceback" not in text
    os.remove(out / m.find("onnx", "fp32", 8, elastic=False)[0].path)
    code, text = _cli("validate", str(out))
    assert code == 5 and "missing file" in text


def test_cli_export_refuses_existing_and_bad_input(tiny_bundle, tmp_path):
    code, text = _cli("export", "veca_tiny", "--random-weights", "--out", str(tiny_bundle), "-q")
    assert code == 10 and "exists" in text and "Traceback" not in text
    code, text = _cli("export", "/no/such/ckpt.pt", "--out", str(tmp_path / "z"), "-q")
    assert code == 2 and "neither a registry name" in text
    code, text = _cli("export", "--image-size", "abc", "--out", str(tmp_path / "z"), "-q")
    assert code == 2 and "image size" in text
    assert not (tmp_path / "z").exists()


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_dynamo_exporter_keeps_a_dynamic_batch(tmp_path):
    """torch.export specializes a size-1 example dimension: a dynamic batch must stay dynamic and
    serve batches of 1 and 3 with the same per-image outputs."""
    import onnxruntime as ort

    out = tmp_path / "d"
    veca_deploy.export("veca_tiny", random_weights=True, out=out, cores=[16], formats=["onnx"], precisions=["fp32"],
                       exporter="dynamo", opset=18)
    a = read_manifest(out).artifacts[0]
    dim = onnx.load(str(out / a.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim.HasField("dim_value"), dim
    s = ort.InferenceSession(str(out / a.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 28, 28)).astype(np.float32)
    name = s.get_inputs()[0].name
    three = s.run(None, {name: x})[0]
    one = s.run(None, {name: x[1:2]})[0]
    assert three.shape[0] == 3 and np.allclose(three[1:2], one, atol=1e-4)


def test_openvino_ir_lowers_swish_to_the_tanh_form(tmp_path, tiny_bundle):
    """SiLU (``x * Sigmoid(x)``, which OpenVINO fuses into Swish) reaches the IR as
    ``h * (1 + tanh h)``, h = x / 2: the same function (checked against numpy over a wide range,
    tails included), no Swish left for the CPU plugin to fuse into a product's epilogue; off on
    request. The bundle's own IRs are lowered too."""
    import openvino as ov
    from onnx import TensorProto, helper

    from veca_deploy.convert.openvino_ir import export_openvino

    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                          "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])])
    src = tmp_path / "silu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    x = np.linspace(-30, 30, 256, dtype=np.float32).reshape(4, 64)
    want = x / (1 + np.exp(-x.astype(np.float64)))
    core = ov.Core()
    for lowered in (True, False):
        xml = tmp_path / f"{lowered}.xml"
        export_openvino(src, xml, swish_as_tanh=lowered)
        m = core.read_model(str(xml))
        kinds = [op.get_type_name() for op in m.get_ops()]
        assert ("Swish" in kinds) != lowered and ("Tanh" in kinds) == lowered
        got = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    bundled = core.read_model(str(tiny_bundle / "openvino/fp32/c8_28x28.xml"))
    assert "Swish" not in {op.get_type_name() for op in bundled.get_ops()}
