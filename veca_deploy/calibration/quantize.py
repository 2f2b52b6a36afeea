"""FP16 and INT8 artifacts for a bundle, each passing the parity gate and the accuracy gate.

:func:`add_precisions` is what ``veca_deploy.export`` calls on its staging folder;
:func:`quantize` does the same to an existing bundle through an atomic staged update. Both
work from the bundle's FP32 ONNX graphs / OpenVINO IR only, so no torch is needed.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..bundle.io import file_entry, staged_update, verify_artifact, write_manifest
from ..bundle.manifest import Artifact, Manifest, artifact_id, read_manifest
from ..compare.checks import BundleReferences, failures_of, parity_record
from ..compare.comparator import Comparator
from ..data import fashion_mnist_available
from ..errors import QuantizationError, UsageError
from ..formats import EXPORT_FORMATS, EXPORT_PRECISIONS
from ..preprocess import Preprocess
from .data import CalibrationSet, load_calibration
from ..seg_data import SEG_SOURCE
from .evaluate import (DEFAULT_DATA, DEFAULT_GATE_SAMPLES, DEFAULT_SEG_SAMPLES, cosine_gate_data, cosine_gate_samples, gate,
                       load_eval_data, measure_accuracy, merge_variant_records, metric_for, model_eval_data,
                       references)
from .recipe import NNCF_PRESETS, Fp16Recipe, NncfRecipe, OrtRecipe, ort_recipe

Progress = Callable[..., None]
#: formats whose FP32 artifacts FP16/INT8 are derived from
FORMATS = tuple(f for f in EXPORT_FORMATS if "int8" in EXPORT_PRECISIONS.get(f, ()))


@dataclass
class QuantizePlan:
    """What :func:`add_precisions` adds and how: one object instead of a long keyword list.

    ``allow_small`` accepts fewer than 300 calibration images (recorded in the manifest);
    ``eval_data=None`` skips the accuracy gate (recorded)."""

    precisions: tuple[str, ...] = ("int8",)
    formats: tuple[str, ...] = FORMATS
    calib: str | os.PathLike | np.ndarray | None = None
    count: int | None = None
    seed: int = 0
    allow_small: bool = False
    recipe: OrtRecipe = field(default_factory=OrtRecipe)
    nncf_recipe: NncfRecipe = field(default_factory=NncfRecipe)
    fp16_recipe: Fp16Recipe = field(default_factory=Fp16Recipe)
    tiers: tuple[int, ...] | None = None
    eval_data: str | os.PathLike | np.ndarray | None = DEFAULT_DATA
    eval_limit: int | None = DEFAULT_GATE_SAMPLES
    allow_drop: float | None = None
    cache_dir: str | None = None
    #: what ``--target`` chose and why (:func:`veca_deploy.calibration.target.int8_choice`); None: no
    #: target given (the Python API's default: S8S8 unless ``int8_scheme`` says otherwise)
    target: dict[str, Any] | None = None
    #: the accuracy gate's task metric (a name, a Metric or a callable; None: from outputs and data,
    #: see :func:`veca_deploy.calibration.evaluate.metric_for`)
    metric: Any = None
    #: ONNX Runtime INT8 of a larger static graph reuses the activation ranges calibrated on the
    #: same tier's FP32 ONNX graph at this side (px) in the bundle, instead of calibrating at its
    #: own size: ~3x cheaper from 512 to 1024 px and the same gate result (measured, see
    #: docs/quantization.md); recorded per artifact (``details.ranges_from``), gated as usual.
    #: OpenVINO INT8 (NNCF) and elastic graphs still calibrate at their own size.
    calib_resolution: int | None = None

    @classmethod
    def from_options(cls, *, precisions: Sequence[str] = ("int8",), formats: Sequence[str] | None = None,
                     calib: Any = None, count: int | None = None, seed: int = 0, allow_small: bool = False,
                     recipe: OrtRecipe | None = None, method: str | None = None, int8_scheme: str | None = None,
                     nncf_recipe: NncfRecipe | None = None, fp16_recipe: Fp16Recipe | None = None,
                     tiers: Sequence[int] | None = None, eval_data: Any = DEFAULT_DATA,
                     eval_limit: int | None = DEFAULT_GATE_SAMPLES, allow_drop: float | None = None,
                     cache_dir: str | None = None, target: str | os.PathLike | None = None,
                     metric: Any = None, calib_resolution: int | None = None,
                     nncf_preset: str | None = None) -> "QuantizePlan":
        """Build and check a plan from the API's keyword options (``method``/``int8_scheme``
        are applied to the ONNX Runtime recipe). ``target`` (a name such as ``amx`` or
        ``tensorrt``, ``host``, or a device profile JSON) picks the ONNX INT8 scheme that is fast
        there, and the NNCF preset (``nncf_preset``: ``mixed`` or ``performance``; an explicit
        one, like ``int8_scheme``, wins over the target; ``nncf_recipe`` wins over both, and an
        ``nncf_preset`` that contradicts it is refused). A bad target is a UsageError before any work."""
        precs = tuple(dict.fromkeys(precisions))
        bad = [p for p in precs if p not in ("fp16", "int8")]
        if bad:
            raise UsageError(f"quantization adds fp16/int8, not {', '.join(bad)}")
        fmts = tuple(dict.fromkeys(formats or FORMATS))
        for f in fmts:
            if f not in FORMATS:
                raise UsageError(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
        if "int8" in precs and calib is None:
            raise UsageError("int8 needs calibration data: pass --calib SRC (a folder, .npy/.npz or 'fashion-mnist')")
        if allow_drop is not None and (not np.isfinite(allow_drop) or allow_drop < 0):
            raise UsageError(f"--allow-drop must be a non-negative number of points, got {allow_drop}")
        if calib_resolution is not None:
            if "int8" not in precs:
                raise UsageError("--calib-resolution applies to int8 (ONNX Runtime activation ranges)")
            if isinstance(calib_resolution, bool) or int(calib_resolution) < 8:
                raise UsageError(f"--calib-resolution must be a side in px (>= 8), got {calib_resolution!r}")
        if nncf_preset is not None and nncf_preset not in NNCF_PRESETS:
            raise UsageError(f"unknown NNCF preset {nncf_preset!r}; choose from {', '.join(NNCF_PRESETS)}")
        if nncf_preset is not None and nncf_recipe is not None and nncf_preset != nncf_recipe.preset:
            raise UsageError(f"nncf_preset={nncf_preset!r} contradicts NncfRecipe(preset={nncf_recipe.preset!r}); "
                             "give one of them")
        choice = None
        if target is not None and "int8" in precs:
            from .target import int8_choice, resolve_target

            choice = int8_choice(resolve_target(target), int8_scheme, nncf_preset)
            int8_scheme, nncf_preset = choice["onnx_scheme"], choice["openvino_preset"]
        if nncf_recipe is None:
            nncf_recipe = NncfRecipe(preset=nncf_preset) if nncf_preset else NncfRecipe()
        elif choice is not None:  # an explicit recipe wins: say so in the record
            choice.update(openvino_preset=nncf_recipe.preset, openvino_chosen_by="nncf_recipe",
                          openvino_why=f"NncfRecipe(preset={nncf_recipe.preset!r}) given")
        return cls(precisions=precs, formats=fmts, calib=calib, count=count, seed=seed, allow_small=allow_small,
                   recipe=ort_recipe(method, int8_scheme, base=recipe), nncf_recipe=nncf_recipe,
                   fp16_recipe=fp16_recipe or Fp16Recipe(), tiers=tuple(tiers) if tiers else None,
                   eval_data=eval_data, eval_limit=eval_limit, allow_drop=allow_drop, cache_dir=cache_dir,
                   target=choice if "int8" in precs else None, metric=metric,
                   calib_resolution=None if calib_resolution is None else int(calib_resolution))


def add_precisions(stage: Path, manifest: Manifest, plan: QuantizePlan,
                   progress: Progress | None = None) -> list[Artifact]:
    """Add FP16 (ONNX) and INT8 (ONNX QDQ, OpenVINO NNCF) artifacts next to every FP32 one in
    ``stage`` and register them in ``manifest`` (the caller writes it). Everything is derived
    from the FP32 graphs, so no torch is needed.

    Raises :class:`QuantizationError` (nothing added) when calibration data is refused, when a
    new artifact fails its parity gate (against the bundle's golden outputs, or its FP32 source
    in the same runtime for older bundles), or when its top-1 falls more than 1.0 point (or
    ``allow_drop``) below FP32 at the same tier on ``eval_data``.
    """
    stage = Path(stage)
    report = progress or (lambda *a, **k: None)
    precisions, formats, tiers = list(plan.precisions), list(plan.formats), plan.tiers
    allow_drop, eval_data, eval_limit = plan.allow_drop, plan.eval_data, plan.eval_limit
    ort_r, nncf_r, fp16_r = plan.recipe, plan.nncf_recipe, plan.fp16_recipe
    pre = Preprocess.from_dict(manifest.preprocess)
    channels = int(manifest.model.get("config", {}).get("in_channels", 3))

    sources = [a for a in manifest.artifacts if a.precision == "fp32" and a.format in formats
               and (tiers is None or a.elastic or a.cores in tiers)]
    jobs = []  # (fp32 artifact, precision)
    for a in sources:
        if a.format == "onnx":
            jobs += [(a, p) for p in precisions]
        elif a.format == "openvino" and "int8" in precisions and not a.elastic:
            jobs.append((a, "int8"))
    if not jobs:
        raise QuantizationError("no FP32 artifacts to derive " + "/".join(precisions) + f" from (formats {formats})")
    lows = ranges_sources(manifest, jobs, plan.calib_resolution)
    if lows:  # the lower-resolution graphs are calibrated (and quantized) first
        jobs.sort(key=lambda j: (j[0].id not in {lo.id for lo in lows.values()}, j[0].size))
    cals: dict[tuple[int, int], CalibrationSet] = {}
    if "int8" in precisions:
        for size in sorted({a.size for a, p in jobs if p == "int8" and a.id not in lows}
                           | {lo.size for lo in lows.values()}):
            report(f"calibration data {size[0]}x{size[1]}: reading and hashing {plan.count or 'the default number of'} "
                   "images", advance=0)
            cals[size] = load_calibration(plan.calib, pre, size, count=plan.count, seed=plan.seed,
                                          force=plan.allow_small, channels=channels)

    added: list[Artifact] = []
    failures: list[str] = []
    ranges: dict[str, tuple[Path, int]] = {}  # FP32 source id -> (its ORT ranges file, QuantizeLinear nodes)
    with Comparator() as comp:
        refs = BundleReferences(stage, manifest, comp)
        for src, prec in jobs:
            low = lows.get(src.id) if prec == "int8" else None
            cal = cals.get(low.size if low is not None else src.size)
            work = (f": calibrating, {cal.count} forward passes (tiers take turns per batch), then parity"
                    if prec == "int8" and cal is not None and low is None else
                    f": ranges calibrated at {low.height}x{low.width} ({low.id}), then parity" if low is not None else "")
            label = f"{src.format} {prec} {'elastic' if src.elastic else f'c{src.cores}'} {src.height}x{src.width}"
            report(label + work, advance=0)
            art = _derive(stage, src, prec, cal, plan, refs, failures, low=low, ranges=ranges,
                          progress=calibration_ticker(report, label))
            added.append(art)
    if failures:
        raise QuantizationError("parity gate failed, nothing added: " + "; ".join(failures[:6])
                                + (f" (+{len(failures) - 6} more)" if len(failures) > 6 else ""))
    for art in added:
        manifest.add(art)

    evaluation: dict[str, Any] = {"skipped": "eval_data=None"}
    if eval_data is not None:
        eval_data = model_eval_data(manifest, eval_data)
    if eval_data is not None and str(eval_data) == DEFAULT_DATA and not fashion_mnist_available() and plan.metric is None:
        eval_data = cosine_gate_data(eval_data, added)  # held-out photos still gate high resolution
    if eval_data is not None and str(eval_data) in (DEFAULT_DATA, SEG_SOURCE) and not fashion_mnist_available():
        eval_data, evaluation = None, {"skipped": "Fashion-MNIST not installed"}
    if eval_data is not None:
        report("accuracy gate", advance=0)
        if eval_limit == DEFAULT_GATE_SAMPLES and str(eval_data) == SEG_SOURCE:
            eval_limit = DEFAULT_SEG_SAMPLES
        ev = load_eval_data(eval_data, pre, eval_limit)
        if plan.metric is None and not any(metric_for(manifest, a, ev) is not None for a in added):
            # feature cosine: on real photos at high resolution, and resolved by few images
            # (sized from the largest resolution added) unless a limit was given
            gate_data = cosine_gate_data(eval_data, added)
            if eval_limit == DEFAULT_GATE_SAMPLES or gate_data is not eval_data:
                n = min(cosine_gate_samples(a.height, a.width) for a in added) \
                    if eval_limit == DEFAULT_GATE_SAMPLES else eval_limit
                eval_data, ev = gate_data, load_eval_data(gate_data, pre, n)
        ids = {a.id for a in added}
        refs = references(manifest, added, ev, plan.metric)
        passes = sum(len(a.tiers) for a in refs + added) * ev.samples
        report(f"accuracy gate: {len(refs + added)} artifact(s) on {ev.samples} held-out images "
               f"(~{passes} forward passes)", advance=0)
        results = measure_accuracy(stage, refs + added, ev, pre, manifest, report, plan.metric)
        problems = gate(manifest, results, allow_drop, ids=ids)
        if problems:
            failed = [a for a in added if a.precision == "int8" and any(p.startswith(a.id + " ") for p in problems)]
            cause = likely_cause(cals.get(failed[0].size), ev, pre) if failed else ""
            raise QuantizationError("accuracy gate failed, nothing added: " + "; ".join(problems[:6])
                                    + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
                                    + (f"; {cause}" if cause else "")
                                    + " (--allow-drop X accepts a larger drop, recorded in the manifest)")
        for a in manifest.artifacts:
            if a.id in results:  # variant records of the same images (an earlier eval) are kept
                a.accuracy = merge_variant_records(a.accuracy, {
                    **results[a.id], **({"allowed_drop": allow_drop} if allow_drop is not None and a.id in ids else {})})
        evaluation = {"dataset": ev.name, "samples": ev.samples,
                      "metrics": sorted({str(r.get("metric")) for r in results.values()}),
                      "max_drop_points": allow_drop if allow_drop
                      is not None else 1.0}
    calib_rec = dict(manifest.calibration)
    if cals:
        first = next(iter(cals.values()))
        calib_rec.update({**first.record(), "sizes": {f"{h}x{w}": c.digest for (h, w), c in cals.items()}})
        if first.kind in ("fashion-mnist", SEG_SOURCE):
            calib_rec["disjoint_from_eval"] = True  # TRAIN split only; accuracy uses TEST
        if plan.calib_resolution is not None:
            calib_rec["onnx_ranges_from_side"] = plan.calib_resolution
    calib_rec.update({"precisions": sorted(set(calib_rec.get("precisions", [])) | set(precisions)),
                      "recipes": {**calib_rec.get("recipes", {}),
                                  **({"onnx_int8": ort_r.to_dict(), "openvino_int8": nncf_r.to_dict()}
                                     if "int8" in precisions else {}),
                                  **({"onnx_fp16": fp16_r.to_dict()} if "fp16" in precisions else {})},
                      "evaluation": evaluation,
                      "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    if allow_drop is not None:
        calib_rec["allow_drop"] = allow_drop
    if plan.target is not None:
        calib_rec["target"] = plan.target
    manifest.calibration = calib_rec
    report("quantized", advance=0)
    return added


#: Images whose input statistics are compared when an INT8 gate fails, and how far apart counts
#: as unlike: a channel mean shifted by this many of the gate images' std, a std ratio, or a
#: difference of neighbouring-pixel correlation (photos ~0.9, N(0,1) noise 0: same mean and std)
CAUSE_IMAGES = 8
CAUSE_SHIFT, CAUSE_STD_RATIO, CAUSE_CORRELATION = 0.5, 1.5, 0.3


def input_stats(batches: Any, limit: int = CAUSE_IMAGES) -> dict[str, Any]:
    """Per-channel mean and std, and the mean correlation of horizontally neighbouring pixels,
    of the first ``limit`` preprocessed NCHW images of ``batches``."""
    xs, n = [], 0
    for x in batches:
        xs.append(np.asarray(x[: limit - n], np.float64))
        n += len(xs[-1])
        if n >= limit:
            break
    x = np.concatenate(xs)
    d = x - x.mean(axis=(2, 3), keepdims=True)
    a, b = d[..., :, :-1], d[..., :, 1:]
    corr = (a * b).sum(axis=(2, 3)) / np.sqrt((a * a).sum(axis=(2, 3)) * (b * b).sum(axis=(2, 3)) + 1e-12)
    return {"mean": x.mean(axis=(0, 2, 3)), "std": x.std(axis=(0, 2, 3)), "corr": float(corr.mean())}


def likely_cause(cal: CalibrationSet | None, ev: Any, pre: Preprocess) -> str:
    """Why an INT8 gate most likely failed, from what can be measured: calibration images unlike
    the gate's (input statistics far apart; e.g. N(0,1) noise calibrated, photos checked), too few
    calibration images, or, when the data agree, the recipe."""
    if cal is None:
        return ""
    from .evaluate import eval_batches

    try:
        c = input_stats(cal.batches(CAUSE_IMAGES))
        e = input_stats(x for _, x in eval_batches(ev, pre, cal.size, batch=CAUSE_IMAGES))
    except Exception:  # noqa: BLE001  a diagnosis must never hide the gate's own message
        return ""
    if c["mean"].shape != e["mean"].shape:
        return ""
    tiny = 1e-6
    shift = float(np.max(np.abs(c["mean"] - e["mean"]) / np.maximum(e["std"], tiny)))
    ratio = float(np.max(np.maximum(np.maximum(c["std"], tiny) / np.maximum(e["std"], tiny),
                                    np.maximum(e["std"], tiny) / np.maximum(c["std"], tiny))))
    dcorr = abs(c["corr"] - e["corr"])
    fmt = lambda s: f"mean {float(np.mean(s['mean'])):.2f}, std {float(np.mean(s['std'])):.2f}, " \
                    f"neighbour correlation {s['corr']:.2f}"  # noqa: E731
    seen = f"calibration {cal.source}: {fmt(c)}; gate {ev.name}: {fmt(e)}"
    if shift > CAUSE_SHIFT or ratio > CAUSE_STD_RATIO or dcorr > CAUSE_CORRELATION:
        return (f"likely cause: the calibration data is unlike the gate's images ({seen}): activation ranges "
                "fitted to other statistics clip or waste the INT8 range; calibrate on images like those the "
                "model will see (--calib), or gate on them (--eval-data)")
    if cal.forced:
        return f"likely cause: only {cal.count} calibration images (inputs agree: {seen}); use at least 300"
    return (f"calibration and gate inputs agree ({seen}), so the likely cause is the quantization recipe: "
            "try --method percentile or another --int8-scheme")


#: seconds between progress lines while calibrating (and the last batch always reports)
TICK_S = 10.0


def calibration_ticker(report: Progress, label: str, every_s: float = TICK_S) -> Callable[[int, int], None]:
    """``tick(done, total)`` for the calibration readers: a progress line ``label: done/total
    calibration images`` at most every ``every_s`` seconds and at the end of each pass (NNCF
    reads the data once per statistics pass: the pass number is shown from the second)."""
    import time

    state = {"t": time.monotonic(), "pass": 1, "last": 0}

    def tick(done: int, total: int) -> None:
        if done < state["last"] or state["last"] >= total:  # a new pass began
            state["pass"] += 1
        state["last"] = done
        now = time.monotonic()
        if done >= total or now - state["t"] >= every_s:
            state["t"] = now
            report(f"{label}: {done}/{total} calibration images" + (f" (pass {state['pass']})" if state["pass"] > 1
                                                                     else ""), advance=0)
    return tick


def ranges_sources(manifest: Manifest, jobs: Sequence[tuple[Artifact, str]], side: int | None) -> dict[str, Artifact]:
    """For ``calib_resolution``: FP32 ONNX source id -> the same tier's static FP32 ONNX graph at
    ``side`` x ``side`` whose activation ranges it reuses (for each larger static ONNX graph that
    gets INT8; smaller ones calibrate at their own size). A missing lower-resolution graph, or no
    larger graph at all, is a UsageError before any work."""
    if side is None:
        return {}
    from .onnx_quant import calibration_cache_supported

    out, missing = {}, []
    for a, p in jobs:
        if p != "int8" or a.format != "onnx" or a.elastic or a.height < side or a.width < side \
                or a.size == (side, side):
            continue  # smaller graphs calibrate at their own size
        low = next((x for x in manifest.artifacts if x.format == "onnx" and x.precision == "fp32" and not x.elastic
                    and x.cores == a.cores and x.size == (side, side)), None)
        if low is None:
            missing.append(f"c{a.cores}")
        else:
            out[a.id] = low
    if missing:
        raise UsageError(f"--calib-resolution {side}: the bundle has no FP32 ONNX graph at {side}x{side} for tier(s) "
                         f"{', '.join(sorted(set(missing)))} (export it too: --image-size {side})")
    if not out:
        raise UsageError(f"--calib-resolution {side}: no static ONNX graph larger than {side}x{side} to quantize")
    if not calibration_cache_supported():
        from onnxruntime import __version__ as v

        raise UsageError(f"--calib-resolution {side} needs onnxruntime >= 1.27 (quantize_static "
                         f"calibration_cache_path); this is {v}")
    return out


def _low_ranges(stage: Path, low: Artifact, cal: CalibrationSet, plan: QuantizePlan,
                ranges: dict[str, tuple[Path, int]], progress: Callable[[int, int], None] | None = None
                ) -> tuple[Path, int]:
    """The ORT ranges file of ``low`` (calibrated now unless this run or the cache has it) and
    how many tensors its INT8 graph quantizes."""
    import tempfile

    from .onnx_quant import quantize_onnx_int8, ranges_path

    if low.id not in ranges or not ranges[low.id][0].is_file():
        with tempfile.TemporaryDirectory(prefix="veca-ranges-") as tmp:
            info = quantize_onnx_int8(stage / low.path, Path(tmp) / "low.int8.onnx", cal, plan.recipe,
                                      cache_dir=plan.cache_dir, progress=progress)
        ranges[low.id] = (ranges_path(info["cache_key"], plan.cache_dir), int(info["quantize_linear_nodes"]))
    return ranges[low.id]


def _derive(stage: Path, src: Artifact, prec: str, cal: CalibrationSet | None, plan: QuantizePlan,
            refs: BundleReferences, failures: list[str], *, low: Artifact | None = None,
            ranges: dict[str, tuple[Path, int]] | None = None,
            progress: Callable[[int, int], None] | None = None) -> Artifact:
    """One FP16/INT8 artifact from ``src``, parity-checked. ``low``: an ONNX INT8 reuses that
    lower-resolution graph's ranges (``cal`` is its calibration set); ``ranges`` memoises them."""
    from .onnx_quant import convert_onnx_fp16, quantize_onnx_int8, ranges_path, tensorrt_check

    ranges = {} if ranges is None else ranges

    src_path = stage / src.path
    details: dict[str, Any] = {"derived_from": src.id}
    files = []
    if src.format == "onnx":
        rel = src.path[: -len(".onnx")] + f".{prec}.onnx"
        if prec == "fp16":
            details.update(recipe=plan.fp16_recipe.to_dict(),
                           conversion=convert_onnx_fp16(src_path, stage / rel, plan.fp16_recipe))
        else:
            assert cal is not None
            if low is None:
                info = quantize_onnx_int8(src_path, stage / rel, cal, plan.recipe,
                                          tiers=src.tiers if src.elastic else None, cache_dir=plan.cache_dir,
                                          progress=progress)
                if not src.elastic and plan.calib_resolution is not None:
                    ranges[src.id] = (ranges_path(info["cache_key"], plan.cache_dir),
                                      int(info["quantize_linear_nodes"]))
            else:
                path, want = _low_ranges(stage, low, cal, plan, ranges, progress)
                info = quantize_onnx_int8(src_path, stage / rel, cal, plan.recipe, ranges=path)
                details["ranges_from"] = {"artifact": low.id, "size": f"{low.height}x{low.width}",
                                          "calibration_sha256": cal.digest}
                if info["quantize_linear_nodes"] != want:  # tensor names did not all match
                    failures.append(f"{rel}: ranges from {low.id} cover {info['quantize_linear_nodes']} of the "
                                    f"{want} quantized tensors (the graphs differ; calibrate at its own size)")
            details.update(recipe=plan.recipe.to_dict(), quantization=info, calibration_sha256=cal.digest)
            if plan.target is not None:
                details["target"] = _target_record(plan.target, "onnx")
        trt = tensorrt_check(stage / rel)
        details["tensorrt_check"] = trt
        if prec == "int8" and plan.recipe.symmetric and not trt["ok"]:
            failures.append(f"{rel}: S8S8 graph fails the TensorRT check ({trt['problems'][0]})")
    else:
        from .openvino_quant import quantize_openvino_int8

        assert cal is not None
        rel = f"openvino/int8/{Path(src.path).name}"
        info = quantize_openvino_int8(src_path, stage / rel, cal, plan.nncf_recipe, cache_dir=plan.cache_dir,
                                      progress=progress)
        details.update(recipe=plan.nncf_recipe.to_dict(), quantization=info, calibration_sha256=cal.digest,
                       parity_inference_precision="f32")
        if plan.target is not None:
            details["target"] = _target_record(plan.target, "openvino")
        files = [file_entry(stage, rel[: -len(".xml")] + ".bin")]
    fe = file_entry(stage, rel)
    art = Artifact(format=src.format, precision=prec, cores=src.cores, height=src.height, width=src.width, path=rel,
                   sha256=fe.sha256, bytes=fe.bytes, id=artifact_id(src.format, prec, src.cores, src.height,
                                                                     src.width, src.elastic),
                   batch=src.batch, elastic=src.elastic, tiers=list(src.tiers), files=files,
                   inputs=dict(src.inputs), outputs=list(src.outputs), flops=src.flops, params=src.params,
                   details=details)
    # parity on real images: against the golden PyTorch outputs (or the FP32 source in the same runtime)
    reports = refs.check(art)
    failures += failures_of(reports)
    art.parity = parity_record(reports, art.elastic)
    return art


def _target_record(choice: dict[str, Any], fmt: str) -> dict[str, Any]:
    """An INT8 artifact's ``details.target``: the target and why this artifact's scheme was built."""
    t = choice.get("target") or {}
    if fmt == "onnx":
        return {"name": t.get("name"), "kind": t.get("kind"), "scheme": choice["onnx_scheme"],
                "chosen_by": choice["chosen_by"], "why": choice["onnx_why"]}
    return {"name": t.get("name"), "kind": t.get("kind"), "scheme": "nncf",
            "preset": choice.get("openvino_preset", "mixed"), "chosen_by": choice.get("openvino_chosen_by", "--target"),
            "why": choice["openvino_why"]}


def quantize(bundle_dir: str | os.PathLike, precisions: Sequence[str] = ("int8",), calib: str | os.PathLike |
             np.ndarray | None = None, formats: Sequence[str] | None = None, allow_small: bool = False,
             allow_drop: float | None = None, progress: Progress | None = None, force: bool = False,
             **options: Any) -> Manifest:
    """Add FP16/INT8 artifacts to an existing bundle atomically (the bundle is untouched on any
    failure). ``options`` are :meth:`QuantizePlan.from_options` keywords (method, int8_scheme,
    count, seed, tiers, eval_data, eval_limit, ...). ``force`` is the old name of ``allow_small``."""
    root = Path(bundle_dir)
    read_manifest(root)  # a clear BundleError before copying anything
    precisions = [p for p in dict.fromkeys(precisions) if p != "fp32"]
    if not precisions:
        raise UsageError("nothing to add: --precision must include fp16 and/or int8")
    plan = QuantizePlan.from_options(precisions=precisions, formats=formats, calib=calib,
                                     allow_small=allow_small or force, allow_drop=allow_drop, **options)
    with staged_update(root) as stage:
        manifest = read_manifest(stage)
        for a in manifest.artifacts:
            if a.precision == "fp32":
                verify_artifact(stage, a)
        add_precisions(stage, manifest, plan, progress)
        write_manifest(stage, manifest)
    return manifest


__all__ = ["QuantizePlan", "add_precisions", "quantize"]
