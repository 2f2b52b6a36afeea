"""Bad input, tampering and fuzzing of the parsers: only our typed errors may escape."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veca_deploy.bundle import Bundle, read_manifest
from veca_deploy.bundle.io import staged_bundle, staged_update, write_manifest
from veca_deploy.bundle.manifest import Manifest
from veca_deploy.commands.common import parse_int_list, parse_size
from veca_deploy.errors import BundleError, InputError, OutputExistsError, UsageError
from veca_deploy.preprocess import Preprocess, resize_bilinear

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)


def _valid_manifest_dict() -> dict:
    return {"schema_version": 1, "model": {"name": "m"}, "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3},
            "artifacts": [{"format": "onnx", "precision": "fp32", "cores": 8, "height": 28, "width": 28,
                           "path": "onnx/a.onnx", "sha256": "0" * 64, "bytes": 10}]}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_manifest_parser_only_raises_bundle_errors(doc):
    try:
        Manifest.from_dict(doc)
    except BundleError:
        pass


ART_KEYS = ["format", "precision", "cores", "height", "width", "path", "sha256", "bytes", "tiers", "files", "elastic"]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(ART_KEYS + ["schema_version", "model", "preprocess"]), json_values)
def test_manifest_field_mutations_only_raise_bundle_errors(key, value):
    d = _valid_manifest_dict()
    if key in ("schema_version", "model", "preprocess"):
        d[key] = value
    else:
        d["artifacts"][0][key] = value
    try:
        m = Manifest.from_dict(d)
    except BundleError:
        return
    a = m.artifacts[0]  # whatever parsed must be well-typed
    assert isinstance(a.cores, int) and isinstance(a.path, str) and a.format in ("onnx", "openvino", "tensorrt")


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=20))
def test_cli_value_parsers_only_raise_usage_errors(text):
    for fn in (parse_size, parse_int_list):
        try:
            fn(text)
        except UsageError:
            pass


@settings(max_examples=600, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=5), st.sampled_from([np.uint8, np.float32, np.int64]))
def test_preprocess_accepts_images_or_raises_input_error(shape, dtype):
    pre = Preprocess()
    arr = np.zeros(shape, dtype=dtype)
    try:
        out = pre(arr, (14, 21))
    except InputError:
        return
    assert out.dtype == np.float32 and out.shape[1:] == (3, 14, 21) and np.isfinite(out).all()


def test_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3), dtype=np.float32)
    for h, w in [(28, 28), (64, 96), (37, 53), (10, 100)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(h, w),
                                              mode="bilinear", align_corners=False, antialias=False)
        np.testing.assert_allclose(resize_bilinear(img, h, w), ref[0].permute(1, 2, 0).numpy(), atol=1e-5)


# ------------------------------------------------------------------------- bundles on disk
def _bundle_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(root, fn):
    d = json.loads((root / "manifest.json").read_text())
    fn(d)
    (root / "manifest.json").write_text(json.dumps(d))


@pytest.mark.parametrize("bad_path", ["../outside.onnx", "/etc/passwd", "onnx/../../x.onnx", "C:\\x.onnx"])
def test_artifact_paths_that_escape_are_refused(tiny_bundle, tmp_path, bad_path):
    root = _bundle_copy(tiny_bundle, tmp_path / "b")
    _edit_manifest(root, lambda d: d["artifacts"][0].__setitem__("path", bad_path))
    with pytest.raises(BundleError, match="escapes the bundle"):
        read_manifest(root)


def test_symlink_pointing_outside_is_refused(tiny_bundle, tmp_path):
    root = _bundle_copy(tiny_bundle, tmp_path / "b")
    m = read_manifest(root)
    art = m.artifacts[0]
    outside = tmp_path / "outside.onnx"
    shutil.copy(root / art.path, outside)
    os.remove(root / art.path)
    os.symlink(outside, root / art.path)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.open(root).path_of(art)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.__setitem__("schema_version", 99), "unsupported schema_version 99"),
    (lambda d: d.pop("artifacts"), "missing field 'artifacts'"),
    (lambda d: d["artifacts"][0].pop("sha256"), "lacks sha256"),
    (lambda d: d["artifacts"][0].__setitem__("cores", "8"), "cores must be a non-negative integer"),
    (lambda d: d["preprocess"].__setitem__("std", [0, 1, 1]), "std must not contain 0"),
])
def test_malformed_manifests(tiny_bundle, tmp_path, mutate, msg):
    root = _bundle_copy(tiny_bundle, tmp_path / "b")
    _edit_manifest(root, mutate)
    with pytest.raises(BundleError, match=msg):
        read_manifest(root)


def test_invalid_json_and_missing_manifest(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="invalid JSON"):
        read_manifest(tmp_path / "b")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="not a folder"):
        read_manifest(tmp_path / "f")


def test_truncated_onnx_and_missing_bin(tiny_bundle, tmp_path):
    root = _bundle_copy(tiny_bundle, tmp_path / "b")
    m = read_manifest(root)
    onnx_art = m.find("onnx", "fp32", 8, elastic=False)[0]
    data = (root / onnx_art.path).read_bytes()
    (root / onnx_art.path).write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="truncated or replaced"):
        Bundle.open(root).path_of(onnx_art)
    ov = m.find("openvino", "fp32", 8)[0]
    os.remove(root / ov.files[0].path)
    with pytest.raises(BundleError, match="missing file .*c8_28x28.bin"):
        Bundle.open(root).path_of(ov)


# ------------------------------------------------------------------------------ atomicity
class Boom(RuntimeError):
    pass


def test_interrupted_new_bundle_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with staged_bundle(tmp_path / "out") as stage:
            (stage / "half.onnx").write_bytes(b"x" * 100)
            raise Boom()
    assert os.listdir(tmp_path) == []


def test_interrupted_update_keeps_previous_bundle(tiny_bundle, tmp_path):
    root = _bundle_copy(tiny_bundle, tmp_path / "b")
    before = {p: (root / p).read_bytes() for p in ["manifest.json"]}
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with pytest.raises(Boom):
        with staged_update(root) as stage:
            (stage / "onnx" / "new.onnx").write_bytes(b"partial")
            m = read_manifest(stage)
            m.notes.append("changed")
            write_manifest(stage, m)
            raise Boom()
    assert (root / "manifest.json").read_bytes() == before["manifest.json"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == listing
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_full_disk_during_update_keeps_previous_bundle(tiny_bundle, tmp_path, monkeypatch):
    root = _bundle_copy(tiny_bundle, tmp_path / "b")
    before = (root / "manifest.json").read_bytes()
    real_write = type(root).write_text

    def full_disk(self, *a, **k):
        if self.name.startswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        return real_write(self, *a, **k)

    monkeypatch.setattr(type(root), "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with staged_update(root) as stage:
            write_manifest(stage, read_manifest(stage))
    assert (root / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(OutputExistsError):
        with staged_bundle(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "keep").read_text() == "mine"
