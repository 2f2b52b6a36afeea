"""FP16 and INT8 artifacts for a bundle, each passing the parity gate and the accuracy gate.

:func:`add_precisions` is what ``veca_deploy.export`` calls on its staging folder;
:func:`quantize` does the same to an existing bundle through an atomic staged update. Both
work from the bundle's FP32 ONNX graphs / OpenVINO IR only, so no torch is needed.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..bundle.io import file_entry, staged_update, write_manifest
from ..bundle.manifest import Artifact, Manifest, artifact_id, read_manifest
from ..data import fashion_mnist_available
from ..errors import QuantizationError, UsageError
from ..export.parity import ParityReport, compare, parity_inputs
from ..preprocess import Preprocess
from ..runtimes import create_runner
from ..runtimes.base import CORE_SELECT, IMAGES, core_select
from .data import CalibrationSet, load_calibration
from .evaluate import COSINE_GATE_SAMPLES, DEFAULT_DATA, DEFAULT_GATE_SAMPLES, gate, load_eval_data, measure, references
from .recipe import Fp16Recipe, NncfRecipe, OrtRecipe, ort_recipe

Progress = Callable[..., None]
FORMATS = ("onnx", "openvino")


def add_precisions(stage: Path, manifest: Manifest, *, model: Any = None, precisions: Sequence[str] = ("int8",),
                   formats: Sequence[str] | None = None, calib: str | os.PathLike | np.ndarray | None = None,
                   progress: Progress | None = None, force: bool = False, allow_drop: float | None = None,
                   recipe: OrtRecipe | None = None, method: str | None = None, int8_scheme: str | None = None,
                   nncf_recipe: NncfRecipe | None = None,
                   fp16_recipe: Fp16Recipe | None = None, count: int | None = None, num_samples: int | None = None,
                   seed: int = 0,
                   tiers: Sequence[int] | None = None, eval_data: str | os.PathLike | np.ndarray | None = DEFAULT_DATA,
                   eval_limit: int | None = DEFAULT_GATE_SAMPLES, cache_dir: str | None = None) -> list[Artifact]:
    """Add FP16 (ONNX) and INT8 (ONNX QDQ, OpenVINO NNCF) artifacts next to every FP32 one in
    ``stage`` and register them in ``manifest`` (caller writes it). ``model`` is accepted for
    the exporter's call but unused: everything is derived from the FP32 graphs.

    Raises :class:`QuantizationError` (nothing added) when calibration data is refused, when a
    new artifact fails its parity gate, or when its top-1 falls more than 1.0 point (or
    ``allow_drop``) below FP32 at the same tier on ``eval_data`` (set None to skip: recorded).
    """
    del model
    count = count if count is not None else num_samples  # the export command's name for it
    stage = Path(stage)
    report = progress or (lambda *a, **k: None)
    precisions = list(dict.fromkeys(precisions))
    bad = [p for p in precisions if p not in ("fp16", "int8")]
    if bad:
        raise UsageError(f"add_precisions adds fp16/int8, not {', '.join(bad)}")
    formats = list(dict.fromkeys(formats or FORMATS))
    for f in formats:
        if f not in FORMATS:
            raise UsageError(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    if "int8" in precisions and calib is None:
        raise UsageError("int8 needs calibration data: pass --calib SRC (a folder, .npy/.npz or 'fashion-mnist')")
    if allow_drop is not None and (not np.isfinite(allow_drop) or allow_drop < 0):
        raise UsageError(f"--allow-drop must be a non-negative number of points, got {allow_drop}")
    ort_r = ort_recipe(method, int8_scheme, base=recipe)
    nncf_r, fp16_r = nncf_recipe or NncfRecipe(), fp16_recipe or Fp16Recipe()
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
    report("calibration", advance=0)

    cals: dict[tuple[int, int], CalibrationSet] = {}
    if "int8" in precisions:
        for size in sorted({a.size for a, p in jobs if p == "int8"}):
            cals[size] = load_calibration(calib, pre, size, count=count, seed=seed, force=force, channels=channels)

    added: list[Artifact] = []
    failures: list[str] = []
    for src, prec in jobs:
        report(f"{src.format} {prec} {'elastic' if src.elastic else f'c{src.cores}'} {src.height}x{src.width}",
               advance=0)
        art = _derive(stage, manifest, src, prec, cals.get(src.size), ort_r, nncf_r, fp16_r, pre, failures,
                      cache_dir)
        added.append(art)
    if failures:
        raise QuantizationError("parity gate failed, nothing added: " + "; ".join(failures[:6])
                                + (f" (+{len(failures) - 6} more)" if len(failures) > 6 else ""))
    for art in added:
        manifest.add(art)

    evaluation: dict[str, Any] = {"skipped": "eval_data=None"}
    if eval_data is not None and str(eval_data) == DEFAULT_DATA and not fashion_mnist_available():
        eval_data, evaluation = None, {"skipped": "Fashion-MNIST not installed"}
    if eval_data is not None:
        report("accuracy gate", advance=0)
        if eval_limit == DEFAULT_GATE_SAMPLES and not any("logits" in a.outputs for a in added):
            eval_limit = COSINE_GATE_SAMPLES  # feature cosine is stable on few images; big backbones are slow
        ev = load_eval_data(eval_data, pre, eval_limit)
        ids = {a.id for a in added}
        refs = references(manifest, added)
        results = measure(stage, refs + added, ev, pre, manifest)
        problems = gate(manifest, results, allow_drop, ids=ids)
        if problems:
            raise QuantizationError("accuracy gate failed, nothing added: " + "; ".join(problems[:6])
                                    + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
                                    + " (--allow-drop X accepts a larger drop, recorded in the manifest)")
        for a in manifest.artifacts:
            if a.id in results:
                a.accuracy = {**results[a.id], **({"allowed_drop": allow_drop} if allow_drop is not None
                                                  and a.id in ids else {})}
        evaluation = {"dataset": ev.name, "samples": ev.samples, "max_drop_points": allow_drop if allow_drop
                      is not None else 1.0}
    calib_rec = dict(manifest.calibration)
    if cals:
        first = next(iter(cals.values()))
        calib_rec.update({**first.record(), "sizes": {f"{h}x{w}": c.digest for (h, w), c in cals.items()}})
        if first.kind == "fashion-mnist":
            calib_rec["disjoint_from_eval"] = True  # TRAIN split only; accuracy uses TEST
    calib_rec.update({"precisions": sorted(set(calib_rec.get("precisions", [])) | set(precisions)),
                      "recipes": {**calib_rec.get("recipes", {}),
                                  **({"onnx_int8": ort_r.to_dict(), "openvino_int8": nncf_r.to_dict()}
                                     if "int8" in precisions else {}),
                                  **({"onnx_fp16": fp16_r.to_dict()} if "fp16" in precisions else {})},
                      "evaluation": evaluation,
                      "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    if allow_drop is not None:
        calib_rec["allow_drop"] = allow_drop
    manifest.calibration = calib_rec
    report("quantized", advance=0)
    return added


def _derive(stage: Path, manifest: Manifest, src: Artifact, prec: str, cal: CalibrationSet | None,
            ort_r: OrtRecipe, nncf_r: NncfRecipe, fp16_r: Fp16Recipe, pre: Preprocess, failures: list[str],
            cache_dir: str | None) -> Artifact:
    from .onnx_quant import convert_onnx_fp16, quantize_onnx_int8, tensorrt_check

    src_path = stage / src.path
    details: dict[str, Any] = {"derived_from": src.id}
    files = []
    if src.format == "onnx":
        rel = src.path[: -len(".onnx")] + f".{prec}.onnx"
        if prec == "fp16":
            details.update(recipe=fp16_r.to_dict(), conversion=convert_onnx_fp16(src_path, stage / rel, fp16_r))
        else:
            assert cal is not None
            info = quantize_onnx_int8(src_path, stage / rel, cal, ort_r, tiers=src.tiers if src.elastic else None,
                                      cache_dir=cache_dir)
            details.update(recipe=ort_r.to_dict(), quantization=info, calibration_sha256=cal.digest)
        trt = tensorrt_check(stage / rel)
        details["tensorrt_check"] = trt
        if prec == "int8" and ort_r.symmetric and not trt["ok"]:
            failures.append(f"{rel}: S8S8 graph fails the TensorRT check ({trt['problems'][0]})")
        backend = "onnxruntime"
    else:
        from .openvino_quant import quantize_openvino_int8

        assert cal is not None
        name = Path(src.path).name
        rel = f"openvino/int8/{name}"
        info = quantize_openvino_int8(src_path, stage / rel, cal, nncf_r, cache_dir=cache_dir)
        details.update(recipe=nncf_r.to_dict(), quantization=info, calibration_sha256=cal.digest,
                       parity_inference_precision="f32")
        files = [file_entry(stage, rel[: -len(".xml")] + ".bin")]
        backend = "openvino"
    # parity: the new artifact vs its own FP32 source, in the same runtime, on real images
    x = parity_inputs(pre, src.height, src.width)
    pars = {}
    for c in src.tiers:
        ref = _run(src_path, backend, x, c if src.elastic else None)
        got = _run(stage / rel, backend, x, c if src.elastic else None)
        pars[c] = compare(ref, got, artifact=rel, precision=prec, cores=c)
        failures += [f"{rel} (c={c}) {f}" for f in pars[c].failures]
    fe = file_entry(stage, rel)
    art = Artifact(format=src.format, precision=prec, cores=src.cores, height=src.height, width=src.width, path=rel,
                   sha256=fe.sha256, bytes=fe.bytes, id=artifact_id(src.format, prec, src.cores, src.height,
                                                                     src.width, src.elastic),
                   batch=src.batch, elastic=src.elastic, tiers=list(src.tiers), files=files,
                   inputs=dict(src.inputs), outputs=list(src.outputs), flops=src.flops, params=src.params,
                   details=details)
    art.parity = ({str(c): p.to_dict() for c, p in pars.items()} if src.elastic
                  else next(iter(pars.values())).to_dict())
    return art


def _run(path: Path, backend: str, x: np.ndarray, elastic_c: int | None) -> dict[str, np.ndarray]:
    opts = {"inference_precision": "f32"} if backend == "openvino" else {}
    with create_runner(backend, path, **opts) as r:
        feed = {IMAGES: x}
        if elastic_c is not None:
            feed[CORE_SELECT] = core_select(elastic_c)
        return r.infer(feed)


def quantize(bundle_dir: str | os.PathLike, precisions: Sequence[str] = ("int8",), calib: str | os.PathLike |
             np.ndarray | None = None, formats: Sequence[str] | None = None, force: bool = False,
             allow_drop: float | None = None, progress: Progress | None = None, **options: Any) -> Manifest:
    """Add FP16/INT8 artifacts to an existing bundle atomically (the bundle is untouched on any
    failure). ``options`` go to :func:`add_precisions` (method, count, seed, tiers, eval_limit, ...)."""
    root = Path(bundle_dir)
    read_manifest(root)  # a clear BundleError before copying anything
    precisions = [p for p in dict.fromkeys(precisions) if p != "fp32"]
    if not precisions:
        raise UsageError("nothing to add: --precision must include fp16 and/or int8")
    with staged_update(root) as stage:
        manifest = read_manifest(stage)
        from ..bundle.io import verify_artifact

        for a in manifest.artifacts:
            if a.precision == "fp32":
                verify_artifact(stage, a)
        add_precisions(stage, manifest, precisions=precisions, formats=formats, calib=calib, progress=progress,
                       force=force, allow_drop=allow_drop, **options)
        write_manifest(stage, manifest)
    return manifest


__all__ = ["add_precisions", "quantize", "ParityReport"]
