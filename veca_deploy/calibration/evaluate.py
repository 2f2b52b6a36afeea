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
from ..errors import QuantizationError, UsageError
from ..preprocess import Preprocess
from ..compare.comparator import Target, default_batch, run_outputs
from ..compare.records import pack_hits
from ..runtimes import FORMAT_BACKEND, backend_available

#: Largest top-1 drop (points) of an FP16/INT8 artifact vs FP32 at the same tier, and the
#: smallest mean feature cosine for backbone-only bundles.
MAX_DROP_POINTS = 1.0
MIN_FEATURE_COSINE = 0.99
DEFAULT_DATA = "fashion-mnist"
#: Images the quantize-time gate uses (paired comparison, ~1 min on 2 busy cores for a full
#: bundle); ``veca-deploy eval`` uses the whole set.
DEFAULT_GATE_SAMPLES = 2000
COSINE_GATE_SAMPLES = 256
#: A mean feature cosine against a 0.99 floor is resolved by a few images (an FP16 backbone sits
#: at ~0.9999 with a per-image spread ~1e-4; the golden-output gate, cosine >= 0.999 for FP16, has
#: already run on real photos at the tier's size), so the held-out cosine gate takes at most this
#: many pixels per artifact-tier: 256 images at 28 px, 20 at 224 px, 4 (the minimum) from 512 px.
#: Measured (veca_small, 4 tiers, 2 cores): this gate was the largest stage of an FP32+FP16 export
#: at every size (210 s of 405 s at 224 px with 83 images; 252 s of 524 s at 1024 px with 4),
#: because ONNX Runtime runs FP16 graphs on CPUs without native FP16 far slower than FP32.
COSINE_GATE_PIXELS = 1 << 20
COSINE_GATE_MIN = 4


def cosine_gate_samples(height: int, width: int) -> int:
    """Held-out images for the feature-cosine gate at this resolution (see COSINE_GATE_PIXELS)."""
    return int(max(COSINE_GATE_MIN, min(COSINE_GATE_SAMPLES, COSINE_GATE_PIXELS // max(1, height * width))))


@dataclass
class EvalData:
    images: dict[tuple[int, int], np.ndarray]  # preprocessed per (h, w), filled only by images_at
    labels: np.ndarray | None
    name: str
    raw: Any = field(default=None, repr=False)

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
    if str(data) == DEFAULT_DATA and not isinstance(data, np.ndarray):
        from ..data import fashion_mnist

        raw, labels = fashion_mnist("test")
        name = "fashion-mnist:test"
    elif not isinstance(data, np.ndarray) and Path(data).suffix.lower() == ".npz" and Path(data).is_file():
        z = np.load(Path(data), allow_pickle=False)
        if "labels" in z and "images" in z:
            raw, labels, name = z["images"], z["labels"], str(data)
            if len(labels) != len(raw):
                raise UsageError(f"{data}: {len(raw)} images but {len(labels)} labels")
        else:
            raw, _, name, _ = read_source(data, count=limit or 10**9)
    else:
        raw, _, name, _ = read_source(data, count=limit or 10**9)
    if limit is not None:
        raw = raw[:limit]
        labels = labels[:limit] if labels is not None else None
    if len(raw) == 0:
        raise UsageError(f"evaluation data {name} is empty")
    return EvalData(images={}, labels=None if labels is None else np.asarray(labels, np.int64), name=name, raw=raw)


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
            progress: Callable[..., None] | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy record (the manifest's ``accuracy`` dict) for each artifact id.

    Top-1 when the graphs have ``logits`` and ``data`` has labels; else the mean cosine of each
    output against the FP32 ONNX graph (ONNX Runtime) at the same tier and size.
    """
    report = progress or (lambda *a, **k: None)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="veca-eval-") as tmp:
        spills: dict[tuple[int, int, int], _Spill] = {}
        for art in arts:
            rec = _measure_one(root, art, data, pre, manifest, report, spills, Path(tmp))
            if rec is not None:
                results[art.id] = rec
    return results


def _measure_one(root: Path, art: Artifact, data: EvalData, pre: Preprocess, manifest: Manifest,
                 report: Callable[..., None], spills: dict[tuple[int, int, int], "_Spill"],
                 tmp: Path) -> dict[str, Any] | None:
    backend = FORMAT_BACKEND[art.format]
    if not backend_available(backend):
        return None
    per_tier: dict[str, float] = {}
    records: dict[str, str] = {}  # tier -> per-image correctness (pack_hits)
    metric = "top1" if ("logits" in art.outputs and data.labels is not None) else "cosine"
    if metric == "cosine" and all(getattr(_fp32_onnx(manifest, c, art.size), "id", None) == art.id
                                  for c in art.tiers):
        # the graph every other artifact's features are compared with: nothing to measure
        return {"dataset": data.name, "samples": 0, "backend": backend, "metric": "cosine", "reference": True}
    with Target.of(root, art, None, backend).runner() as runner:
        for c in art.tiers:
            report(f"eval {art.id} c={c}", advance=0)
            if metric == "top1":
                hits = np.zeros(data.samples, dtype=bool)
                for start, out in _artifact_batches(runner, art, data, pre, c):
                    labels = data.labels[start:start + len(out["logits"])]
                    hits[start:start + len(labels)] = out["logits"].argmax(-1) == labels
                per_tier[str(c)] = float(hits.mean())
                records[str(c)] = pack_hits(hits)
                continue
            key = (c, *art.size)
            ref = _fp32_onnx(manifest, c, art.size)
            if ref is None:
                raise QuantizationError(f"{art.id}: no FP32 ONNX artifact at c={c} {art.height}x{art.width} "
                                        "to compare features against")
            spill = spills.get(key)
            fill = spill is None and ref.id == art.id  # this artifact is the reference: spill its own outputs
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
                           "metric": metric}
    if records:  # per-image results: the selector compares two candidates on the same images (paired)
        rec["sample_id"] = sample_id(data)
        rec["correct"] = records
    if backend == "openvino":
        rec["inference_precision"] = "f32"
    if art.elastic:
        rec["per_tier"] = {k: round(v, 6) for k, v in per_tier.items()}
    else:
        rec["top1" if metric == "top1" else "cosine"] = round(next(iter(per_tier.values())), 6)
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
    return {"_": float(rec["top1"] if "top1" in rec else rec["cosine"])}


def gate(manifest: Manifest, results: dict[str, dict[str, Any]], allow_drop: float | None = None,
         ids: Sequence[str] | None = None) -> list[str]:
    """Failures of FP16/INT8 artifacts vs FP32 at the same tier, size and format (same runtime).

    ``allow_drop`` (points) replaces the 1.0-point limit; for feature cosine it lowers the 0.99
    floor by ``allow_drop / 100``.
    """
    by_id = {a.id: a for a in manifest.artifacts}
    limit = MAX_DROP_POINTS if allow_drop is None else float(allow_drop)
    failures = []
    for aid, rec in results.items():
        art = by_id.get(aid)
        if art is None or art.precision == "fp32" or (ids is not None and aid not in ids):
            continue
        vals = tier_values(rec)
        for c in art.tiers:
            got = vals.get(str(c), vals.get("_"))
            if got is None:
                continue
            if rec["metric"] == "cosine":
                floor = MIN_FEATURE_COSINE - (0.0 if allow_drop is None else limit / 100.0)
                if got < floor:
                    failures.append(f"{aid} c={c}: feature cosine {got:.4f} < {floor:.4f}")
                continue
            ref = _reference_top1(manifest, results, art, c)
            if ref is None:
                failures.append(f"{aid} c={c}: no FP32 result at this tier to compare with")
                continue
            drop = (ref - got) * 100.0
            if drop > limit + 1e-9:
                failures.append(f"{aid} c={c}: top-1 {got * 100:.2f}% vs FP32 {ref * 100:.2f}% "
                                f"(-{drop:.2f} points > {limit:g} allowed)")
    return failures


def reference_for(manifest: Manifest, art: Artifact, c: int) -> Artifact | None:
    """The FP32 artifact a quantized one is judged against at tier ``c``: same format (same
    runtime) first, then the same elasticity."""
    cands = manifest.find(precision="fp32", cores=c, size=art.size)
    cands.sort(key=lambda a: (a.format != art.format, a.elastic != art.elastic))
    return cands[0] if cands else None


def references(manifest: Manifest, arts: Sequence[Artifact]) -> list[Artifact]:
    """FP32 artifacts needed to gate ``arts`` by top-1 (not measured already in ``arts``)."""
    ids = {a.id for a in arts}
    out: dict[str, Artifact] = {}
    for a in arts:
        if a.precision == "fp32" or "logits" not in a.outputs:
            continue
        for c in a.tiers:
            ref = reference_for(manifest, a, c)
            if ref is not None and ref.id not in ids:
                out[ref.id] = ref
    return list(out.values())


def _reference_top1(manifest: Manifest, results: dict, art: Artifact, c: int) -> float | None:
    ref = reference_for(manifest, art, c)
    rec = results.get(ref.id) if ref is not None else None
    if not rec or rec.get("metric") != "top1":
        return None
    v = tier_values(rec)
    return v.get(str(c), v.get("_"))


def evaluate(bundle_dir: str | os.PathLike, data: str | os.PathLike | np.ndarray = DEFAULT_DATA,
             limit: int | None = None, backends: Sequence[str] | None = None, *, allow_drop: float | None = None,
             json_out: str | os.PathLike | None = None, write: bool = True, gate_results: bool = True,
             progress: Callable[..., None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Measure every artifact of a bundle (top-1 or feature cosine per tier x precision x backend).

    Writes each ``artifact.accuracy`` into the manifest atomically (``write``), saves the JSON
    report (``json_out``) and raises :class:`QuantizationError` listing FP16/INT8 artifacts more
    than 1.0 point (or ``allow_drop``) below FP32, after recording the numbers.

    A record measured on more images than this run (e.g. 2,000 before, ``limit=200`` now) is
    kept, so the selector never compares accuracies of different sample sizes because one
    backend was re-evaluated on a subset; the report's ``kept`` lists those artifacts with both
    sample sizes (this run's numbers are still in the report). ``overwrite=True`` records this
    run's numbers anyway.
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
    ev = load_eval_data(data, pre, limit)
    # FP32 references are always measured on the same images, so drops compare like with like
    refs = [a for a in references(bundle.manifest, arts) if backend_available(FORMAT_BACKEND[a.format])]
    results = measure_accuracy(bundle.root, refs + arts, ev, pre, bundle.manifest, progress)
    failures = gate(bundle.manifest, results, allow_drop)
    kept: list[dict[str, Any]] = []
    if write:
        for a in bundle.manifest.artifacts:
            if a.id in results and not overwrite and _samples(a.accuracy) > _samples(results[a.id]):
                kept.append({"artifact": a.id, "recorded_samples": _samples(a.accuracy),
                             "run_samples": _samples(results[a.id])})
                continue
            if a.id in results:
                a.accuracy = {**results[a.id], **({"allowed_drop": allow_drop} if allow_drop is not None
                                                  and a.precision != "fp32" else {})}
        if allow_drop is not None:
            bundle.manifest.calibration = {**bundle.manifest.calibration, "allow_drop": allow_drop}
        if len(kept) < len(results) or allow_drop is not None:  # nothing new: the manifest (and its signature) stay
            write_manifest(bundle.root, bundle.manifest)
    report = {"bundle": str(bundle.root), "dataset": ev.name, "samples": ev.samples, "skipped": skipped, "kept": kept,
              "gate": {"max_drop_points": MAX_DROP_POINTS if allow_drop is None else allow_drop,
                       "min_feature_cosine": MIN_FEATURE_COSINE, "failures": failures},
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


def _samples(rec: dict[str, Any] | None) -> int:
    """Images behind an accuracy record (0: none, a reference placeholder, or unknown)."""
    n = (rec or {}).get("samples")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def _art(manifest: Manifest, aid: str) -> Artifact:
    return next(a for a in manifest.artifacts if a.id == aid)
