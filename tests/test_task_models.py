"""Task heads, TaskModel save/load/export, Fashion-MNIST segmentation samples and numpy metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veca_deploy.data import fashion_mnist_available
from veca_deploy.errors import UsageError
from veca_deploy.metrics import ConfusionMatrix, mean_abs_error, top1
from veca_deploy.model.checkpoint import load_checkpoint, save_pretrained
from veca_deploy.model.heads import HEADS, create_head
from veca_deploy.model.task import TaskModel, create_task_model

SMALL = dict(patch_size=8, default_image_size=(64, 64))
needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Make every parameter matter (the init zeroes some), so roundtrips compare real weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_head_output_shapes(kind: str) -> None:
    head = create_head(32, {"name": kind, "num_classes": 5})
    out = head(torch.randn(2, 32), torch.randn(2, 12, 32), 3, 4, (24, 32))
    if kind == "linear_cls":
        assert set(out) == {"logits"} and out["logits"].shape == (2, 5)
    else:
        assert set(out) == {"mask_logits"} and out["mask_logits"].shape == (2, 5, 24, 32)


def test_create_head_refuses_bad_configs() -> None:
    with pytest.raises(UsageError, match="unknown head"):
        create_head(8, {"name": "nope", "num_classes": 3})
    with pytest.raises(UsageError, match="bad head config"):
        create_head(8, {"name": "linear_seg"})


def test_task_model_forward_and_cores() -> None:
    torch.manual_seed(0)
    m = create_task_model("veca_tiny", {"name": "linear_seg", "num_classes": 11}, **SMALL).eval()
    assert isinstance(m, TaskModel) and m.cfg is m.backbone.cfg and m.cfg.patch_size == 8
    assert m.num_params() == m.backbone.num_params() + sum(p.numel() for p in m.head.parameters())
    x = torch.randn(2, 3, 64, 64)
    for c in (None, 8, 32):
        out = m(x, c)
        assert out["mask_logits"].shape == (2, 11, 64, 64)
    assert m.output_specs()["mask_logits"]["layout"] == "B,K,H,W"
    with pytest.raises(UsageError, match="not a tier"):
        m(x, cores=12)
    with pytest.raises(UsageError):
        m(x, cores=True)
    cls = create_task_model("vit_tiny", {"name": "linear_cls", "num_classes": 10}).eval()
    assert cls(torch.randn(1, 3, 28, 28))["logits"].shape == (1, 10)
    assert cls.output_specs()["logits"]["kind"] == "logits"


@pytest.mark.parametrize("kind", ["linear_cls", "conv_decoder"])
def test_save_load_roundtrip(tmp_path, kind: str) -> None:
    torch.manual_seed(1)
    m = create_task_model("veca_tiny", {"name": kind, "num_classes": 4, **({"hidden": 16} if kind == "conv_decoder" else {})}, **SMALL).eval()
    _perturb(m)
    save_pretrained(m, tmp_path / "ckpt", card={"task": kind})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, TaskModel) and loaded.head_config == m.head_config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for c in (8, 24):
            a, b = m(x, c), loaded(x, c)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_checkpoint_still_plain_veca(tmp_path) -> None:
    from veca_deploy.model.veca import VECA

    m = create_task_model("veca_tiny", {"name": "linear_cls", "num_classes": 3})
    save_pretrained(m.backbone, tmp_path / "bb")
    assert type(load_checkpoint(tmp_path / "bb")) is VECA


@needs_fmnist
def test_seg_sampler_determinism_and_labels() -> None:
    from veca_deploy.seg_data import SegSampler

    a_img, a_mask = SegSampler("test", 64, seed=3).batch(6)
    b_img, b_mask = SegSampler("test", 64, seed=3).batch(6)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert a_img.shape == (6, 64, 64, 3) and a_mask.shape == (6, 64, 64)
    assert a_img.dtype == np.uint8 and a_mask.dtype == np.uint8
    c_img, _ = SegSampler("test", 64, seed=4).batch(6)
    assert not np.array_equal(a_img, c_img)
    s = SegSampler("train", 96, seed=0)
    first, _ = s.batch(2)
    second, _ = s.batch(2)
    assert not np.array_equal(first, second)  # batch() advances through the sequence
    assert a_mask.max() <= 10
    for img, mask in zip(a_img, a_mask):
        assert (mask > 0).any() and (mask == 0).any()
        # labelled pixels are item pixels (bright), background is noise
        assert img[mask > 0].mean() > img[mask == 0].mean()


@needs_fmnist
def test_write_split(tmp_path) -> None:
    from veca_deploy.seg_data import SegSampler, write_split

    out = write_split(tmp_path / "seg", 5, split="test", seed=2, size=48, chunk=2)
    imgs, masks = np.load(out / "images.npy"), np.load(out / "masks.npy")
    ref_i, ref_m = SegSampler("test", 48, seed=2).batch(5)
    assert np.array_equal(imgs, ref_i) and np.array_equal(masks, ref_m)


def test_metrics_hand_computed() -> None:
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = ConfusionMatrix(3).update(pred, true)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(3+2-2)=2/3, class2 1/(1+2-1)=1/2
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    cm4 = ConfusionMatrix(4).update(pred, true)  # class 3 absent from both: not averaged
    assert cm4.miou() == pytest.approx(cm.miou())
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
    assert top1(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert mean_abs_error(np.array([1.0, 2.0]), np.array([1.5, 1.0])) == pytest.approx(0.75)


def test_linear_seg_onnx_export_matches_torch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    m = create_task_model("veca_tiny", {"name": "linear_seg", "num_classes": 11}, **SMALL).eval()
    _perturb(m, seed=2)

    class Tier(torch.nn.Module):
        """One static tier: ONNX takes only tensors as inputs."""

        def __init__(self, model: TaskModel, cores: int) -> None:
            super().__init__()
            self.model, self.cores = model, cores

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images, self.cores)["mask_logits"]

    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "seg.onnx"
    torch.onnx.export(Tier(m, 16), (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["mask_logits"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = m(x, 16)["mask_logits"].numpy()
    assert got.shape == (2, 11, 64, 64)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
