"""The README quickstart's one-shot export (``veca-deploy export --precision fp32,fp16,int8 --calib
fashion-mnist``) on the built-in reference model, cut to one tier and the 300-image calibration
minimum so it stays under a minute on 2 cores: every precision in both runtimes, each with a
passing parity gate recorded in the manifest, and an OpenVINO FP16 IR whose weights really are FP16."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from veca_deploy.bundle.reader import Bundle
from veca_deploy.data import fashion_mnist, fashion_mnist_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed"),
              pytest.mark.skipif(not (Path(__file__).parents[1] / "veca_deploy/weights/veca_tiny/model.safetensors")
                                 .is_file(), reason="reference weights not trained yet")]

CALIB = 300
WANT = {f"{fmt}-{prec}-c8-28x28" for fmt in ("onnx", "openvino") for prec in ("fp32", "fp16", "int8")}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """``veca-deploy export --precision fp32,fp16,int8 --calib fashion-mnist --calib-size 300 --cores 8``
    (default formats: ONNX + OpenVINO), in-process."""
    from veca_deploy.cli import main

    out = tmp_path_factory.mktemp("quickstart") / "veca_tiny"
    code = main(["export", "--precision", "fp32,fp16,int8", "--calib", "fashion-mnist", "--calib-size", str(CALIB),
                 "--cores", "8", "--out", str(out), "-q"])
    assert code == 0
    return out


def test_quickstart_export_writes_every_precision_with_parity(quickstart):
    import onnx

    from veca_deploy.compare.validate import validate_bundle

    b = Bundle.open(quickstart)
    arts = {a.id: a for a in b.artifacts}
    assert set(arts) == WANT
    m = b.manifest
    assert m.model["outputs"] == ["global", "patches", "logits"] and not m.model.get("random_weights")
    for a in arts.values():
        b.path_of(a)  # sha256 and size as recorded
        p = a.parity
        assert p["passed"] is True and p["failures"] == [] and p["reference"] == "pytorch-fp32", a.id
        assert p["images"] >= 1 and p["precision"] == a.precision and p["cores"] == 8
        assert set(p["outputs"]) == {"global", "patches", "logits"}
        for name, o in p["outputs"].items():
            assert np.isfinite([o["max_abs"], o["rel"], o["cosine"]]).all(), (a.id, name)
            assert o["cosine"] >= 0.99 and 0 <= o["rel"] < (1e-4 if a.precision == "fp32" else 0.1), (a.id, name, o)
        assert 0.75 <= p["top1_agreement"] <= 1.0
    # reduced precision is really reduced: further from PyTorch FP32 than the FP32 graph, INT8 furthest
    rel = {a.id: max(o["rel"] for o in a.parity["outputs"].values()) for a in arts.values()}
    for fmt in ("onnx", "openvino"):
        assert rel[f"{fmt}-fp32-c8-28x28"] < rel[f"{fmt}-fp16-c8-28x28"] < rel[f"{fmt}-int8-c8-28x28"]

    cal = m.calibration
    assert cal["count"] == CALIB and cal["requested"] == CALIB and cal["source"] == "fashion-mnist:train"
    assert cal["forced_below_minimum"] is False and cal["disjoint_from_eval"] is True
    assert {"fp16", "int8"} <= set(cal["precisions"])
    assert {"onnx_int8", "openvino_int8", "onnx_fp16"} <= set(cal["recipes"])
    # the accuracy gate ran on held-out labelled images: top-1 within a point of FP32, same runtime
    for fmt in ("onnx", "openvino"):
        ref = arts[f"{fmt}-fp32-c8-28x28"].accuracy
        assert ref["metric"] == "top1" and ref["dataset"] == "fashion-mnist:test" and ref["top1"] > 0.8
        for prec in (("fp16", "int8") if fmt == "onnx" else ("int8",)):
            acc = arts[f"{fmt}-{prec}-c8-28x28"].accuracy
            assert acc["samples"] == ref["samples"] > 0 and ref["top1"] - acc["top1"] <= 0.01, (fmt, prec, acc)

    q = onnx.load(str(quickstart / arts["onnx-int8-c8-28x28"].path))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 10
    h = onnx.load(str(quickstart / arts["onnx-fp16-c8-28x28"].path))
    big = [i for i in h.graph.initializer if int(np.prod(i.dims)) >= 1024]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)

    results = validate_bundle(quickstart)  # the gates again, from the files, in each runtime
    assert sorted(r.artifact for r in results) == sorted(WANT)
    assert all(r.ok and not r.skipped for r in results), [(r.artifact, r.detail) for r in results if not r.ok]


def _float_consts(xml: Path) -> list[tuple[str, int]]:
    """(element_type, bytes) of every floating-point Const of an IR."""
    out = []
    for layer in ET.parse(xml).getroot().iter("layer"):
        if layer.get("type") == "Const":
            data = layer.find("data")
            if data is not None and data.get("element_type", "").startswith(("f", "bf")):
                out.append((data.get("element_type"), int(data.get("size"))))
    return out


def test_openvino_fp16_ir_has_fp16_weights_and_passes_parity(quickstart):
    from veca_deploy.compare.validate import validate_bundle
    from veca_deploy.runtimes import create_runner

    b = Bundle.open(quickstart)
    f16, f32 = b.get("openvino-fp16-c8-28x28"), b.get("openvino-fp32-c8-28x28")
    assert f16.details["weights"] == "fp16-compressed"
    consts16, consts32 = _float_consts(quickstart / f16.path), _float_consts(quickstart / f32.path)
    weights16 = [(t, n) for t, n in consts16 if n >= 1024]  # the weight matrices, not scalars
    assert len(weights16) >= 20 and {t for t, _ in weights16} == {"f16"}
    assert {t for t, n in consts32 if n >= 1024} == {"f32"}
    # the same weights at half the bytes, in the files themselves
    assert sum(n for _, n in weights16) == pytest.approx(sum(n for t, n in consts32 if n >= 2048) / 2, rel=0.02)
    bin16, bin32 = (quickstart / f16.files[0].path).stat().st_size, (quickstart / f32.files[0].path).stat().st_size
    assert bin16 == f16.files[0].bytes and 0.45 < bin16 / bin32 < 0.55

    # rounded weights: close to the FP32 IR on real images, but not identical (both run f32 compute)
    images, _ = fashion_mnist("test")
    x = b.preprocess(list(images[:16]), (28, 28))
    with create_runner("openvino", b.path_of(f16), inference_precision="f32") as r16, \
            create_runner("openvino", b.path_of(f32), inference_precision="f32") as r32:
        y16, y32 = r16.infer({"images": x}), r32.infer({"images": x})
    for k in ("global", "logits"):
        a, ref = y16[k].astype(np.float64), y32[k].astype(np.float64)
        rel = np.abs(a - ref).max() / np.abs(ref).max()
        assert 1e-6 < rel < 1e-2, (k, rel)
    assert (y16["logits"].argmax(-1) == y32["logits"].argmax(-1)).mean() >= 0.9

    assert f16.parity["passed"] is True and f16.parity["precision"] == "fp16"
    res = {r.artifact: r for r in validate_bundle(quickstart, backends="openvino")}
    assert res["openvino-fp16-c8-28x28"].ok and "fp16 gate" in res["openvino-fp16-c8-28x28"].detail
