"""Golden outputs travel with the bundle; validate compares every artifact with them, torch-free."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veca_deploy.bundle.io import sha256_file
from veca_deploy.bundle.manifest import read_manifest
from veca_deploy.compare.checks import BundleReferences
from veca_deploy.compare.comparator import Comparator, Target, compare
from veca_deploy.compare.golden import PATCH_ROWS, Golden, patch_rows_for, resized_uint8
from veca_deploy.compare.validate import validate_bundle
from veca_deploy.errors import UsageError
from veca_deploy.preprocess import Preprocess


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _rehash(root: Path, rel: str) -> None:
    """Update the manifest's hash/size of ``rel`` (an attacker or a buggy tool that keeps
    integrity intact while the numbers change)."""
    d = json.loads((root / "manifest.json").read_text())
    for a in d["artifacts"]:
        if a["path"] == rel:
            a["sha256"], a["bytes"] = sha256_file(root / rel), (root / rel).stat().st_size
    (root / "manifest.json").write_text(json.dumps(d))


def test_export_stores_golden_data_per_tier_and_size(tiny_bundle):
    m = read_manifest(tiny_bundle)
    g = m.golden
    assert g["reference"] == "pytorch-fp32"
    assert set(g["inputs"]) == {"28x28"}
    assert set(g["outputs"]) == {f"c{c}@28x28" for c in (8, 16, 24, 32)}
    golden = Golden.of(tiny_bundle, m, Preprocess.from_dict(m.preprocess))
    raw = golden.images(28, 28)
    assert raw.dtype == np.uint8 and raw.shape[1:] == (28, 28, 3) and len(raw) == g["inputs"]["28x28"]["count"]
    ref = golden.reference(16, 28, 28)
    assert set(ref.outputs) == set(m.model["outputs"]) == {"global", "patches"}  # a backbone: no head
    assert ref.outputs["global"].shape[0] == len(raw)
    assert ref.patch_rows is not None and ref.outputs["patches"].shape[1] == len(ref.patch_rows)


def test_golden_inputs_rebuild_the_exact_network_input():
    img = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    raw = resized_uint8([img], 64, 96)
    pre = Preprocess()
    # stored at the tier's size, preprocessing is a pure normalisation: bit-identical on any device
    assert np.array_equal(pre(list(raw), (64, 96)), pre(list(raw.copy()), (64, 96)))
    assert raw.shape == (1, 64, 96, 3)


def test_patch_rows_sample_is_bounded_and_spans_the_grid():
    rows = patch_rows_for(9216)
    assert len(rows) <= PATCH_ROWS and rows[0] == 0 and rows[-1] == 9215
    assert np.array_equal(patch_rows_for(16), np.arange(16))


def test_every_artifact_matches_the_golden_outputs(tiny_bundle):
    results = validate_bundle(tiny_bundle)
    ran = [r for r in results if not r.skipped]
    assert ran and all(r.ok for r in ran), [r.detail for r in ran if not r.ok]
    assert all("match the golden outputs" in r.detail for r in ran)


def test_validate_fails_on_wrong_numbers_with_intact_hashes(bundle_copy):
    import onnx
    from onnx import numpy_helper

    rel = "onnx/c16_28x28.onnx"
    m = onnx.load(str(bundle_copy / rel))
    big = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(big).copy()
    w *= 1.05  # a 5% error in one weight matrix: a device whose runtime computes wrong numbers
    big.CopyFrom(numpy_helper.from_array(w, big.name))
    onnx.save(m, str(bundle_copy / rel))
    _rehash(bundle_copy, rel)
    results = {r.artifact: r for r in validate_bundle(bundle_copy, backends=["onnxruntime"])}
    bad = results["onnx-fp32-c16-28x28"]
    assert not bad.ok and "golden" in bad.detail
    assert results["onnx-fp32-c8-28x28"].ok  # the others still pass


def test_cli_validate_exits_nonzero_on_wrong_numbers(bundle_copy):
    import onnx
    from onnx import numpy_helper

    rel = "onnx/c8_28x28.onnx"
    m = onnx.load(str(bundle_copy / rel))
    t = next(t for t in m.graph.initializer if len(t.dims) == 2)
    t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    onnx.save(m, str(bundle_copy / rel))
    _rehash(bundle_copy, rel)
    p = subprocess.run([sys.executable, "-m", "veca_deploy.cli", "validate", str(bundle_copy), "--backend",
                        "onnxruntime"], capture_output=True, text=True)
    assert p.returncode == 5
    assert p.stderr.count("\n") == 1 and "onnx-fp32-c8-28x28" in p.stderr


def test_tampered_golden_file_fails_validation(bundle_copy):
    path = bundle_copy / "golden" / "c8_28x28.npz"
    path.write_bytes(path.read_bytes()[:-10])
    results = validate_bundle(bundle_copy, backends="onnxruntime")
    assert results and not any(r.ok for r in results)
    assert all("golden" in r.detail and "c8_28x28.npz" in r.detail for r in results)


@pytest.mark.parametrize("backends", [["cuda"], "tensorrt", ["onnxruntime", "nope"]])
def test_validate_refuses_filters_that_verify_nothing(tiny_bundle, backends):
    with pytest.raises(UsageError):
        validate_bundle(tiny_bundle, backends=backends)


def test_older_bundle_without_golden_data_still_validates_and_says_so(bundle_copy):
    d = json.loads((bundle_copy / "manifest.json").read_text())
    d.pop("golden")
    (bundle_copy / "manifest.json").write_text(json.dumps(d))
    results = validate_bundle(bundle_copy, backends=["onnxruntime"])
    assert results and all(r.ok for r in results)
    assert all("numbers not checked" in r.detail for r in results)


def test_comparator_reuses_references_and_gates_by_precision(tiny_bundle):
    m = read_manifest(tiny_bundle)
    art = next(a for a in m.artifacts if a.id == "onnx-fp32-elastic-28x28")
    with Comparator() as comp:
        refs = BundleReferences(tiny_bundle, m, comp)
        reports = refs.check(art)
        assert set(reports) == {8, 16, 24, 32} and all(r.passed for r in reports.values())
        assert refs.reference(art, 8) is refs.reference(art, 8)  # read once, reused
        # the same outputs judged against another tier's reference must fail
        x = refs.inputs(28, 28)
        got = comp.outputs(Target.of(tiny_bundle, art), x, 8, patch_rows=refs.reference(art, 32).patch_rows)
        rep = compare(refs.reference(art, 32).outputs, got, artifact=art.id, precision="fp32", cores=8)
        assert not rep.passed and rep.failures


@pytest.mark.parametrize("key, value", [("resize", "bicubic"), ("layout", "NHWC"), ("color_order", "YUV")])
def test_declared_preprocessing_that_is_not_implemented_is_refused(bundle_copy, key, value):
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.errors import BundleError

    d = json.loads((bundle_copy / "manifest.json").read_text())
    d["preprocess"][key] = value
    (bundle_copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=key):
        Bundle.open(bundle_copy).preprocess


def test_bench_gates_each_candidate_on_golden_outputs_and_select_skips_a_wrong_one(bundle_copy):
    import onnx
    from onnx import numpy_helper

    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.selector.candidates import candidates
    from veca_deploy.selector.profile import measure_candidates
    from veca_deploy.selector.select import select

    rel = "onnx/c32_28x28.onnx"
    m = onnx.load(str(bundle_copy / rel))
    t = next(t for t in m.graph.initializer if len(t.dims) == 2)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 0.5, t.name))
    onnx.save(m, str(bundle_copy / rel))
    _rehash(bundle_copy, rel)
    b = Bundle.open(bundle_copy)
    cands = candidates(b, ["onnxruntime"])
    prof = measure_candidates(b, cands, count=5, warmup=1)
    bad = prof.entries["onnx-fp32-c32-28x28@c32"]
    assert bad["timing"] is None and "wrong numbers vs the golden outputs" in bad["error"]
    good = prof.entries["onnx-fp32-c16-28x28@c16"]
    assert good["gate"]["passed"] and good["gate"]["images"] >= 2 and good["gate"]["min_cosine"] > 0.9999
    sel = select(b, 10_000, backend="onnxruntime", profile=prof)
    assert sel.chosen.cand.artifact.id != "onnx-fp32-c32-28x28"
    assert any("onnx-fp32-c32-28x28" in s for s in sel.skipped)


def test_run_loop_never_exceeds_an_artifacts_max_batch(bundle_copy, monkeypatch):
    """A dynamic graph whose manifest caps a call (a TensorRT profile's max) gets at most that
    many images per call from every check (validate included), and the same numbers."""
    from veca_deploy.bundle.io import write_manifest
    from veca_deploy.runtimes.onnxrt import OnnxRuntimeRunner

    sizes: list[int] = []
    real = OnnxRuntimeRunner.infer

    def spy(self, feed, *a, **k):
        sizes.append(int(feed["images"].shape[0]))
        return real(self, feed, *a, **k)

    m = read_manifest(bundle_copy)
    dynamic = [a for a in m.artifacts if a.format == "onnx" and not isinstance(a.batch, int)]
    assert dynamic  # golden inputs hold 4 images at 28x28: more than one call each
    for a in dynamic:
        a.max_batch = 2
    write_manifest(bundle_copy, m)
    monkeypatch.setattr(OnnxRuntimeRunner, "infer", spy)
    results = validate_bundle(bundle_copy, backends="onnxruntime")
    assert results and all(r.ok for r in results), [r.detail for r in results]
    assert sizes and max(sizes) == 2 and len(sizes) >= 2 * len(dynamic), sizes
