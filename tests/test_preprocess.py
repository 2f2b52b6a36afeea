"""The bundle's preprocessing matches the training-time transform on real photos: antialiased
bilinear (torch ``interpolate(antialias=True)`` / Pillow), stretch or shorter side + centre crop,
declared in the manifest; old bundles keep what they were served with."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from veca_deploy.preprocess import Preprocess
from veca_deploy.resize import antialias_weights, cover_size, resize_antialias, resize_bilinear

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _photos() -> dict[str, np.ndarray]:
    skdata = pytest.importorskip("skimage.data")
    return {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea()}


def _torch_resize(img: np.ndarray, h: int, w: int, antialias: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=(h, w), mode="bilinear", antialias=antialias, align_corners=False)[0].permute(
        1, 2, 0).numpy()


def test_weights_are_a_normalised_triangle_filter():
    w = antialias_weights(100, 10)
    assert w.shape == (10, 100) and np.allclose(w.sum(axis=1), 1, atol=1e-6)
    assert (w > 0).sum(axis=1).max() >= 19  # every source pixel of a 10x reduction contributes
    up = antialias_weights(10, 40)
    assert (up > 0).sum(axis=1).max() <= 2  # upscaling is plain bilinear


@pytest.mark.parametrize("size", [(28, 28), (224, 224), (96, 160)])
def test_antialias_matches_torch_on_real_photos(size):
    h, w = size
    for name, img in _photos().items():
        ref = _torch_resize(img, h, w, antialias=True)
        ours = resize_antialias(img, h, w, use_pillow=False)
        assert np.abs(ours - ref).max() < 0.02, name
        try:
            pil = resize_antialias(img, h, w, use_pillow=True)
        except ImportError:
            continue
        # Pillow rounds to uint8 between its two passes: within a grey level
        assert np.abs(pil - ref).max() <= 1.5 and np.abs(pil - ref).mean() < 0.5, name
        # the old plain bilinear is what aliasing looks like at the same size
        assert np.abs(resize_bilinear(img, h, w) - ref).mean() > 4 * max(np.abs(pil - ref).mean(), 0.05), name


def test_plain_bilinear_still_matches_torch_without_antialias():
    img = _photos()["coffee"]
    assert np.abs(resize_bilinear(img, 50, 70) - _torch_resize(img, 50, 70, antialias=False)).max() < 0.02


def _torch_transform(img, size, pre: Preprocess) -> np.ndarray:
    """timm-style eval transform in torch: (shorter side to size / crop_pct + centre crop, or
    stretch), antialiased bilinear, /255, mean/std, NCHW."""
    h, w = size
    if pre.resize_mode == "shorter":
        rh, rw = cover_size(img.shape[:2], size, pre.crop_pct)
        x = _torch_resize(img, rh, rw, pre.antialias)
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        x = x[top:top + h, left:left + w]
    else:
        x = _torch_resize(img, h, w, pre.antialias)
    x = (x / 255.0 - np.array(pre.mean)) / np.array(pre.std)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize("mode, crop", [("stretch", 1.0), ("shorter", 1.0), ("shorter", 0.875)])
def test_preprocess_is_the_training_transform(mode, crop, monkeypatch):
    import veca_deploy.resize as rz

    pre = Preprocess(antialias=True, resize_mode=mode, crop_pct=crop)
    for use_pillow in (True, False):
        if not use_pillow:
            monkeypatch.setattr(rz, "_pillow", lambda: None)
        for name, img in _photos().items():
            got = pre(img, (64, 64))
            want = _torch_transform(img, (64, 64), pre)
            assert got.shape == want.shape == (1, 3, 64, 64)
            tol = 1.5 / 255 / min(pre.std) if use_pillow else 1e-3
            assert np.abs(got - want).max() < tol, (name, use_pillow)


def test_shorter_mode_keeps_the_aspect_ratio():
    assert cover_size((400, 600), (224, 224)) == (224, 336)
    assert cover_size((400, 600), (224, 224), 0.875) == (256, 384)
    assert cover_size((600, 400), (224, 224)) == (336, 224)


def test_declared_preprocessing_round_trips_and_old_bundles_keep_theirs():
    pre = Preprocess(antialias=True, resize_mode="shorter", crop_pct=0.9)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    old = {"mean": [0.5] * 3, "std": [0.5] * 3, "color_order": "RGB", "resize": "bilinear", "scale": 1 / 255,
           "layout": "NCHW"}
    legacy = Preprocess.from_dict(old)
    assert (legacy.antialias, legacy.resize_mode, legacy.crop_pct) == (False, "stretch", 1.0)
    for bad in ({"resize_mode": "letterbox"}, {"crop_pct": 0}, {"crop_pct": 1.5}):
        with pytest.raises(ValueError):
            Preprocess.from_dict({**old, **bad})


def test_export_declares_it_and_the_runtime_serves_it(tiny_bundle, tmp_path, capsys):
    """A new bundle declares antialiased preprocessing; a manifest edited to an unknown mode is
    refused in one line; the Runtime feeds a large photo exactly as the declaration says."""
    import veca_deploy
    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.cli import main

    m = read_manifest(tiny_bundle)
    assert m.preprocess["antialias"] is True and m.preprocess["resize_mode"] == "stretch"
    img = np.ascontiguousarray(np.tile(_photos()["astronaut"], (3, 4, 1)))  # 1536 x 2048
    with veca_deploy.Runtime.open(tiny_bundle, backend="onnxruntime") as rt:
        tier = rt.tier
        x = rt._prepare(img, tier)
        pre = Preprocess.from_dict(m.preprocess)
        assert np.abs(x - _torch_transform(img, (tier.height, tier.width), pre)).max() < 1.5 / 255 / min(pre.std)
        assert rt.predict(img).outputs
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    d = json.loads((bad / "manifest.json").read_text())
    d["preprocess"]["resize_mode"] = "letterbox"
    (bad / "manifest.json").write_text(json.dumps(d))
    assert main(["validate", str(bad)]) != 0
    err = capsys.readouterr().err.strip()
    assert "letterbox" in err and len(err.splitlines()) == 1
    code = main(["export", "--random-weights", "veca_tiny", "--crop-pct", "1.5", "--out", str(tmp_path / "x"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "crop_pct" in err and not (tmp_path / "x").exists()
