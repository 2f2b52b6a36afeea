"""The timing harness, the device fingerprint, ``veca-deploy bench`` and ``Runtime.predict``'s
input handling (on the random-weight tiny bundle; latencies are only checked for sanity)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.reader import Bundle
from veca_deploy.cli import main
from veca_deploy.errors import BundleError, InputError, UsageError
from veca_deploy.runtimes import create_runner
from veca_deploy.runtimes.base import Runner, TensorSpec
from veca_deploy.runtimes.fingerprint import cpu_info, device_fingerprint, device_id
from veca_deploy.runtimes.timing import measure, peak_rss_mb, percentile_of, rss_mb
from veca_deploy.selector import profile_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rt") / "b"
    shutil.copytree(tiny_bundle, root)
    return root


@pytest.fixture(scope="module")
def rt(bundle):
    with veca_deploy.Runtime.open(bundle, backend="onnxruntime") as r:  # no budget: most accurate, no profiling
        yield r


# ---------------------------------------------------------------------------- harness
def test_measure_reports_cold_start_and_percentiles(bundle):
    b = Bundle.open(bundle)
    art = b.get("onnx-fp32-c8-28x28")
    x = np.random.default_rng(0).standard_normal((1, 3, 28, 28)).astype(np.float32)
    with create_runner("onnxruntime", b.path_of(art)) as r:
        r.close()  # measure() must see the cold start
        t = measure(r, {"images": x}, count=7, warmup=2)
    assert t.count == 7 and t.batch == 1 and len(t.samples_ms) == 7
    assert t.load_ms > 0 and t.first_ms > 0
    p = t.percentiles_ms
    assert t.min_ms <= p["50"] <= p["90"] <= p["95"] <= p["99"] <= t.max_ms
    assert t.throughput_ips > 0 and set(t.output_shapes) == set(art.outputs)
    assert t.percentile(50) == pytest.approx(p["50"], rel=1e-3)
    with create_runner("onnxruntime", b.path_of(art)) as r:
        t2 = measure(r, {"images": x}, count=None, duration_s=0.05, warmup=0)
    assert t2.load_ms is None and t2.count >= 5  # already active: no cold start to report


class FakeRunner(Runner):
    """Returns finite outputs until ``bad_after`` calls, then NaN (or a changed shape)."""

    backend = "fake"

    def __init__(self, bad_after: int, mode: str = "nan") -> None:
        super().__init__("fake.onnx")
        self.calls, self.bad_after, self.mode = 0, bad_after, mode

    def input_specs(self):
        return [TensorSpec("images", "float32", (None, 3, 4, 4))]

    def output_names(self):
        return ["y"]

    def _activate(self):
        pass

    def _close(self):
        pass

    def _infer(self, feed):
        self.calls += 1
        n = feed["images"].shape[0]
        if self.calls > self.bad_after:
            return {"y": np.full((n, 2), np.nan, np.float32)} if self.mode == "nan" else {"y": np.zeros((n, 3))}
        return {"y": np.zeros((n, 2), np.float32)}



def test_elastic_graph_refuses_core_counts_it_does_not_serve(bundle):
    """An elastic graph computes with any core_select length; only its tiers were trained,
    parity-checked and profiled, so another length is an InputError naming the tiers."""
    from veca_deploy.runtimes.base import core_select

    b = Bundle.open(bundle)
    art = b.get("onnx-fp32-elastic-28x28")
    x = np.zeros((1, 3, 28, 28), np.float32)
    with create_runner("onnxruntime", b.path_of(art), allow_spinning=False) as r:
        assert r.core_tiers() == (8, 16, 24, 32)
        assert r.describe()["allow_spinning"] is False
        out16 = r.infer({"images": x, "core_select": core_select(16)})
        assert all(np.isfinite(v).all() for v in out16.values())
        with pytest.raises(InputError, match=r"core_select length 12 is not a core tier.*8, 16, 24, 32"):
            r.infer({"images": x, "core_select": core_select(12)})
        with pytest.raises(InputError, match="not a core tier"):  # also without the input checks
            r.infer({"images": x, "core_select": core_select(40)}, check=False)

@pytest.mark.parametrize("mode,msg", [("nan", "NaN"), ("shape", "shapes changed")])
def test_measure_sanity_check_inside_loop(mode, msg):
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(BundleError, match=msg):
        measure(FakeRunner(bad_after=5, mode=mode), {"images": x}, count=10, warmup=1)


def test_openvino_compiles_batch_one_and_still_serves_any_batch(bundle):
    """A dynamic-batch IR is compiled for batch 1 (what a latency-bound caller sends; the CPU
    plugin fuses more with static shapes) and other batches run on the dynamic model, compiled on
    first use, in the sync path and in every stream's lane."""
    from veca_deploy.bundle import read_manifest
    from veca_deploy.runtimes.pool import create_pool

    a = read_manifest(bundle).find("openvino", "fp32", 8, elastic=False)[0]
    x = np.random.default_rng(3).standard_normal((3, 3, a.height, a.width)).astype(np.float32)
    with create_runner("openvino", bundle / a.path) as r:
        assert r.describe()["static_batch"] == "1" and r.compiled.inputs[0].get_partial_shape()[0].get_length() == 1
        assert r.input_specs()[0].shape[0] is None  # callers may still send any batch
        one = [r.infer({"images": x[i:i + 1]})["patches"] for i in range(3)]
        # the golden gates (bench, validate, export) check what serves: the batch-1 compile
        from veca_deploy.compare.comparator import run_outputs

        assert r.served_batch == 1
        np.testing.assert_array_equal(run_outputs(r, x)["patches"], np.concatenate(one))
        assert r._dynamic_compiled is None  # nothing compiled for other batches yet
        three = r.infer({"images": x})["patches"]
        np.testing.assert_allclose(three, np.concatenate(one), atol=1e-5)
        pool = create_pool(r, 2)
        try:
            got, _ = pool.submit({"images": x}).result(timeout=60)  # (outputs, latency_ms)
            np.testing.assert_allclose(got["patches"], three, atol=1e-5)
        finally:
            pool.close()
    with create_runner("openvino", bundle / a.path, static_batch=False) as r:
        assert "static_batch" not in r.describe() and r.compiled.inputs[0].get_partial_shape()[0].is_dynamic


def test_measure_argument_checks():
    x = np.zeros((1, 3, 4, 4), np.float32)
    for kw in ({"count": 0}, {"count": None, "duration_s": -1.0}, {"warmup": -1}):
        with pytest.raises(UsageError):
            measure(FakeRunner(99), {"images": x}, **kw)
    with pytest.raises(UsageError):
        percentile_of([], 50)


def test_memory_without_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    assert rss_mb() > 1 and peak_rss_mb() >= 1


# ---------------------------------------------------------------------------- fingerprint
X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
"""
ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimddp
CPU implementer\t: 0x41
"""


def test_cpu_info_parses_isa_flags():
    x = cpu_info(X86)
    assert x["model"].startswith("Intel(R) Xeon(R) Platinum 8480+")
    assert {"avx2", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"} <= set(x["isa"])
    a = cpu_info(ARM)
    assert {"asimd", "asimddp", "asimdhp"} <= set(a["isa"]) and "avx2" not in a["isa"]


def test_device_id_is_stable_and_safe():
    fp = device_fingerprint(threads=2)
    assert fp["runtimes"]["onnxruntime"] and fp["cpu"]["usable_cores"] >= 1 and fp["threads"]["requested"] == 2
    a, b = device_id(fp), device_id(device_fingerprint())
    assert a == b and re.fullmatch(r"[a-z0-9][a-z0-9-]{3,100}", a)
    other = json.loads(json.dumps(fp))
    other["cpu"]["usable_cores"] += 4
    assert device_id(other) != a
    other = json.loads(json.dumps(fp))
    other["runtimes"]["onnxruntime"] = "0.0.1"  # an upgrade does not orphan the profile
    assert device_id(other) == a
    jet = json.loads(json.dumps(fp))
    jet["gpu"] = {"gpu_name": "Orin", "compute_capability": "8.7"}
    jet["power"] = {"nvpmodel": {"name": "MAXN", "id": 0}}
    assert "orin-sm87-pm0" in device_id(jet)


# ---------------------------------------------------------------------------- bench CLI
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_bench_writes_profile_only_and_plot(bundle, tmp_path, capsys):
    before = _files(bundle)
    png = tmp_path / "plot.png"
    rc = main(["bench", str(bundle), "--backend", "onnxruntime,openvino", "--tiers", "8,32", "--count", "3",
               "--warmup", "1", "--threads", "1", "--plot", str(png), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "ov-fp32" in text and "ort-fp32-el" in text and "p99" in text and "profile:" in text
    after = _files(bundle)
    prof = str(profile_path(bundle).relative_to(bundle))
    assert set(after) - set(before) == {prof} and all(after[k] == v for k, v in before.items())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(profile_path(bundle).read_text())
    entries = d["entries"]
    # 2 tiers x (onnx + openvino per-tier + elastic), plus each OpenVINO execution variant this CPU
    # runs natively (bf16 on AVX512-BF16/AMX), gated on the golden outputs like the rest
    from veca_deploy.runtimes import supported_variants

    variants = supported_variants("openvino")
    assert len(entries) == 6 + 2 * len(variants) and all(e["error"] is None for e in entries.values())
    for v in variants:
        ev = entries[f"openvino-fp32-c8-28x28@c8+{v}"]
        assert ev["execution"] == v and ev["runner"]["INFERENCE_PRECISION_HINT"] == v
        assert ev["gate"]["passed"] and ev["gate"]["precision"] == {"bf16": "bf16", "f16": "fp16"}[v]
    e = entries["onnx-fp32-elastic-28x28@c32"]
    assert e["timing"]["count"] == 3 and e["runner"]["threads"] == 1 and e["cores"] == 32
    assert entries["openvino-fp32-c8-28x28@c8"]["runner"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert d["fingerprint"]["cpu"]["model"] is not None and d["device"] == profile_path(bundle).stem
    # a second run on a subset merges instead of dropping the other entries
    assert main(["bench", str(bundle), "--backend", "onnxruntime", "--tiers", "8", "--precision", "fp32",
                 "--duration", "0.05", "--warmup", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {e["artifact"] for e in out["entries"]} == {"onnx-fp32-c8-28x28", "onnx-fp32-elastic-28x28"}
    assert len(json.loads(profile_path(bundle).read_text())["entries"]) == 6 + 2 * len(variants)


@pytest.mark.parametrize("args,code", [
    (["--backend", "nope"], 2), (["--count", "0"], 2), (["--count", "3", "--duration", "1"], 2),
    (["--precision", "fp64"], 2), (["--tiers", "7"], 2), (["--plot", "INSIDE"], 2), (["--backend", "tensorrt"], 7),
    (["--passes", "0"], 2),
])
def test_bench_usage_errors(bundle, args, code, capsys):
    args = [str(bundle / "x.png") if a == "INSIDE" else a for a in args]
    assert main(["bench", str(bundle), "--quiet", *args]) == code
    err = capsys.readouterr().err
    assert err.startswith("veca-deploy: error:") and len(err.strip().splitlines()) == 1


def test_bench_missing_bundle(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope")]) == 5


# ---------------------------------------------------------------------------- predict
def test_predict_raw_images_of_any_size(rt):
    assert rt.tier.cores == 32 and rt.tier.backend == "onnxruntime"
    names = set(rt.bundle.manifest.model["outputs"])
    for img in (np.zeros((28, 28), np.uint8), np.full((50, 70, 3), 200, np.uint8),
                np.zeros((9, 13, 1), np.uint8)):
        p = rt.predict(img)
        assert set(p.keys()) == names and all(v.shape[0] == 1 for v in p.outputs.values())
        assert p.latency_ms > 0 and p.tier == rt.tier
    p = rt.predict([np.zeros((28, 28), np.uint8), np.ones((64, 32, 3), np.uint8)])
    assert p["global"].shape[0] == 2
    p = rt.predict(np.zeros((5, 40, 40), np.uint8))  # uint8 batch BxHxW
    assert p["global"].shape[0] == 5 and p.labels is None  # random tiny bundle: no classifier head


def test_predict_float_matches_raw(rt):
    img = np.random.default_rng(1).integers(0, 255, (28, 28, 3), dtype=np.uint8)
    x = rt.bundle.preprocess(img, (28, 28))
    a, b = rt.predict(img), rt.predict(x)
    for k in a.outputs:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((28, 28, 4), np.uint8), "4 channels"),
    (np.zeros((2, 28, 28, 4), np.uint8), "HxWx3"),
    (np.zeros((1, 1, 28, 28), np.float32), "channels"),
    (np.full((1, 3, 28, 28), np.nan, np.float32), "NaN"),
    ([], "empty"),
    (np.zeros((0, 3, 28, 28), np.float32), "empty"),
    (np.zeros((28, 28, 3), np.float64), "float64"),
    (np.zeros((28, 28, 3), np.int32), "int32"),
    ([np.zeros((28, 28), np.float32)], "uint8"),
    (np.zeros((1, 3, 32, 32), np.float32), "28x28"),
    (np.zeros((3, 28, 28), np.float32), "NCHW"),
    ("image.png", "numpy array"),
    (np.zeros((0, 28, 3), np.uint8), "empty"),
])
def test_predict_bad_input_is_input_error(rt, bad, msg):
    with pytest.raises(InputError, match=msg):
        rt.predict(bad)


def test_closed_runtime(bundle):
    r = veca_deploy.Runtime.open(bundle, backend="onnxruntime", tiers=[8])
    assert r.tier.cores == 8
    r.close()
    with pytest.raises(UsageError, match="closed"):
        r.predict(np.zeros((28, 28), np.uint8))


# ---------------------------------------------------------------------------- example
def test_example_classify_folder(bundle, tmp_path):
    from PIL import Image

    from veca_deploy.data import fashion_mnist, fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    images, labels = fashion_mnist("test")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(images[i]).save(folder / f"{i}_{labels[i]}.png")
    np.save(folder / "big.npy", np.full((90, 60, 3), 128, np.uint8))  # any size, .npy without Pillow
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "classify_folder.py"), str(bundle), str(folder),
                          "--budget-ms", "1000", "--backend", "onnxruntime"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("tier: C=") and "budget 1000 ms" in lines[0]
    assert len([ln for ln in lines if re.search(r"model \d+\.\d+ ms", ln)]) == 5
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "classify_folder.py"), str(bundle), str(folder),
                          "--budget-ms", "0.001", "--backend", "onnxruntime"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 8 and "fastest" in res.stderr


# ---------------------------------------------------------------------------- fixed batch
FIXED = 4


@pytest.fixture(scope="module")
def fixed_batch_bundle(tmp_path_factory) -> Path:
    """veca_tiny (random weights) tier 8 as ONNX + OpenVINO FP32 graphs whose batch dimension is the
    constant 4 (what ``veca-deploy export --batch 4`` passes; the API keeps the torch-free device CI
    able to skip this when torch is missing)."""
    out = tmp_path_factory.mktemp("fixed") / "b"
    veca_deploy.export("veca_tiny", random_weights=True, out=out, cores=[8], formats=["onnx", "openvino"],
                       precisions=["fp32"], batch=FIXED)
    return out


def _test_images(n: int) -> np.ndarray:
    from veca_deploy.data import fashion_mnist, fashion_mnist_available

    if fashion_mnist_available():
        return np.array(fashion_mnist("test")[0][:n])
    return np.random.default_rng(3).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fixed_batch_artifact_is_split_and_padded(fixed_batch_bundle, backend):
    """N images, N not a multiple of the graph's fixed batch: N rows, each what that image alone gives."""
    b = Bundle.open(fixed_batch_bundle)
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    art = b.get(f"{fmt}-fp32-c8-28x28")
    assert art.batch == FIXED and art.inputs["images"]["shape"] == [FIXED, 3, 28, 28]
    imgs = _test_images(11)
    x = b.preprocess(list(imgs), (28, 28))
    with create_runner(backend, b.path_of(art)) as r:
        with pytest.raises(InputError, match=f"dim 0 must be {FIXED}"):
            r.infer({"images": x[:7]})  # the graph itself takes exactly 4: the Runtime must split/pad
        direct = r.infer({"images": x[:FIXED]})
    with veca_deploy.Runtime.open(fixed_batch_bundle, backend=backend, tiers=[8]) as rt:
        assert rt.tier.artifact == art.id
        singles = [rt.predict(img) for img in imgs]
        for n in (7, 9, 11, FIXED, 1):  # 4+3, 4+4+1, 4+4+3, exact, one padded call
            p = rt.predict(imgs[:n])
            assert set(p.keys()) == set(art.outputs)
            for k in art.outputs:
                assert p[k].shape[0] == n, (n, k, p[k].shape)
                want = np.concatenate([s[k] for s in singles[:n]])
                np.testing.assert_allclose(p[k], want, rtol=1e-5, atol=1e-5, err_msg=f"n={n} {k}")
                np.testing.assert_allclose(p[k][:min(n, FIXED)], direct[k][:min(n, FIXED)], rtol=1e-5, atol=1e-5)
        g = np.concatenate([s["global"] for s in singles])
        assert np.ptp(g, axis=0).max() > 1e-3  # different images, different rows: no row was reused


# ---------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_classifier_predictions_agree_with_logits_and_beat_chance(reference_bundle, backend):
    """The trained reference bundle (a ``logits`` output): labels and names are the argmax of the
    logits, and top-1 on 200 Fashion-MNIST test images is what the model card says, far above 10%."""
    from veca_deploy.data import FASHION_MNIST_CLASSES, fashion_mnist, fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    images, labels = fashion_mnist("test")
    x, y = np.array(images[:200]), np.asarray(labels[:200])
    with veca_deploy.Runtime.open(reference_bundle, backend=backend) as rt:  # no budget: the most accurate tier
        names = rt.bundle.manifest.model["class_names"]
        card = rt.bundle.manifest.model["card_top1"]
        p = rt.predict(x)
        one = rt.predict(x[17])
    assert list(names) == list(FASHION_MNIST_CLASSES)
    logits = p["logits"]
    assert logits.shape == (200, 10) and np.isfinite(logits).all()
    assert p.labels.shape == (200,) and np.array_equal(p.labels, logits.argmax(-1))
    assert p.names == [names[i] for i in logits.argmax(-1)]
    assert one.labels.tolist() == [p.labels[17]] and one.names == [p.names[17]]
    np.testing.assert_allclose(one["logits"][0], logits[17], rtol=1e-4, atol=1e-4)
    assert len(set(p.labels.tolist())) >= 8  # not one class for everything
    top1 = float((p.labels == y).mean())
    assert top1 > 0.7, top1
    assert abs(100 * top1 - card[str(p.tier.cores)]) < 10, (top1, card)
