"""Accuracy of every artifact of a bundle, per tier, in the runtime that runs it, and the gate
that keeps quantized artifacts honest.

Classifier bundles (a ``logits`` output) report top-1 on labelled data (Fashion-MNIST TEST split
by default: calibration only ever draws from TRAIN). Backbone-only bundles report the mean
cosine of every feature output against the FP32 ONNX graph in ONNX Runtime on the same held-out
images. Quantized results are gated against FP32 at the same tier and backend.

Memory is bounded by the models and one batch, not by the evaluation set: images are
preprocessed one batch at a time (``default_batch(h, w)``, the comparator's resolution-sized
batch), top-1 counts and per-image cosines are accumulated per batch, and the FP32 reference
outputs a cosine is taken against are computed once per (tier, size) and spilled to a
temporary folder batch by batch, then read back batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..bundle.manifest import Artifact, Manifest
from ..errors import QuantizationError, UsageError, VecaError, first_line
from ..preprocess import Preprocess
from ..compare.comparator import Target, default_batch, run_outputs
from ..compare.records import pack_hits, record_samples, variant_records
from ..metrics import MeanAbsError, MeanIoU, Metric, PerSample, Top1
from ..formats import BACKENDS, variant_options
from ..runtimes import FORMAT_BACKEND, artifact_variants, backend_available, supported_variants
from ..seg_data import SEG_SOURCE
from .data import EVAL_PHOTO_SEED, PHOTOS

#: Largest top-1 drop (points) of an FP16/INT8 artifact vs FP32 at the same tier, and the
#: smallest mean feature cosine for backbone-only bundles.
MAX_DROP_POINTS = 1.0
MIN_FEATURE_COSINE = 0.99
DEFAULT_DATA = "fashion-mnist"
#: Images the quantize-time gate uses (paired comparison, ~1 min on 2 busy cores for a full
#: bundle); ``veca-deploy eval`` uses the whole set.
DEFAULT_GATE_SAMPLES = 2000
COSINE_GATE_SAMPLES = 256
#: held-out canvases of the built-in segmentation data per evaluation when no limit is given
#: (mIoU from one confusion matrix over all 12.8 M pixels at 224 px)
DEFAULT_SEG_SAMPLES = 256
#: A mean feature cosine against a 0.99 floor is resolved by a few images (an FP16 backbone sits
#: at ~0.9999 with a per-image spread ~1e-4; the golden-output gate, cosine >= 0.999 for FP16, has
#: already run on real photos at the tier's size), so the held-out cosine gate takes at most this
#: many pixels per artifact-tier: 256 images at 28 px, 20 at 224 px, 4 (the minimum) from 512 px.
#: Measured (veca_small, 4 tiers, 2 cores): this gate was the largest stage of an FP32+FP16 export
#: at every size (210 s of 405 s at 224 px with 83 images; 252 s of 524 s at 1024 px with 4),
#: because ONNX Runtime runs FP16 graphs on CPUs without native FP16 far slower than FP32.
COSINE_GATE_PIXELS = 1 << 20
COSINE_GATE_MIN = 4
#: From this side (px) a feature-cosine gate on the default data runs on held-out real photos
#: instead of 28x28 Fashion-MNIST upscaled 18x or more (issue 14): ranges calibrated on photos
#: and checked on blurry grey upscales disagree for reasons a deployment never meets (measured:
#: Intel Xeon, OpenVINO INT8 C=16 at 512 px, 300 photo crops: cosine 0.9894 on Fashion-MNIST).
PHOTO_GATE_SIDE = 512


def cosine_gate_samples(height: int, width: int) -> int:
    """Held-out images for the feature-cosine gate at this resolution (see COSINE_GATE_PIXELS)."""
    return int(max(COSINE_GATE_MIN, min(COSINE_GATE_SAMPLES, COSINE_GATE_PIXELS // max(1, height * width))))


@dataclass
class EvalData:
    images: dict[tuple[int, int], np.ndarray]  # preprocessed per (h, w), filled only by images_at
    labels: np.ndarray | None
    name: str
    raw: Any = field(default=None, repr=False)
    #: per-pixel targets aligned with ``raw`` (class masks [N, H, W] or dense maps), indexed per
    #: batch: an array, or a lazy sequence (``seg_data.SegImages.masks``) that makes them on demand
    targets: Any = field(default=None, repr=False)
    target_kind: str | None = None  # "masks" (class per pixel) or "maps" (values per pixel)
    num_classes: int | None = None  # mask classes (background included)

    @property
    def samples(self) -> int:
        return int(len(self.raw))


def load_eval_data(data: str | os.PathLike | np.ndarray, pre: Preprocess, limit: int | None = None) -> EvalData:
    """Held-out raw images (+ labels when known): ``fashion-mnist`` means its TEST split; a
    ``.npz`` may carry ``images`` and ``labels``; folders and ``.npy`` are unlabelled (cosine)."""
    from .data import read_source

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be positive, got {limit}")
    labels = None
    extra: dict[str, Any] = {}
    if str(data) == DEFAULT_DATA and not isinstance(data, np.ndarray):
        from ..data import fashion_mnist

        raw, labels = fashion_mnist("test")
        name = "fashion-mnist:test"
    elif str(data) == PHOTOS and not isinstance(data, np.ndarray):
        from ..data import PhotoCrops

        raw = PhotoCrops(limit or COSINE_GATE_SAMPLES, seed=EVAL_PHOTO_SEED)
        name = f"{PHOTOS}:held-out ({len(raw.sources)} photos)"
    elif str(data) == SEG_SOURCE and not isinstance(data, np.ndarray):
        from ..seg_data import NUM_SEG_CLASSES, SegImages

        raw = SegImages(limit or DEFAULT_SEG_SAMPLES, "test")
        name = f"{SEG_SOURCE}:test"
        extra = {"targets": raw.masks, "target_kind": "masks", "num_classes": NUM_SEG_CLASSES}
    elif not isinstance(data, np.ndarray) and Path(data).suffix.lower() == ".npz" and Path(data).is_file():
        z = np.load(Path(data), allow_pickle=False)
        if "images" in z and ("masks" in z or "maps" in z):
            raw, name = z["images"], str(data)
            kind = "masks" if "masks" in z else "maps"
            targets = z[kind]
            hw = raw.shape[2:4] if raw.ndim == 4 and raw.shape[1] in (1, 3) and raw.shape[3] not in (1, 3) \
                else raw.shape[1:3]  # NCHW float images, else HWC / HW
            if len(targets) != len(raw) or targets.shape[1:3] != hw:
                raise UsageError(f"{data}: {kind} {list(targets.shape)} do not match images {list(raw.shape)} "
                                 "(one [H, W] target per image, at the image's size)")
            extra = {"targets": targets, "target_kind": kind}
            if kind == "masks":
                if not np.issubdtype(targets.dtype, np.integer):
                    raise UsageError(f"{data}: masks must be integer class indices, got {targets.dtype}")
                # without num_classes the confusion matrix grows with the classes seen (labels or predictions)
                extra["num_classes"] = int(z["num_classes"]) if "num_classes" in z else None
        elif "labels" in z and "images" in z:
            raw, labels, name = z["images"], z["labels"], str(data)
            if len(labels) != len(raw):
                raise UsageError(f"{data}: {len(raw)} images but {len(labels)} labels")
        else:
            raw, _, name, _ = read_source(data, count=limit or 10**9)
    else:
        raw, _, name, _ = read_source(data, count=limit or 10**9)
    if limit is not None and str(data) != SEG_SOURCE:  # the built-in canvases are made n at a time already
        raw = raw[:limit]
        labels = labels[:limit] if labels is not None else None
        if extra.get("targets") is not None:
            extra["targets"] = extra["targets"][:limit]
    if len(raw) == 0:
        raise UsageError(f"evaluation data {name} is empty")
    return EvalData(images={}, labels=None if labels is None else np.asarray(labels, np.int64), name=name, raw=raw,
                    **extra)


def targets_at(data: EvalData, start: int, n: int, size: tuple[int, int], pre: Preprocess) -> np.ndarray | None:
    """The targets of images ``start..start+n-1`` at the graph's input ``size``: labels as they are;
    masks / maps resized with nearest neighbour by the same geometry as the images (a stretch, or a
    square image to a square size), so a predicted pixel meets its own label."""
    if data.target_kind is None:
        return None if data.labels is None else data.labels[start:start + n]
    t = np.asarray(data.targets[start:start + n])
    if t.shape[1:3] == tuple(size):
        return t
    h, w = t.shape[1:3]
    square = h == w and size[0] == size[1] and float(getattr(pre, "crop_pct", 1.0) or 1.0) >= 1.0
    if getattr(pre, "resize_mode", "stretch") != "stretch" and not square:
        raise UsageError(f"{data.name}: {h}x{w} targets cannot follow the {pre.resize_mode} resize to "
                         f"{size[0]}x{size[1]}; give targets at the graph's size or use --resize-mode stretch")
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return t[:, rows][:, :, cols]


#: metric names ``evaluate(metric=...)`` / ``--metric`` accept (or a callable, see :func:`metric_for`)
METRICS = ("top1", "miou", "mae", "cosine")


def dense_output(manifest: Manifest, art: Artifact, kinds: Sequence[str]) -> str | None:
    """The first of ``art``'s outputs whose recorded kind (``model.output_specs``) is in ``kinds``,
    preferring the order of ``kinds``."""
    specs = (manifest.model or {}).get("output_specs") or {}
    for kind in kinds:
        for name in art.outputs:
            if (specs.get(name) or {}).get("kind") == kind:
                return name
    return None


def metric_for(manifest: Manifest, art: Artifact, data: EvalData, metric: Any = None) -> Callable[[], Metric] | None:
    """A factory of the task metric for ``art`` on ``data`` (a fresh accumulator per tier), or None
    for the feature-cosine fallback. ``metric``: None (from the outputs and the data: mIoU for a
    mask output on masks, MAE for a dense output on maps, top-1 for logits on labels), a name in
    :data:`METRICS`, a :class:`~veca_deploy.metrics.Metric` instance (copied per tier) or a callable
    ``fn(outputs, targets) -> per-sample scores`` (higher is better, mean over the set)."""
    import copy

    if isinstance(metric, Metric):
        return lambda: copy.deepcopy(metric)
    if callable(metric):
        return lambda: PerSample(metric)
    if metric is not None and metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)} or pass a callable")
    if metric == "cosine":
        return None
    if data.target_kind == "masks" and metric in (None, "miou"):
        out = dense_output(manifest, art, ("mask", "mask_logits", "mask_probs"))
        if out is not None:
            k = data.num_classes
            return lambda: MeanIoU(k, out)
    if data.target_kind == "maps" and metric in (None, "mae"):
        out = dense_output(manifest, art, ("dense",))
        if out is not None:
            return lambda: MeanAbsError(out)
    if data.labels is not None and "logits" in art.outputs and metric in (None, "top1"):
        return lambda: Top1("logits")
    if metric is not None:
        raise UsageError(f"metric {metric} needs {'masks' if metric == 'miou' else 'labels' if metric == 'top1' else 'maps'}"
                         f" in the evaluation data and a matching output; {art.id} has {', '.join(art.outputs)} and "
                         f"{data.name} has {data.target_kind or ('labels' if data.labels is not None else 'no targets')}")
    return None


def images_at(data: EvalData, pre: Preprocess, size: tuple[int, int]) -> np.ndarray:
    """The whole evaluation set preprocessed to ``size`` as one array, cached in ``data.images``.

    **Materialises every image** (10 000 x 3 x 224 x 224 float32 is 6 GB): for the recipe study
    (:mod:`veca_deploy.calibration.study`) on small models. :func:`measure_accuracy` streams
    :func:`eval_batches` instead."""
    if size not in data.images:
        data.images[size] = np.concatenate([x for _, x in eval_batches(data, pre, size)])
    return data.images[size]


def eval_batches(data: EvalData, pre: Preprocess, size: tuple[int, int],
                 batch: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images)`` batches of the evaluation set preprocessed to ``size``, one at a
    time (default size ``default_batch(h, w)``)."""
    from .data import preprocess_raw

    bs = int(batch or default_batch(*size))
    raw = data.raw
    for i in range(0, len(raw), bs):
        yield i, preprocess_raw(raw[i:i + bs], pre, size, data.name, 3)


def run_artifact(root: Path, art: Artifact, x: np.ndarray, cores: int, backend: str | None = None,
                 options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """All outputs of ``art`` at ``cores`` on ``x`` through the comparator's one run loop
    (batches sized from the resolution, fixed-batch graphs padded, parity runner settings)."""
    target = Target.of(root, art, options, backend)
    with target.runner() as r:
        return run_outputs(r, x, cores=cores if art.elastic else None, batch=art.batch, max_batch=art.max_batch)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image cosine of two output batches (each image flattened), float64."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cosines(a, b)))


class _Spill:
    """Reference outputs of one (tier, size), one ``.npz`` per evaluation batch on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, start: int) -> Path:
        return self.folder / f"{start:09d}.npz"

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        np.savez(self._path(start), **outputs)

    def read(self, start: int) -> dict[str, np.ndarray]:
        with np.load(self._path(start), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _artifact_batches(runner, art: Artifact, data: EvalData, pre: Preprocess, cores: int
                      ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(start, outputs)`` of ``art`` at ``cores`` per evaluation batch (the comparator's loop)."""
    for start, x in eval_batches(data, pre, art.size):
        yield start, run_outputs(runner, x, cores=cores if art.elastic else None, batch=art.batch, max_batch=art.max_batch)


def measure_accuracy(root: Path, arts: Sequence[Artifact], data: EvalData, pre: Preprocess, manifest: Manifest,
            progress: Callable[..., None] | None = None, metric: Any = None,
            variants: bool | Sequence[str] = False) -> dict[str, dict[str, Any]]:
    """Accuracy record (the manifest's ``accuracy`` dict) for each artifact id.

    The task metric of :func:`metric_for` (top-1, mIoU, MAE or the user's ``metric``) when the
    outputs and the data allow one; else the mean cosine of each output against the FP32 ONNX
    graph (ONNX Runtime) at the same tier and size.

    ``variants`` (True: each execution variant this machine runs natively, or a list such as
    ``["bf16"]``): each applicable variant of an artifact is measured the same way, on the same
    images, into ``record["variants"][name]`` (see :func:`variant_records`).
    """
    report = progress or (lambda *a, **k: None)
    results: dict[str, dict[str, Any]] = {}
    device: dict[str, str] | None = None  # this machine's id and CPU family, read once, at the first variant
    with tempfile.TemporaryDirectory(prefix="veca-eval-") as tmp:
        spills: dict[tuple[int, int, int], _Spill] = {}
        for art in arts:
            rec = _measure_one(root, art, data, pre, manifest, report, spills, Path(tmp), metric)
            if rec is None:
                continue
            results[art.id] = rec
            for v in execution_variants(art, variants):
                if device is None:
                    from ..runtimes.fingerprint import cpu_family, device_id

                    device = {"device": device_id(), "family": cpu_family()}
                try:
                    vrec = _measure_one(root, art, data, pre, manifest, report, spills, Path(tmp), metric, v)
                except (VecaError, RuntimeError) as e:  # this device cannot run it: recorded, never selected
                    vrec = {"error": first_line(e)}
                if vrec is not None and not vrec.get("reference"):
                    rec.setdefault("variants", {})[v] = {**vrec, "execution": v, **device}
    return results


def execution_variants(art: Artifact, variants: bool | Sequence[str]) -> list[str]:
    """The execution variants of ``art`` to measure here (:func:`~veca_deploy.runtimes.artifact_variants`):
    of a named list too, only those this machine runs natively (:func:`~veca_deploy.runtimes.supported_variants`):
    an accuracy is a measurement of the arithmetic that ran (OpenVINO would run f32 under the
    name bf16 on a CPU without it, which the runner refuses), and a variant run through
    reference kernels (:func:`~veca_deploy.runtimes.slow_variant`) is never measured."""
    backend = FORMAT_BACKEND[art.format]
    named = artifact_variants(backend, art.precision, variants)
    if not named:
        return []
    native = set(supported_variants(backend, precision=art.precision))
    return [v for v in named if v in native]


def unmeasured_variants(variants: bool | Sequence[str]) -> list[str]:
    """The variants of a named list that :func:`execution_variants` leaves out everywhere here:
    no installed backend runs them natively on this machine (what ``eval`` says it skipped)."""
    if isinstance(variants, bool):
        return []
    native = {v for b in BACKENDS if backend_available(b) for v in supported_variants(b)}
    return [v for v in variants if v not in native]


def _measure_one(root: Path, art: Artifact, data: EvalData, pre: Preprocess, manifest: Manifest,
                 report: Callable[..., None], spills: dict[tuple[int, int, int], "_Spill"],
                 tmp: Path, user_metric: Any = None, variant: str | None = None) -> dict[str, Any] | None:
    backend = FORMAT_BACKEND[art.format]
    if not backend_available(backend):
        return None
    per_tier: dict[str, float] = {}
    records: dict[str, str] = {}  # tier -> per-image correctness (pack_hits)
    factory = metric_for(manifest, art, data, user_metric)
    metric, lower_better = "cosine", False
    if variant is None and factory is None and all(getattr(_fp32_onnx(manifest, c, art.size), "id", None) == art.id
                                                   for c in art.tiers):
        # the graph every other artifact's features are compared with: nothing to measure
        return {"dataset": data.name, "samples": 0, "backend": backend, "metric": "cosine", "reference": True}
    label = art.id + (f" in {variant}" if variant else "")
    with Target.of(root, art, variant_options(backend, variant), backend).runner() as runner:
        for c in art.tiers:
            report(f"eval {label} c={c}", advance=0)
            if factory is not None:
                m = factory()
                metric, lower_better = m.name, not m.higher_is_better
                for start, out in _artifact_batches(runner, art, data, pre, c):
                    n = len(next(iter(out.values())))
                    m.update(out, targets_at(data, start, n, art.size, pre))
                per_tier[str(c)] = float(m.value())
                hits = m.hits()
                if hits is not None:
                    records[str(c)] = pack_hits(hits)
                continue
            key = (c, *art.size)
            ref = _fp32_onnx(manifest, c, art.size)
            if ref is None:
                raise QuantizationError(f"{art.id}: no FP32 ONNX artifact at c={c} {art.height}x{art.width} "
                                        "to compare features against")
            spill = spills.get(key)
            # this artifact is the reference: spill its own outputs
            fill = spill is None and ref.id == art.id and variant is None
            if spill is None:
                spill = _Spill(tmp / f"c{c}_{art.height}x{art.width}")
                if not fill:
                    with Target.of(root, ref, None, "onnxruntime").runner() as rr:
                        for start, out in _artifact_batches(rr, ref, data, pre, c):
                            spill.write(start, out)
                spills[key] = spill
            cos: dict[str, list[np.ndarray]] = {}
            for start, out in _artifact_batches(runner, art, data, pre, c):
                if fill:
                    spill.write(start, out)
                want = out if fill else spill.read(start)
                for k, v in want.items():
                    if k in out:
                        cos.setdefault(k, []).append(cosines(out[k], v))
            per_tier[str(c)] = min(float(np.mean(np.concatenate(v))) for v in cos.values())
    rec: dict[str, Any] = {"dataset": data.name, "samples": data.samples, "backend": backend,
                           "metric": metric, **({"higher_is_better": False} if lower_better else {})}
    if records:  # per-image results: the selector compares two candidates on the same images (paired)
        rec["sample_id"] = sample_id(data)
        rec["correct"] = records
    if backend == "openvino" or variant:
        rec["inference_precision"] = variant or "f32"
    if art.elastic:
        rec["per_tier"] = {k: round(v, 6) for k, v in per_tier.items()}
    else:
        rec[metric] = round(next(iter(per_tier.values())), 6)
    return rec


def sample_id(data: EvalData) -> str:
    """Which images an evaluation ran on: the dataset name, the image count and a hash of the
    labels in order. Two records with the same id were measured on the same images, so their
    per-image results can be paired."""
    h = hashlib.sha256(f"{data.name}\n{data.samples}\n".encode())
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _fp32_onnx(manifest: Manifest, cores: int, size: tuple[int, int]) -> Artifact | None:
    cands = manifest.find(fmt="onnx", precision="fp32", cores=cores, size=size)
    cands.sort(key=lambda a: a.elastic)  # prefer the per-tier graph
    return cands[0] if cands else None


def tier_values(rec: dict[str, Any]) -> dict[str, float]:
    if "per_tier" in rec:
        return {k: float(v) for k, v in rec["per_tier"].items()}
    key = rec.get("metric") if rec.get("metric") in rec else ("top1" if "top1" in rec else "cosine")
    return {"_": float(rec[key])}


def gate(manifest: Manifest, results: dict[str, dict[str, Any]], allow_drop: float | None = None,
         ids: Sequence[str] | None = None) -> list[str]:
    """Failures of FP16/INT8 artifacts vs FP32 at the same tier, size and format (same runtime).

    ``allow_drop`` (points) replaces the 1.0-point limit; for feature cosine it lowers the 0.99
    floor by ``allow_drop / 100``. Execution variants are gated apart (:func:`gate_variants`).
    """
    by_id = {a.id: a for a in manifest.artifacts}
    failures = []
    for aid, rec in results.items():
        art = by_id.get(aid)
        if art is None or art.precision == "fp32" or (ids is not None and aid not in ids):
            continue
        failures += [msg for _, msg in _gate_record(manifest, results, art, aid, rec, allow_drop)]
    return failures


def gate_variants(manifest: Manifest, results: dict[str, dict[str, Any]], allow_drop: float | None = None
                  ) -> list[str]:
    """Gate every execution variant record in ``results`` like an artifact, against the FP32
    artifact's default run (an FP32 IR in bf16 against itself in f32), and mark each record
    ``gate: "passed"`` or ``"failed: ..."`` with its ``failed_tiers``: the selector never picks a
    variant at a tier where it failed. A failure is this device's (its lower-precision
    execution), not the bundle's, so it is returned, not raised."""
    by_id = {a.id: a for a in manifest.artifacts}
    failures = []
    for aid, rec in results.items():
        art = by_id.get(aid)
        for v, vrec in variant_records(rec).items():
            if art is None:
                continue
            if vrec.get("error"):  # could not run here: every tier fails
                vrec["gate"] = f"failed: could not run ({vrec['error']})"
                failures.append(f"{aid}+{v}: could not run ({vrec['error']})")
                continue
            got = _gate_record(manifest, results, art, f"{aid}+{v}", vrec, allow_drop)
            vrec["gate"] = "failed: " + "; ".join(msg for _, msg in got) if got else "passed"
            if got:
                vrec["failed_tiers"] = sorted({str(c) for c, _ in got}, key=int)
            failures += [msg for _, msg in got]
    return failures


def _gate_record(manifest: Manifest, results: dict[str, dict[str, Any]], art: Artifact, label: str,
                 rec: dict[str, Any], allow_drop: float | None) -> list[tuple[int, str]]:
    """``(tier, message)`` for each tier of ``rec`` that fails its gate."""
    limit = MAX_DROP_POINTS if allow_drop is None else float(allow_drop)
    vals = tier_values(rec)
    failures = []
    for c in art.tiers:
        got = vals.get(str(c), vals.get("_"))
        if got is None:
            continue
        if rec["metric"] == "cosine":
            floor = MIN_FEATURE_COSINE - (0.0 if allow_drop is None else limit / 100.0)
            if got < floor:
                failures.append((c, f"{label} c={c}: feature cosine {got:.4f} < {floor:.4f}"))
            continue
        ref = _reference_value(manifest, results, art, c, rec["metric"])
        if ref is None:
            failures.append((c, f"{label} c={c}: no FP32 result at this tier to compare with"))
            continue
        name = METRIC_LABELS.get(rec["metric"], rec["metric"])
        if rec.get("higher_is_better", True):
            drop = (ref - got) * 100.0
            if drop > limit + 1e-9:
                failures.append((c, f"{label} c={c}: {name} {got * 100:.2f}% vs FP32 {ref * 100:.2f}% "
                                    f"(-{drop:.2f} points > {limit:g} allowed)"))
        else:  # an error (MAE): the rise relative to FP32, in percent
            rise = (got - ref) / max(abs(ref), 1e-12) * 100.0
            if rise > limit + 1e-9:
                failures.append((c, f"{label} c={c}: {name} {got:.5g} vs FP32 {ref:.5g} "
                                    f"(+{rise:.2f}% > {limit:g}% allowed)"))
    return failures


#: how reports name a metric
METRIC_LABELS = {"top1": "top-1", "miou": "mIoU", "mae": "MAE", "cosine": "feature cosine"}


def reference_for(manifest: Manifest, art: Artifact, c: int) -> Artifact | None:
    """The FP32 artifact a quantized one is judged against at tier ``c``: same format (same
    runtime) first, then the same elasticity."""
    cands = manifest.find(precision="fp32", cores=c, size=art.size)
    cands.sort(key=lambda a: (a.format != art.format, a.elastic != art.elastic))
    return cands[0] if cands else None


def references(manifest: Manifest, arts: Sequence[Artifact], data: EvalData | None = None,
               metric: Any = None) -> list[Artifact]:
    """FP32 artifacts needed to gate ``arts`` by their task metric (not measured already in
    ``arts``); without ``data``, by top-1 (a ``logits`` output)."""
    ids = {a.id for a in arts}
    out: dict[str, Artifact] = {}
    for a in arts:
        task = metric_for(manifest, a, data, metric) is not None if data is not None else "logits" in a.outputs
        if a.precision == "fp32" or not task:
            continue
        for c in a.tiers:
            ref = reference_for(manifest, a, c)
            if ref is not None and ref.id not in ids:
                out[ref.id] = ref
    return list(out.values())


def _reference_value(manifest: Manifest, results: dict, art: Artifact, c: int, metric: str) -> float | None:
    ref = reference_for(manifest, art, c)
    rec = results.get(ref.id) if ref is not None else None
    if not rec or rec.get("metric") != metric:
        return None
    v = tier_values(rec)
    return v.get(str(c), v.get("_"))


def evaluate(bundle_dir: str | os.PathLike, data: str | os.PathLike | np.ndarray = DEFAULT_DATA,
             limit: int | None = None, backends: Sequence[str] | None = None, *, allow_drop: float | None = None,
             json_out: str | os.PathLike | None = None, write: bool = True, gate_results: bool = True,
             progress: Callable[..., None] | None = None, overwrite: bool = False,
             metric: Any = None, variants: bool | Sequence[str] = False) -> dict[str, Any]:
    """Measure every artifact of a bundle (its task metric, or feature cosine, per tier x precision
    x backend). ``metric``: see :func:`metric_for` (default: from the outputs and the data).
    ``data`` ``fashion-mnist`` (the default) means the model's own held-out data when its manifest
    names one (``model.eval_data``: the segmentation reference model's canvases).

    Writes each ``artifact.accuracy`` into the manifest atomically (``write``), saves the JSON
    report (``json_out``) and raises :class:`QuantizationError` listing FP16/INT8 artifacts more
    than 1.0 point (or ``allow_drop``) below FP32, after recording the numbers.

    A record measured on more images than this run (e.g. 2,000 before, ``limit=200`` now) is
    kept, so the selector never compares accuracies of different sample sizes because one
    backend was re-evaluated on a subset; the report's ``kept`` lists those artifacts with both
    sample sizes (this run's numbers are still in the report). ``overwrite=True`` records this
    run's numbers anyway.

    ``variants`` (True: each execution variant this machine runs natively, e.g. OpenVINO in bf16
    on AMX, what ``veca-deploy eval`` does by default; a list: those named; default False: none):
    measured on the same images into ``accuracy["variants"]`` and gated like an artifact against
    FP32 (:func:`gate_variants`); a failed variant (or one that cannot run here) is recorded and
    reported (``gate.variant_failures``) but does not fail the run, and is never selected.
    """
    from ..bundle.io import write_manifest
    from ..bundle.reader import Bundle

    bundle = Bundle.open(bundle_dir)
    known = set(FORMAT_BACKEND.values())
    for b in backends or []:
        if b not in known:
            raise UsageError(f"unknown backend {b!r}; choose from {', '.join(sorted(known))}")
    arts = [a for a in bundle.artifacts if backends is None or FORMAT_BACKEND[a.format] in backends]
    skipped = [a.id for a in arts if not backend_available(FORMAT_BACKEND[a.format])]
    arts = [a for a in arts if a.id not in skipped]
    if not arts:
        raise UsageError(f"{bundle.root}: no artifacts to evaluate with the requested/available backends")
    for a in arts:
        bundle.path_of(a)  # verify hashes before trusting any number
    pre = bundle.preprocess
    ev = load_eval_data(model_eval_data(bundle.manifest, data), pre, limit)
    # FP32 references are always measured on the same images, so drops compare like with like
    refs = [a for a in references(bundle.manifest, arts, ev, metric) if backend_available(FORMAT_BACKEND[a.format])]
    results = measure_accuracy(bundle.root, refs + arts, ev, pre, bundle.manifest, progress, metric,
                               variants=variants)
    failures = gate(bundle.manifest, results, allow_drop)
    variant_failures = gate_variants(bundle.manifest, results, allow_drop)
    kept: list[dict[str, Any]] = []
    if write:
        for a in bundle.manifest.artifacts:
            if a.id in results and not overwrite and record_samples(a.accuracy) > record_samples(results[a.id]):
                kept.append({"artifact": a.id, "recorded_samples": record_samples(a.accuracy),
                             "run_samples": record_samples(results[a.id])})
                continue  # the larger record stays whole, its variants' records with it
            if a.id in results:
                a.accuracy = merge_variant_records(a.accuracy, {
                    **results[a.id], **({"allowed_drop": allow_drop} if allow_drop is not None
                                        and a.precision != "fp32" else {})}, overwrite)
        if allow_drop is not None:
            bundle.manifest.calibration = {**bundle.manifest.calibration, "allow_drop": allow_drop}
        if len(kept) < len(results) or allow_drop is not None:  # nothing new: the manifest (and its signature) stay
            write_manifest(bundle.root, bundle.manifest)
    report = {"bundle": str(bundle.root), "dataset": ev.name, "samples": ev.samples, "skipped": skipped, "kept": kept,
              "gate": {"max_drop_points": MAX_DROP_POINTS if allow_drop is None else allow_drop,
                       "min_feature_cosine": MIN_FEATURE_COSINE, "failures": failures,
                       "variant_failures": variant_failures},
              "results": [{"artifact": aid, "format": _art(bundle.manifest, aid).format,
                           "precision": _art(bundle.manifest, aid).precision,
                           "cores": _art(bundle.manifest, aid).cores, "elastic": _art(bundle.manifest, aid).elastic,
                           **rec} for aid, rec in results.items()]}
    if json_out:
        p = Path(json_out)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    if failures and gate_results:
        raise QuantizationError("accuracy gate failed: " + "; ".join(failures[:6])
                                + (f" (+{len(failures) - 6} more)" if len(failures) > 6 else "")
                                + " (numbers recorded; --allow-drop X accepts a larger drop)")
    return report


def merge_variant_records(old: dict[str, Any] | None, new: dict[str, Any], overwrite: bool = False
                          ) -> dict[str, Any]:
    """``new`` (an artifact's fresh accuracy record) keeping the variant records of ``old`` that
    this run did not measure (another machine's variants) when they rest on the same images
    (same ``sample_id``), so paired comparisons stay valid; ``overwrite`` keeps none. One record
    per variant name: a fresh measurement replaces the old one (whatever machine made it), but a
    "could not run" here does not replace another machine's measured accuracy (this machine's
    refusal is its own: its runner refuses again, and bench records that in its profile)."""
    fresh = variant_records(new)
    keep = {} if overwrite else {v: r for v, r in variant_records(old).items()
                                 if new.get("sample_id") and r.get("sample_id") == new.get("sample_id")
                                 and (v not in fresh or (fresh[v].get("error") and not r.get("error")
                                                         and r.get("device") != fresh[v].get("device")))}
    return {**new, "variants": {**fresh, **keep}} if keep else new


def model_eval_data(manifest: Manifest, data: Any) -> Any:
    """``data``, except that the default (``fashion-mnist``) becomes the model's own held-out data
    when the manifest names one (``model.eval_data``, e.g. ``seg-fashion-mnist``)."""
    own = (manifest.model or {}).get("eval_data")
    if isinstance(own, str) and not isinstance(data, np.ndarray) and str(data) == DEFAULT_DATA:
        return own
    return data


def cosine_gate_data(data: Any, arts: Sequence[Artifact]) -> Any:
    """The data of a feature-cosine gate: the default (Fashion-MNIST) becomes held-out real
    photos when an artifact's side reaches :data:`PHOTO_GATE_SIDE` and photos are installed."""
    from ..data import photo_sources

    if isinstance(data, np.ndarray) or str(data) != DEFAULT_DATA:
        return data
    if any(min(a.height, a.width) >= PHOTO_GATE_SIDE for a in arts) and photo_sources():
        return PHOTOS
    return data


def _art(manifest: Manifest, aid: str) -> Artifact:
    return next(a for a in manifest.artifacts if a.id == aid)
