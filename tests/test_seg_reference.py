"""Issue 18 (task metrics and the dense reference model): ``veca_tiny_seg`` ships with its card,
exports by name with an in-graph argmax, quantizes to INT8 gated by mIoU, is evaluated and ranked by
mIoU, accepts a user's callable metric and per-pixel targets from an .npz, gates an error metric
(MAE) in the right direction, and the folder-segmentation example writes masks without torch."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .torchless import run_without_torch

import veca_deploy
from veca_deploy.calibration.evaluate import evaluate, gate, load_eval_data, targets_at
from veca_deploy.cli import main as cli_main
from veca_deploy.data import fashion_mnist_available
from veca_deploy.errors import InputError
from veca_deploy.metrics import MeanAbsError, MeanIoU, PerSample
from veca_deploy.preprocess import Preprocess
from veca_deploy.seg_data import NUM_SEG_CLASSES, SEG_SOURCE, SegImages

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) "
                                "is not installed: the seg data is made from it")
TIERS = [8, 32]
SMALL = 24  # held-out canvases per gate in these tests (the CLI default is 256)


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory) -> Path:
    """veca_tiny_seg at its two outer tiers, FP32 + INT8 ONNX, argmax in the graph, INT8 calibrated on
    the built-in canvases and gated by mIoU (small counts: a test, not the recipe)."""
    out = tmp_path_factory.mktemp("seg") / "b"
    veca_deploy.export("veca_tiny_seg", out=out, cores=TIERS, formats=["onnx"], precisions=["fp32", "int8"],
                       calib=SEG_SOURCE, postprocess=["argmax"],
                       calib_options={"count": 48, "allow_small": True, "eval_limit": SMALL})
    return out


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_shipped_model_and_card():
    from veca_deploy.model.checkpoint import reference_card
    from veca_deploy.model.task import TaskModel

    model = veca_deploy.create_model("veca_tiny_seg", pretrained=True)
    assert isinstance(model, TaskModel) and model.head_config["num_classes"] == NUM_SEG_CLASSES
    card = reference_card("veca_tiny_seg")
    miou = {int(c): v for c, v in card["heldout_miou"].items()}
    assert sorted(miou) == model.cfg.core_tiers
    assert all(30.0 < v <= 100.0 for v in miou.values()), miou
    assert card["recipe"]["seed"] == 0 and card["eval_samples"] >= 256 and card["machine"]
    from veca_deploy.model.train_seg import evaluate_seg

    got = evaluate_seg(model, 16, tiers=[8, 32])  # the shipped weights really segment held-out canvases
    assert all(v > 30.0 for v in got.values()), got


def test_seg_export_records_mask_and_gates_int8_by_miou(seg_bundle):
    man = _manifest(seg_bundle)
    spec = man["model"]["output_specs"]["mask"]
    assert spec["kind"] == "mask" and spec.get("postprocess") == "argmax"
    assert man["model"]["class_names"][0] == "background" and len(man["model"]["class_names"]) == NUM_SEG_CLASSES
    int8 = [a for a in man["artifacts"] if a["precision"] == "int8"]
    fp32 = {a["cores"]: a for a in man["artifacts"] if a["precision"] == "fp32" and a["format"] == "onnx"}
    assert int8 and fp32
    for a in int8:
        acc = a["accuracy"]
        assert acc["metric"] == "miou" and acc["samples"] == SMALL and acc["dataset"] == f"{SEG_SOURCE}:test"
        ref = fp32[a["cores"]]["accuracy"]["miou"]
        assert 0.3 < acc["miou"] <= 1 and (ref - acc["miou"]) * 100 <= 1.0 + 1e-9  # the gate that let it in
    assert man["calibration"]["source"].startswith(SEG_SOURCE)


def test_eval_cli_reports_miou_and_selector_ranks_by_it(seg_bundle, tmp_path, capsys):
    from veca_deploy.bundle import Bundle
    from veca_deploy.selector.candidates import accuracy

    report = tmp_path / "r.json"
    rc = cli_main(["eval", str(seg_bundle), "--limit", "16", "--no-write", "--json", str(report), "-q"])
    text = capsys.readouterr().out
    assert rc == 0 and "mIoU" in text and "gate passed" in text
    rep = json.loads(report.read_text())
    assert rep["samples"] == 16 and {r["metric"] for r in rep["results"]} == {"miou"}
    b = Bundle.open(seg_bundle)
    for art in b.artifacts:
        got = accuracy(b, art, art.tiers[0])
        assert got is not None and got == pytest.approx(art.accuracy["miou"])  # ranked by mIoU, not ignored


def test_miou_of_the_runtime_matches_the_recorded_one(seg_bundle):
    """The recorded mIoU is what the bundle's own Runtime outputs score on the same canvases."""
    man = _manifest(seg_bundle)
    art = next(a for a in man["artifacts"] if a["precision"] == "fp32" and a["cores"] == TIERS[-1])
    rec = evaluate(seg_bundle, data=SEG_SOURCE, limit=8, write=False, gate_results=False)
    mine = next(r for r in rec["results"] if r["artifact"] == art["id"])
    data = SegImages(8, "test")
    m = MeanIoU(NUM_SEG_CLASSES, "mask")
    with veca_deploy.Runtime.open(seg_bundle, tiers=[TIERS[-1]], precisions=["fp32"], backend="onnxruntime") as rt:
        for i in range(8):
            m.update(rt.predict(data[i:i + 1]).outputs, data.masks[i:i + 1])
    assert mine["miou"] == pytest.approx(m.value(), abs=2e-3)  # batch size may flip a near-tie pixel


def test_user_callable_metric(seg_bundle):
    def pixel_accuracy(outputs, targets):
        return (outputs["mask"] == targets).reshape(len(targets), -1).mean(1)

    rep = evaluate(seg_bundle, data=SEG_SOURCE, limit=8, write=False, gate_results=False, metric=pixel_accuracy)
    vals = [r for r in rep["results"] if not r.get("reference")]
    assert vals and all(r["metric"] == "pixel_accuracy" for r in vals)
    assert all(0.5 < r["pixel_accuracy"] <= 1.0 for r in vals)  # most pixels are background or items it finds
    with pytest.raises(InputError, match="non-finite"):
        evaluate(seg_bundle, data=SEG_SOURCE, limit=4, write=False, gate_results=False,
                 metric=lambda o, t: np.full(len(t), np.nan))


def test_npz_masks_at_another_size(seg_bundle, tmp_path, capsys):
    """Masks in the user's .npz at their images' size (112 px) are resized with the images; a mask
    that does not match its image is a one-line usage error."""
    data = SegImages(6, "test", size=112)
    good = tmp_path / "seg.npz"
    np.savez(good, images=data[0:6], masks=data.masks[0:6], num_classes=NUM_SEG_CLASSES)
    rep = evaluate(seg_bundle, data=good, write=False, gate_results=False)
    assert {r["metric"] for r in rep["results"]} == {"miou"} and rep["samples"] == 6
    ev = load_eval_data(good, Preprocess(), None)
    assert targets_at(ev, 0, 2, (224, 224), Preprocess()).shape == (2, 224, 224)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=data[0:6], masks=data.masks[0:5])
    rc = cli_main(["eval", str(seg_bundle), "--data", str(bad), "--no-write", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "do not match" in err and "\n" not in err


def test_error_metric_gates_by_relative_rise(seg_bundle):
    """MAE: lower is better. A 0.5 % rise passes the 1 % gate, a 20 % rise fails, an improvement passes."""
    from veca_deploy.bundle import read_manifest

    man = read_manifest(seg_bundle)
    fp32 = next(a for a in man.artifacts if a.precision == "fp32" and a.cores == TIERS[0])
    int8 = next(a for a in man.artifacts if a.precision == "int8" and a.cores == TIERS[0])

    def results(v):
        rec = lambda x: {"metric": "mae", "higher_is_better": False, "mae": x, "samples": 10}  # noqa: E731
        return {fp32.id: rec(0.100), int8.id: rec(v)}

    assert gate(man, results(0.1005), ids={int8.id}) == []
    assert gate(man, results(0.090), ids={int8.id}) == []
    fails = gate(man, results(0.120), ids={int8.id})
    assert len(fails) == 1 and "MAE" in fails[0] and "+20.00%" in fails[0]
    m = MeanAbsError("dense")
    m.update({"dense": np.ones((2, 1, 4, 4))}, np.zeros((2, 4, 4)))
    assert m.value() == 1.0 and not m.higher_is_better


def test_per_sample_metric_accumulates():
    m = PerSample(lambda o, t: (o["x"] == t).astype(float), name="hit")
    m.update({"x": np.array([1, 2])}, np.array([1, 0]))
    m.update({"x": np.array([3])}, np.array([3]))
    assert m.name == "hit" and m.value() == pytest.approx(2 / 3)


def test_postprocess_needs_a_task_source(tmp_path, capsys):
    rc = cli_main(["export", "--postprocess", "argmax", "--out", str(tmp_path / "x"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "task model" in err and "\n" not in err


def test_segment_folder_example_without_torch(seg_bundle, tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    data = SegImages(3, "test", size=160)  # not the graph's size: masks come back at 160 px
    for i in range(3):
        Image.fromarray(data[i:i + 1][0]).save(src / f"img{i}.png")
    code = textwrap.dedent(f'''
        import runpy, sys
        sys.argv = ["segment_folder.py", {str(seg_bundle)!r}, {str(src)!r}, "--out", {str(tmp_path / "masks")!r},
                    "--budget-ms", "10000", "--backend", "onnxruntime"]
        runpy.run_path({str(ROOT / "examples" / "segment_folder.py")!r}, run_name="__main__")
    ''')
    r = run_without_torch(code, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    assert "3 masks in" in r.stdout and "Traceback" not in r.stderr
    masks = sorted((tmp_path / "masks").iterdir())
    assert [m.name for m in masks] == ["img0.png", "img1.png", "img2.png"]  # no temporary file left
    for i, m in enumerate(masks):
        got = np.asarray(Image.open(m))
        assert got.shape == (160, 160) and got.max() < NUM_SEG_CLASSES
        want = data.masks[i:i + 1][0]
        assert (got == want).mean() > 0.8  # the shipped model really segments (PNG round trip included)
