"""The one parity checker every exporter uses: run an artifact in its own runtime on real
images and compare with PyTorch (max abs error, error relative to output scale, cosine, top-1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..data import fashion_mnist, fashion_mnist_available, sample_photos
from ..preprocess import Preprocess

#: Gates: FP32 must agree to 1e-4 relative to the output scale; FP16 cosine >= 0.999.
FP32_REL_TOL = 1e-4
FP16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99


def real_images(n: int = 4) -> list[np.ndarray]:
    """Real uint8 HWC images: scikit-image's bundled photos and Fashion-MNIST test images.

    Falls back to a deterministic synthetic scene only when neither source is installed.
    """
    imgs = [img for _, img in sample_photos()][: max(1, n // 2)]
    if fashion_mnist_available():
        x, _ = fashion_mnist("test")
        imgs += [np.repeat(x[i][..., None], 3, axis=2) for i in range(0, 10 * (n - len(imgs)), 10)]
    if not imgs:
        yy, xx = np.mgrid[0:240, 0:320]
        scene = np.stack([(xx * 255 // 319), (yy * 255 // 239), ((xx + yy) % 256)], -1).astype(np.uint8)
        imgs = [scene, scene[::-1].copy()]
    return imgs[:n]


def parity_inputs(pre: Preprocess, height: int, width: int, n: int = 4) -> np.ndarray:
    return pre(real_images(n), (height, width))


@dataclass
class OutputParity:
    max_abs: float
    scale: float
    rel: float
    cosine: float


@dataclass
class ParityReport:
    artifact: str
    precision: str
    cores: int
    outputs: dict[str, OutputParity] = field(default_factory=dict)
    top1_agreement: float | None = None
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = {k: {kk: _r(vv) for kk, vv in asdict(v).items()} for k, v in self.outputs.items()}
        if self.top1_agreement is not None:
            d["top1_agreement"] = round(self.top1_agreement, 4)
        return d


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], *, artifact: str,
            precision: str, cores: int) -> ParityReport:
    """Compare outputs and apply the gate for ``precision``."""
    rep = ParityReport(artifact=artifact, precision=precision, cores=cores)
    for name, ref in reference.items():
        if name not in actual:
            rep.passed = False
            rep.failures.append(f"{name}: missing from the artifact's outputs")
            continue
        got = np.asarray(actual[name], dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        if got.shape != ref.shape:
            rep.passed = False
            rep.failures.append(f"{name}: shape {list(got.shape)} != reference {list(ref.shape)}")
            continue
        err = float(np.abs(got - ref).max())
        scale = float(np.abs(ref).max()) or 1.0
        a, b = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
        cos = float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)))
        rep.outputs[name] = OutputParity(max_abs=err, scale=scale, rel=err / scale, cosine=cos)
        if not np.isfinite(got).all():
            rep.passed = False
            rep.failures.append(f"{name}: non-finite values")
        elif precision == "fp32" and err / scale > FP32_REL_TOL:
            rep.passed = False
            rep.failures.append(f"{name}: max abs error {err:.3g} is {err / scale:.3g} of the output scale "
                                f"(gate {FP32_REL_TOL:g})")
        elif precision == "fp16" and cos < FP16_MIN_COSINE:
            rep.passed = False
            rep.failures.append(f"{name}: cosine {cos:.5f} < {FP16_MIN_COSINE}")
        elif precision == "int8" and cos < INT8_MIN_COSINE:
            rep.passed = False
            rep.failures.append(f"{name}: cosine {cos:.5f} < {INT8_MIN_COSINE}")
    if "logits" in reference and "logits" in actual:
        rep.top1_agreement = float((np.argmax(reference["logits"], -1) == np.argmax(actual["logits"], -1)).mean())
    return rep


def torch_reference(model, images: np.ndarray, cores: int | None) -> dict[str, np.ndarray]:
    """PyTorch FP32 outputs named like the graph outputs."""
    import torch

    from .onnx_export import output_names

    with torch.no_grad():
        outs = model(torch.from_numpy(images), cores=None if model.cfg.attention == "full" else cores)
    return {n: o.numpy() for n, o in zip(output_names(model), outs)}
