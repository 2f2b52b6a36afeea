"""The one comparator (after Polygraphy's): run an artifact in its own runtime on real images,
compare every output with a reference by the precision's gate, and return a report.

* :func:`run_outputs` is the one "run this graph on a batch of images" loop: it feeds the
  elastic graph's ``core_select``, pads fixed-batch graphs, splits large inputs into batches
  sized from the input resolution, and keeps only what a reference holds (a sample of patch
  rows), so memory stays bounded by one batch.
* :class:`Target` says what to run and with which runner settings (:mod:`veca_deploy.formats`
  gives each backend's parity settings, e.g. OpenVINO at f32 so bf16 hardware cannot hide in a
  parity number).
* :class:`Reference` holds reference outputs: the PyTorch outputs a bundle carries as golden
  outputs, or an FP32 artifact's outputs in the same runtime.
* :class:`Comparator` ties them together and is what export, quantize, validate, eval, bench
  and the TensorRT engine gates call.
numpy + runtimes only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..bundle.manifest import Artifact
from ..data import fashion_mnist, fashion_mnist_available, sample_photos
from ..formats import format_backend, parity_options
from ..preprocess import Preprocess
from ..runtimes import create_runner
from ..runtimes.base import CORE_SELECT, IMAGES, Runner, core_select
from .gates import FP16_MIN_COSINE, FP32_REL_TOL, INT8_MIN_COSINE, Gate, gate_for

__all__ = ["Comparator", "OutputParity", "ParityReport", "Reference", "Target", "compare", "default_batch",
           "parity_inputs", "real_images", "run_outputs", "FP16_MIN_COSINE", "FP32_REL_TOL", "INT8_MIN_COSINE"]

#: pixels per batch when splitting an input set (28x28: 250 images, 512 px: 16, 1024 px: 4)
BATCH_PIXELS = 1 << 22
MAX_BATCH = 250


def real_images(n: int = 4) -> list[np.ndarray]:
    """Real uint8 HWC images: scikit-image's bundled photos, then Fashion-MNIST test images.

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


def default_batch(height: int, width: int) -> int:
    """Images per inference call when a check runs many images: bounded activation memory."""
    return int(max(1, min(MAX_BATCH, BATCH_PIXELS // max(1, height * width))))


# ------------------------------------------------------------------------------ references
@dataclass
class Reference:
    """Reference outputs for one (tier, size). ``patch_rows`` (when set) says which rows of the
    ``patches`` output the reference keeps; actual outputs are reduced to the same rows."""

    outputs: dict[str, np.ndarray]
    source: str = "pytorch-fp32"
    patch_rows: np.ndarray | None = None
    #: per output name, how the reference sampled it: ("rows", idx) along axis 1 (token rows) or
    #: ("pixels", idx) over the flattened last two axes (dense [B, K, H, W] / [B, H, W] maps)
    samples: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    def project(self, actual: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return project(actual, self.patch_rows, self.samples)


def project(outputs: dict[str, np.ndarray], patch_rows: np.ndarray | None,
            samples: dict[str, tuple[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Reduce outputs to the rows / pixels a reference keeps (bounded memory and golden size)."""
    out = outputs
    if patch_rows is not None and "patches" in outputs:
        out = {**out, "patches": np.ascontiguousarray(outputs["patches"][:, patch_rows])}
    for name, (how, idx) in (samples or {}).items():
        if name not in out:
            continue
        v = out[name]
        if how == "rows":
            v = v[:, idx]
        elif v.ndim >= 3:
            v = v.reshape(*v.shape[:-2], -1)[..., idx]
        out = {**out, name: np.ascontiguousarray(v)}
    return out


# ------------------------------------------------------------------------------ reports
@dataclass
class OutputParity:
    max_abs: float
    scale: float
    rel: float
    cosine: float
    #: integer outputs (argmax masks): fraction of equal elements, what their gate judges
    agreement: float | None = None


@dataclass
class ParityReport:
    artifact: str
    precision: str
    cores: int
    outputs: dict[str, OutputParity] = field(default_factory=dict)
    top1_agreement: float | None = None
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    reference: str = ""
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = {k: {kk: _r(vv) for kk, vv in asdict(v).items() if vv is not None}
                        for k, v in self.outputs.items()}
        if self.top1_agreement is not None:
            d["top1_agreement"] = round(self.top1_agreement, 4)
        return d

    def gate_messages(self) -> list[str]:
        return [f"{self.artifact} (c={self.cores}) {f}" for f in self.failures]


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], *, artifact: str,
            precision: str, cores: int, gate: Gate | None = None) -> ParityReport:
    """Compare ``actual`` with ``reference`` output by output and apply ``gate`` (default: the
    gate of ``precision``). Every reference output must be present with the same shape."""
    gate = gate or gate_for(precision)
    rep = ParityReport(artifact=artifact, precision=precision, cores=cores)
    for name, ref in reference.items():
        if name not in actual:
            rep.passed = False
            rep.failures.append(f"{name}: missing from the artifact's outputs")
            continue
        integer = np.asarray(ref).dtype.kind in "iub"
        got = np.asarray(actual[name], dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        if got.shape != ref.shape:
            rep.passed = False
            rep.failures.append(f"{name}: shape {list(got.shape)} != reference {list(ref.shape)}")
            continue
        rep.images = int(len(ref))
        if not np.isfinite(got).all():
            rep.passed = False
            rep.failures.append(f"{name}: non-finite values")
            continue
        if integer:  # class indices: agreement, never cosine (an off-by-one class is no small error)
            agree = float((got == ref).mean()) if ref.size else 1.0
            err = float(np.abs(got - ref).max()) if ref.size else 0.0
            rep.outputs[name] = OutputParity(max_abs=err, scale=1.0, rel=1.0 - agree, cosine=agree, agreement=agree)
            problems = gate.agreement_failures(name, agree)
            if problems:
                rep.passed = False
                rep.failures += problems
            continue
        err = float(np.abs(got - ref).max())
        scale = float(np.abs(ref).max()) or 1.0
        a, b = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
        cos = float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)))
        rep.outputs[name] = OutputParity(max_abs=err, scale=scale, rel=err / scale, cosine=cos)
        problems = gate.failures(name, err / scale, cos)
        if problems:
            rep.passed = False
            rep.failures += problems
    if "logits" in reference and "logits" in actual and rep.outputs.get("logits") is not None:
        rep.top1_agreement = float((np.argmax(reference["logits"], -1) == np.argmax(actual["logits"], -1)).mean())
    return rep


# ------------------------------------------------------------------------------ running
@dataclass(frozen=True)
class Target:
    """What to run: a graph file, its backend, runner options, and how it takes inputs."""

    path: Path
    backend: str
    label: str
    precision: str = "fp32"
    elastic: bool = False
    batch: int | str = "dynamic"
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    max_batch: int | None = None  # a dynamic graph's ceiling per call (a TensorRT profile's max)

    @classmethod
    def of(cls, root: str | os.PathLike, art: Artifact, options: dict[str, Any] | None = None,
           backend: str | None = None) -> "Target":
        """The artifact as a check runs it: its own backend with that backend's parity settings."""
        backend = backend or format_backend(art.format)
        opts = {**parity_options(backend), **(options or {})}
        return cls(Path(root) / art.path, backend, art.path, art.precision, art.elastic, art.batch, opts,
                   art.max_batch)

    def runner(self) -> Runner:
        return create_runner(self.backend, self.path, **self.options)


def run_outputs(runner: Runner, x: np.ndarray, *, cores: int | None = None, batch: int | str = "dynamic",
                chunk: int | None = None, patch_rows: np.ndarray | None = None,
                max_batch: int | None = None,
                samples: dict[str, tuple[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """All outputs of ``runner`` on ``x`` (float32 NCHW), in batches: a fixed-batch graph gets
    exactly ``batch`` images per call (the last call padded), a dynamic one ``chunk`` (default
    from the resolution), never more than ``max_batch``, and exactly the runner's
    ``served_batch`` when it is compiled for one. ``cores`` feeds an elastic graph's
    ``core_select``; ``patch_rows`` keeps only those patch rows of each batch (bounded memory
    for high-resolution checks)."""
    fixed = batch if isinstance(batch, int) else None
    bs = fixed or chunk or default_batch(int(x.shape[2]), int(x.shape[3]))
    if fixed is None and max_batch:
        bs = min(bs, int(max_batch))
    if fixed is None and runner.served_batch:  # check what serves: the runner's own compiled batch
        bs = runner.served_batch
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        n = len(xb)
        if fixed is not None and n < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
        feed = {IMAGES: np.ascontiguousarray(xb)}
        if cores is not None:
            feed[CORE_SELECT] = core_select(cores)
        y = project(runner.infer(feed), patch_rows, samples)
        for k, v in y.items():
            outs.setdefault(k, []).append(np.asarray(v, np.float32)[:n])
    return {k: np.concatenate(v) for k, v in outs.items()}


class Comparator:
    """Runs targets on inputs and checks them against references.

    Runners are opened once per target and kept until :meth:`close` (or the ``with`` block
    ends), so checking every tier of an elastic graph compiles it once."""

    def __init__(self) -> None:
        self._runners: dict[tuple[str, str, tuple], Runner] = {}

    def runner(self, target: Target) -> Runner:
        key = (str(target.path), target.backend, tuple(sorted((k, str(v)) for k, v in target.options.items())))
        r = self._runners.get(key)
        if r is None:
            r = self._runners[key] = target.runner().activate()
        return r

    def outputs(self, target: Target, x: np.ndarray, cores: int, patch_rows: np.ndarray | None = None,
                chunk: int | None = None,
                samples: dict[str, tuple[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
        return run_outputs(self.runner(target), x, cores=cores if target.elastic else None, batch=target.batch,
                           chunk=chunk, patch_rows=patch_rows, max_batch=target.max_batch, samples=samples)

    def check(self, target: Target, x: np.ndarray, reference: Reference, cores: int,
              precision: str | None = None, gate: Gate | None = None) -> ParityReport:
        """Run ``target`` at ``cores`` on ``x`` and compare with ``reference``."""
        got = self.outputs(target, x, cores, patch_rows=reference.patch_rows, samples=reference.samples)
        rep = compare(reference.outputs, got, artifact=target.label, precision=precision or target.precision,
                      cores=cores, gate=gate)
        rep.reference = reference.source
        return rep

    def check_tiers(self, target: Target, tiers: Iterable[int], inputs, references) -> dict[int, ParityReport]:
        """:meth:`check` at every tier; ``inputs``/``references`` map a tier to its data."""
        return {c: self.check(target, inputs(c), references(c), c) for c in tiers}

    def release(self, target: Target) -> None:
        for key in [k for k in self._runners if k[0] == str(target.path)]:
            self._runners.pop(key).close()

    def close(self) -> None:
        for r in self._runners.values():
            r.close()
        self._runners.clear()

    def __enter__(self) -> "Comparator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
