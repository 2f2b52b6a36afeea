"""Calibration never holds the whole set: images are decoded and preprocessed one batch at a
time (issue 14). Peaks are Python-heap peaks from tracemalloc (numpy reports its buffers to it),
compared with what the materialised float32 set would take, measured in the same run."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from veca_deploy.calibration.data import ImageFiles, MappedRows, load_calibration
from veca_deploy.preprocess import Preprocess

SIZE = (512, 512)
N = 128  # 128 x 3 x 512 x 512 float32 = 403 MB materialised: 8 preprocessing batches of 16 (50 MB)
BATCH_BYTES = 16 * 3 * SIZE[0] * SIZE[1] * 4
#: what streaming may hold at once: the batch being read, the one just handed out, decoded
#: source images and per-image temporaries (about 3 batches measured), never the set
LIMIT = 4 * BATCH_BYTES


def _peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def _photos(n: int, h: int = 600, w: int = 800) -> np.ndarray:
    """Smooth, distinct synthetic RGB images (cheap to encode), larger than the model size."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        for c in range(3):
            out[i, ..., c] = (xx * (i + 1) + yy * 3 + 60 * c) % 256
    return out


def _drain(cal) -> int:
    seen = 0
    for feed in cal.reader(batch_size=16):
        seen += len(feed["images"])
    return seen


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pil = pytest.importorskip("PIL.Image", reason="reading a folder of images needs Pillow")
    d = tmp_path_factory.mktemp("photos")
    for i, img in enumerate(_photos(N)):
        pil.fromarray(img).save(d / f"{i:03d}.png", compress_level=1)
    return d


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_folder_calibration_decodes_and_preprocesses_per_batch(folder):
    full = N * 3 * SIZE[0] * SIZE[1] * 4
    cal, load_peak = _peak(lambda: load_calibration(folder, Preprocess(), SIZE, count=N, force=True))
    assert isinstance(cal.raw, ImageFiles) and cal.count == N
    seen, read_peak = _peak(lambda: _drain(cal))
    assert seen == N
    # the digest pass and a full read each hold a few batches, never the set
    assert full >= 2 * LIMIT and load_peak < LIMIT and read_peak < LIMIT, (load_peak, read_peak, full)
    # and the streamed tensors are exactly the materialised ones (same digest as the one-shot hash)
    import hashlib

    x = cal.images
    assert x.shape == (N, 3, *SIZE) and x.nbytes == full
    h = hashlib.sha256(str(x.shape).encode())
    h.update(x.tobytes())
    assert h.hexdigest() == cal.digest


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_memory_mapped_npy_is_read_by_batch(tmp_path):
    raw = _photos(N, 768, 1024)  # 302 MB of uint8 on disk: more than streaming may hold
    np.save(tmp_path / "calib.npy", raw)
    full_raw = raw.nbytes
    del raw
    cal, load_peak = _peak(lambda: load_calibration(tmp_path / "calib.npy", Preprocess(), SIZE, count=N, force=True))
    assert isinstance(cal.raw, MappedRows) and cal.count == N
    seen, read_peak = _peak(lambda: _drain(cal))
    assert seen == N
    full = N * 3 * SIZE[0] * SIZE[1] * 4
    assert load_peak < LIMIT and read_peak < LIMIT and full_raw > LIMIT, (load_peak, read_peak, full, full_raw)


def test_ort_calibration_batch_shrinks_at_high_resolution():
    from veca_deploy.calibration.onnx_quant import BATCH, calibration_batch

    assert calibration_batch("minmax", (28, 28)) == calibration_batch("minmax", (224, 224)) == BATCH
    assert calibration_batch("minmax", (512, 512)) == 3 and calibration_batch("minmax", (1024, 1024)) == 1
    assert calibration_batch("percentile", (128, 128)) == BATCH
    assert calibration_batch("entropy", (512, 512)) == 1 and calibration_batch("percentile", (1536, 1536)) == 1


def test_photo_crops_are_real_seeded_and_made_on_demand():
    from veca_deploy.data import PhotoCrops, photo_sources

    if not photo_sources():
        pytest.skip("no real photos installed (scikit-image or Debian mate-backgrounds)")
    a, b = PhotoCrops(600, seed=3), PhotoCrops(600, seed=3)
    assert len(a) == 600 and repr(a).startswith("PhotoCrops(600 crops")
    first = a[0:3]
    assert all(x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 and min(x.shape[:2]) >= 64 for x in first)
    assert all(np.array_equal(x, y) for x, y in zip(first, b[0:3]))  # seeded
    assert not np.array_equal(a[1], a[2]) or a[1].shape != a[2].shape  # distinct crops
    assert not np.array_equal(PhotoCrops(600, seed=4)[0], first[0])
    assert len({id(x) for x in a[590:600]}) == 10  # made when indexed, nothing stored per crop


def test_photos_calibration_source_is_recorded(tmp_path):
    from veca_deploy.data import photo_sources

    if not photo_sources():
        pytest.skip("no real photos installed (scikit-image or Debian mate-backgrounds)")
    cal = load_calibration("photos", Preprocess(), (64, 64), count=300)
    rec = cal.record()
    assert rec["kind"] == "photos" and rec["count"] == 300 and rec["photos"] and len(rec["sha256"]) == 64
    assert load_calibration("photos", Preprocess(), (64, 64), count=300).digest == cal.digest
    assert load_calibration("photos", Preprocess(), (64, 64), count=300, seed=1).digest != cal.digest


#: child process: quantize a small conv net (ONNX Runtime MinMax, the real calibration path)
#: on the first ``n`` PNGs of a folder and print the process's peak RSS in bytes
_QUANTIZE = r"""
import resource, sys
from pathlib import Path
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from veca_deploy.calibration.data import load_calibration
from veca_deploy.calibration.onnx_quant import quantize_onnx_int8
from veca_deploy.calibration.recipe import ort_recipe
from veca_deploy.preprocess import Preprocess

folder, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rng = np.random.default_rng(0)
w1 = numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1")
w2 = numpy_helper.from_array(rng.normal(0, 0.2, (8, 10)).astype(np.float32), "w2")
nodes = [helper.make_node("Conv", ["images", "w1"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "w2"], ["logits"])]
g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 256, 256])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [w1, w2])
model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, out / "small.onnx")
cal = load_calibration(folder, Preprocess(), (256, 256), count=n, force=True)
assert cal.count == n
# float_input_layer=False: the conv that reads the 256 px images is quantized, so its activations are calibrated
info = quantize_onnx_int8(out / "small.onnx", out / "small-int8.onnx", cal, ort_recipe(float_input_layer=False),
                          cache_dir=str(out / "cache"))
assert info["quantize_linear_nodes"] > 0, info
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_int8_calibration_peak_rss_does_not_grow_with_image_count(tmp_path):
    """The whole quantize path (reading, preprocessing, ORT's calibration session, the quantizer)
    on 16 and on 192 images, each in a fresh process: the peak RSS grows by less than a quarter
    of what the 192 preprocessed images would take (151 MB), so nothing holds the set."""
    import subprocess
    import sys

    pil = pytest.importorskip("PIL.Image", reason="reading a folder of images needs Pillow")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(_photos(192, 300, 300)):
        pil.fromarray(img).save(folder / f"{i:03d}.png", compress_level=1)
    peaks = {}
    for n in (16, 192):
        out = tmp_path / f"run{n}"
        out.mkdir()
        p = subprocess.run([sys.executable, "-c", _QUANTIZE, str(folder), str(n), str(out)],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        peaks[n] = int(p.stdout.split()[-1])
    full = 192 * 3 * 256 * 256 * 4
    assert peaks[192] - peaks[16] < full / 4, (peaks, full)


def test_priority_order_calibration_session_gives_the_same_ranges_and_is_restored(tmp_path):
    """ORT's calibration session runs in priority-based order inside the context (what keeps the
    1024 px peak at 0.8 GB instead of 4.6 GB) and computes the same ranges; outside it ORT's own
    session factory is back."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization import calibrate

    from veca_deploy.calibration.onnx_quant import calibration_session_order

    rng = np.random.default_rng(1)
    w = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w1"], ["c"]), helper.make_node("Add", ["a", "c"], ["d"]),
             helper.make_node("MatMul", ["d", "w2"], ["y"])]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], w)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "chain.onnx")
    feeds = [{"x": rng.normal(0, 1, (4, 16)).astype(np.float32)} for _ in range(5)]

    class Reader(calibrate.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    def ranges(name):
        c = calibrate.create_calibrator(str(tmp_path / "chain.onnx"), augmented_model_path=str(tmp_path / f"{name}.onnx"),
                                        calibrate_method=CalibrationMethod.MinMax)
        c.collect_data(Reader())
        order = c.infer_session.get_session_options().execution_order if hasattr(ort, "ExecutionOrder") else None
        data = c.compute_data()
        return {k: tuple(float(np.asarray(v).item()) for v in data[k].range_value) for k in ("a", "b", "c", "d")}, order

    original = calibrate.CalibraterBase.create_inference_session
    plain, plain_order = ranges("plain")
    with calibration_session_order() as reordered:
        ordered, ordered_order = ranges("ordered")
    assert calibrate.CalibraterBase.create_inference_session is original
    if not reordered:
        pytest.skip(f"onnxruntime {ort.__version__} has no CalibraterBase.create_inference_session / ExecutionOrder")
    assert ordered_order == ort.ExecutionOrder.PRIORITY_BASED != plain_order
    assert ordered == plain and all(lo < hi for lo, hi in plain.values())
