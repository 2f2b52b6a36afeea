"""Calibration data readers, refusals, the statistics cache, and the ONNX INT8/FP16 converters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veca_deploy.calibration.data import CalibrationReader, load_calibration
from veca_deploy.calibration.recipe import Fp16Recipe, OrtRecipe
from veca_deploy.data import fashion_mnist_available
from veca_deploy.errors import QuantizationError
from veca_deploy.preprocess import Preprocess

PRE = Preprocess(mean=(0.286,) * 3, std=(0.353,) * 3)
needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


def test_reader_protocol_batches_rewinds_and_cycles_extras():
    x = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    r = CalibrationReader(x, batch_size=4, extra=[{"k": np.zeros(1)}, {"k": np.zeros(2)}])
    feeds = []
    while (f := r.get_next()) is not None:
        feeds.append(f)
    assert [len(f["images"]) for f in feeds] == [4, 4, 2] and len(r) == 3
    assert [len(f["k"]) for f in feeds] == [1, 2, 1]  # tiers cycle batch by batch
    assert r.get_next() is None
    r.rewind()
    assert np.array_equal(r.get_next()["images"], x[:4])
    assert sum(len(f["images"]) for f in r) == 10  # iterating rewinds first


@needs_fmnist
def test_fashion_mnist_sample_is_seeded_train_only_and_recorded():
    a = load_calibration("fashion-mnist", PRE, (28, 28))
    b = load_calibration("fashion-mnist", PRE, (28, 28))
    c = load_calibration("fashion-mnist", PRE, (28, 28), seed=1)
    assert a.count == 512 and a.images.shape == (512, 3, 28, 28) and a.images.dtype == np.float32
    assert a.digest == b.digest != c.digest
    rec = a.record()
    assert rec["split"] == "train" and rec["eval_split"] == "test" and rec["source"] == "fashion-mnist:train"
    assert rec["forced_below_minimum"] is False and isinstance(rec["identical_to_test_images"], int)
    assert load_calibration("fashion-mnist", PRE, (14, 14), count=300).images.shape == (300, 3, 14, 14)


@needs_fmnist
def test_too_few_images_needs_force_and_is_recorded():
    with pytest.raises(QuantizationError, match="minimum 300.*--allow-small-calib"):
        load_calibration("fashion-mnist", PRE, (28, 28), count=100)
    forced = load_calibration("fashion-mnist", PRE, (28, 28), count=100, force=True)
    assert forced.count == 100 and forced.record()["forced_below_minimum"] is True


def test_arrays_accepted_and_mismatches_refused(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (320, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    cal = load_calibration(tmp_path / "grey.npy", PRE, (28, 28), count=310)
    assert cal.images.shape == (310, 3, 28, 28) and cal.kind == "array"
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 255, (300, 28, 28, 3), dtype=np.uint8))
    assert load_calibration(tmp_path / "rgb.npz", PRE, (28, 28)).count == 300
    norm = rng.standard_normal((300, 3, 28, 28)).astype(np.float32)
    assert np.array_equal(load_calibration(norm, PRE, (28, 28)).images, norm)  # already normalized: untouched
    cases = [
        (rng.integers(0, 255, (300, 28, 28, 4), dtype=np.uint8), "C in \\(1, 3\\)"),  # RGBA
        (rng.standard_normal((300, 1, 28, 28)).astype(np.float32), "3 channels"),
        (np.zeros((0, 28, 28), np.uint8), "empty"),
        (np.zeros((300, 2, 2), np.uint8), "cannot be resized"),
        (np.zeros((300, 28, 28), np.float64), "dtype float64"),
    ]
    for arr, msg in cases:
        with pytest.raises(QuantizationError, match=msg):
            load_calibration(arr, PRE, (28, 28), force=True)
    with pytest.raises(QuantizationError, match="not found"):
        load_calibration(tmp_path / "missing", PRE, (28, 28))


def test_image_folder_recursive_with_force(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "imgs" / "sub" / "g.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    with pytest.raises(QuantizationError, match="only 5 images"):
        load_calibration(tmp_path / "imgs", PRE, (28, 28))
    cal = load_calibration(tmp_path / "imgs", PRE, (28, 28), force=True)
    assert cal.count == 5 and cal.kind == "folder" and cal.images.shape == (5, 3, 28, 28)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizationError, match="no .jpg"):
        load_calibration(tmp_path / "empty", PRE, (28, 28), force=True)


@needs_fmnist
def _needs_calibration_cache() -> None:
    from veca_deploy.calibration.onnx_quant import calibration_cache_supported

    if not calibration_cache_supported():
        import onnxruntime

        pytest.skip(f"onnxruntime {onnxruntime.__version__} has no quantize_static(calibration_cache_path=) "
                    "(1.27+; Python 3.10 tops out at 1.23): it calibrates every time")


def test_int8_cache_hit_is_fast_and_changed_data_is_not_stale(tiny_bundle, tmp_path, monkeypatch):
    """A hit reuses the stored ranges (ORT's calibrator is never run: counted, not timed), gives
    the identical graph, and changed data is a miss."""
    _needs_calibration_cache()
    import importlib

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function

    from veca_deploy.calibration.onnx_quant import quantize_onnx_int8
    from veca_deploy.convert.trt_check import check_onnx_for_tensorrt

    calls: list[int] = []
    real = ort_quantize.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator", lambda *a, **k: calls.append(1) or real(*a, **k))
    src = tiny_bundle / "onnx" / "c8_28x28.onnx"
    cal = load_calibration("fashion-mnist", PRE, (28, 28), count=300)
    first = quantize_onnx_int8(src, tmp_path / "a.onnx", cal, OrtRecipe(), cache_dir=str(tmp_path / "cache"))
    calibrated_first = len(calls)
    second = quantize_onnx_int8(src, tmp_path / "b.onnx", cal, OrtRecipe(), cache_dir=str(tmp_path / "cache"))
    assert (first["calibration_cache"], second["calibration_cache"]) == ("miss", "hit")
    assert first["cache_key"] == second["cache_key"]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert calibrated_first >= 1 and len(calls) == calibrated_first, "a cache hit must not calibrate again"
    changed = load_calibration("fashion-mnist", PRE, (28, 28), count=300, seed=7)
    third = quantize_onnx_int8(src, tmp_path / "c.onnx", changed, OrtRecipe(), cache_dir=str(tmp_path / "cache"))
    assert third["calibration_cache"] == "miss" and third["cache_key"] != first["cache_key"]
    # the S8S8 symmetric default is what TensorRT strongly typed builds accept
    rep = check_onnx_for_tensorrt(tmp_path / "a.onnx")
    assert rep.ok, rep.problems[:3]
    assert rep.op_counts.get("QuantizeLinear", 0) > 10


def test_fp16_keeps_io_float32_and_layernorm_fp32(tiny_bundle, tmp_path):
    import onnx

    from veca_deploy.calibration.onnx_quant import convert_onnx_fp16

    info = convert_onnx_fp16(tiny_bundle / "onnx" / "c8_28x28.onnx", tmp_path / "h.onnx", Fp16Recipe())
    m = onnx.load(str(tmp_path / "h.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in m.graph.output)
    assert "LayerNormalization" in info["kept_fp32_ops_present"] and info["fp16_initializers"] > 0
    types = {vi.name: vi.type.tensor_type.elem_type for vi in m.graph.value_info}
    ln_outs = [n.output[0] for n in m.graph.node if n.op_type == "LayerNormalization"]
    assert ln_outs and all(types.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for o in ln_outs)
    assert {p.key: p.value for p in m.metadata_props}["veca.precision"] == "fp16"


def test_unknown_method_is_a_usage_error():
    from veca_deploy.errors import UsageError

    with pytest.raises(UsageError, match="minmax"):
        OrtRecipe(method="kl")


def test_int8_with_relative_paths_and_cache(tiny_bundle, tmp_path, monkeypatch):
    """Regression: `export --out bundles/x` (a relative bundle path) failed in INT8 because ORT's
    pre-processing runs in a temporary working directory; relative inputs, outputs and cache
    folders must all resolve against the caller's directory."""
    _needs_calibration_cache()
    import shutil

    from veca_deploy.calibration.onnx_quant import quantize_onnx_int8

    (tmp_path / "rel").mkdir()
    shutil.copyfile(tiny_bundle / "onnx" / "c8_28x28.onnx", tmp_path / "rel" / "a.onnx")
    monkeypatch.chdir(tmp_path)
    cal = load_calibration(np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8), PRE, (28, 28),
                           count=8, force=True)
    info = quantize_onnx_int8(Path("rel/a.onnx"), Path("rel/b.onnx"), cal, OrtRecipe(), cache_dir="cache")
    assert info["calibration_cache"] == "miss" and (tmp_path / "rel" / "b.onnx").stat().st_size > 0
    assert list((tmp_path / "cache").rglob("*.json")), "calibration ranges must land in ./cache, not a temp dir"
    again = quantize_onnx_int8(Path("rel/a.onnx"), Path("rel/c.onnx"), cal, OrtRecipe(), cache_dir="cache")
    assert again["calibration_cache"] == "hit"


def test_high_resolution_cosine_gate_runs_on_held_out_photos(tmp_path):
    """From 512 px the default data of a feature-cosine gate is held-out real photos: crops of a
    seed calibration may not use, so the gate never sees a calibration crop."""
    from veca_deploy.bundle.manifest import Artifact
    from veca_deploy.calibration.data import EVAL_PHOTO_SEED, PHOTOS
    from veca_deploy.calibration.evaluate import DEFAULT_DATA, cosine_gate_data, load_eval_data
    from veca_deploy.data import photo_sources

    if not photo_sources():
        pytest.skip("no real photos installed (scikit-image or Debian mate-backgrounds)")
    art = lambda side: Artifact(format="onnx", precision="int8", cores=8, height=side, width=side,  # noqa: E731
                                path="x.onnx", sha256="0" * 64, bytes=1, id=f"a{side}", tiers=[8])
    assert cosine_gate_data(DEFAULT_DATA, [art(224)]) == DEFAULT_DATA
    assert cosine_gate_data(DEFAULT_DATA, [art(224), art(512)]) == PHOTOS
    assert cosine_gate_data("my-folder", [art(1024)]) == "my-folder"  # what the user names wins
    ev = load_eval_data(PHOTOS, Preprocess(), 6)
    assert len(ev.raw) == 6 and ev.labels is None and "held-out" in ev.name
    cal = load_calibration(PHOTOS, Preprocess(), (64, 64), count=300)
    held = [x.tobytes() for x in ev.raw]
    assert not {x.tobytes() for x in cal.raw[0:40]} & set(held)
    with pytest.raises(QuantizationError, match="held-out photo stream"):
        load_calibration(PHOTOS, Preprocess(), (64, 64), count=300, seed=EVAL_PHOTO_SEED)


def test_failed_int8_gate_names_calibration_data_unlike_the_gate_images():
    """The hint a failed INT8 gate gives comes from measured input statistics: N(0,1) noise
    calibrated and photos checked is named as the likely cause; photos against photos is not."""
    from veca_deploy.calibration.evaluate import load_eval_data
    from veca_deploy.calibration.quantize import likely_cause
    from veca_deploy.data import photo_sources

    if not photo_sources():
        pytest.skip("no real photos installed (scikit-image or Debian mate-backgrounds)")
    pre = Preprocess()
    ev = load_eval_data("photos", pre, 8)
    noise = np.random.default_rng(0).normal(0, 1, (16, 3, 64, 64)).astype(np.float32)
    bad = likely_cause(load_calibration(noise, pre, (64, 64), force=True), ev, pre)
    assert bad.startswith("likely cause: the calibration data is unlike") and ev.name in bad, bad
    good = likely_cause(load_calibration("photos", pre, (64, 64), count=300), ev, pre)
    assert "unlike" not in good and "agree" in good and "recipe" in good, good
    few = likely_cause(load_calibration("photos", pre, (64, 64), count=20, force=True), ev, pre)
    assert "only 20 calibration images" in few


def test_calib_resolution_needs_int8_and_a_side():
    from veca_deploy.calibration.quantize import QuantizePlan
    from veca_deploy.errors import UsageError

    with pytest.raises(UsageError, match="applies to int8"):
        QuantizePlan.from_options(precisions=["fp16"], calib_resolution=28)
    with pytest.raises(UsageError, match="side in px"):
        QuantizePlan.from_options(precisions=["int8"], calib="fashion-mnist", calib_resolution=0)


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_onnx_int8_reuses_ranges_calibrated_at_a_lower_resolution(tmp_path):
    """--calib-resolution: the 42 px graph is quantized with the 28 px graph's activation ranges
    (the same scales, every tensor covered), recorded per artifact and in the calibration record,
    and gated like any artifact; a side the bundle lacks, or a larger one, is refused up front."""
    import onnx
    from onnx import numpy_helper

    import veca_deploy
    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.calibration.quantize import quantize
    from veca_deploy.errors import UsageError

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (Debian dataset-fashion-mnist)")
    b = tmp_path / "b"
    veca_deploy.export("veca_tiny", random_weights=True, out=b, cores=[8], image_sizes=[(28, 28), (42, 42)],
                       formats=["onnx"], precisions=["fp32"])
    for side, match in ((35, "no FP32 ONNX graph at 35x35.*--image-size 35"), (112, "no static ONNX graph larger than 112x112")):
        with pytest.raises(UsageError, match=match):
            quantize(b, calib="fashion-mnist", count=64, allow_small=True, formats=["onnx"], calib_resolution=side)
    m = quantize(b, calib="fashion-mnist", count=64, allow_small=True, formats=["onnx"], calib_resolution=28)
    assert read_manifest(b).calibration["onnx_ranges_from_side"] == 28
    lo = next(a for a in m.artifacts if a.precision == "int8" and a.height == 28)
    hi = next(a for a in m.artifacts if a.precision == "int8" and a.height == 42)
    fp_lo = next(a for a in m.artifacts if a.precision == "fp32" and a.height == 28)
    assert "ranges_from" not in lo.details and lo.details["quantization"]["calibration_cache"] in ("miss", "hit")
    assert hi.details["ranges_from"] == {"artifact": fp_lo.id, "size": "28x28",
                                         "calibration_sha256": lo.details["calibration_sha256"]}
    assert hi.details["quantization"]["calibration_cache"] == "ranges given"
    assert hi.details["quantization"]["quantize_linear_nodes"] == lo.details["quantization"]["quantize_linear_nodes"]
    assert hi.accuracy and lo.accuracy  # gated

    def scales(a):
        g = onnx.load(str(b / a.path)).graph
        inits = {t.name: t for t in g.initializer}
        return {n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]).ravel()[0])
                for n in g.node if n.op_type == "QuantizeLinear" and n.input[1] in inits
                and n.input[0] not in inits}

    s_lo, s_hi = scales(lo), scales(hi)
    assert s_lo and set(s_lo) == set(s_hi)
    assert all(s_lo[k] == pytest.approx(s_hi[k], rel=1e-6) for k in s_lo)


def test_calibration_reports_images_read_per_pass():
    """Long calibrations never look hung: ORT's reader and NNCF's samples report the images
    handed out after every batch; the ticker turns that into throttled lines, the last of each
    pass always, with the pass number from NNCF's second pass on."""
    from veca_deploy.calibration.quantize import calibration_ticker

    x = np.random.default_rng(0).integers(0, 255, (40, 28, 28), dtype=np.uint8)
    cal = load_calibration(x, Preprocess(), (28, 28), force=True)
    seen, lines = [], []
    r = cal.reader(batch_size=16, progress=lambda d, t: seen.append((d, t)))
    assert sum(1 for _ in r) == 3 and seen == [(16, 40), (32, 40), (40, 40)]
    tick = calibration_ticker(lambda step, advance=0: lines.append(step), "onnx int8 c8 28x28", every_s=3600)
    s = cal.samples(tick)
    assert sum(1 for _ in s) == 40 and sum(1 for _ in s) == 40  # two statistics passes
    assert lines == ["onnx int8 c8 28x28: 40/40 calibration images",
                     "onnx int8 c8 28x28: 40/40 calibration images (pass 2)"]
    every = []
    t2 = calibration_ticker(lambda step, advance=0: every.append(step), "x", every_s=0.0)
    for _ in cal.reader(batch_size=16, progress=t2):
        pass
    assert every == ["x: 16/40 calibration images", "x: 32/40 calibration images", "x: 40/40 calibration images"]
