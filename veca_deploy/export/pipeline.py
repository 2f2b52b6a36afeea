"""``veca_deploy.export``: model -> parity-checked bundle (ONNX per tier, elastic ONNX, OpenVINO IR).

Everything is written into a staging folder and renamed into place at the end, so a failed
gate or an interruption never leaves a bundle that claims to pass.
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..bundle.io import file_entry, staged_bundle, write_manifest
from ..bundle.manifest import Artifact, Manifest, artifact_id
from ..data import FASHION_MNIST_CLASSES
from ..errors import ExportError, UsageError
from ..model.flops import forward_flops
from ..preprocess import Preprocess
from ..runtimes import create_runner
from ..runtimes.base import CORE_SELECT, IMAGES, core_select
from .onnx_export import DEFAULT_EXPORTER, DEFAULT_OPSET, export_onnx, output_names, simplify_onnx
from .parity import ParityReport, compare, parity_inputs, torch_reference

Progress = Callable[..., None]
FORMATS = ("onnx", "openvino")
BUILTIN = "builtin:veca_tiny"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("veca-deploy", "torch", "onnx", "onnxruntime", "onnxslim", "onnxsim", "openvino", "nncf", "numpy"):
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out


def resolve_source(source: str | None, random_weights: bool = False):
    """A model and its provenance from: None (built-in reference), a registry name, or a path."""
    from ..model.checkpoint import load_checkpoint, load_reference_model
    from ..model.registry import DEFAULT_MODEL, create_model, list_models

    if source in (None, "", BUILTIN, "builtin", DEFAULT_MODEL) and not random_weights:
        model = load_reference_model()
        info = {"name": DEFAULT_MODEL, "source": BUILTIN, "source_sha256": model.source_sha256,
                "random_weights": False, "class_names": list(FASHION_MNIST_CLASSES)}
        from ..model.checkpoint import reference_card

        info["card_top1"] = reference_card().get("test_top1", {})
        return model, info
    if source in list_models():
        if not random_weights:
            raise UsageError(f"{source} is a registry name without weights: pass --random-weights to export "
                             "random weights (latency work only) or give a checkpoint path")
        import torch

        torch.manual_seed(0)
        model = create_model(source).eval()
        return model, {"name": source, "source": f"registry:{source}", "source_sha256": None,
                       "random_weights": True}
    if source is None:
        raise UsageError("--random-weights needs a registry name as SOURCE")
    path = Path(source)
    if not path.exists():
        raise UsageError(f"SOURCE {source!r} is neither a registry name ({', '.join(list_models())}) "
                         "nor an existing checkpoint path")
    model = load_checkpoint(path)
    return model, {"name": f"veca_{model.cfg.model_family}" if model.cfg.attention == "core" else "vit",
                   "source": str(path), "source_sha256": model.source_sha256, "random_weights": False}


def default_tiers(cfg) -> list[int]:
    """All tiers when there are at most four, else doubling from the chunk size up to the bank."""
    tiers = cfg.core_tiers
    if len(tiers) <= 4:
        return tiers
    out, c = [], cfg.nested_chunk_size
    while c < cfg.num_query_tokens:
        out.append(c)
        c *= 2
    return out + [cfg.num_query_tokens]


def _meta(info: dict, cores: int, h: int, w: int, precision: str, elastic: bool, tiers: list[int],
          outputs: list[str]) -> dict[str, str]:
    return {"veca.model": info["name"], "veca.cores": str(cores), "veca.height": str(h), "veca.width": str(w),
            "veca.precision": precision, "veca.elastic": "1" if elastic else "0",
            "veca.tiers": ",".join(map(str, tiers)), "veca.outputs": ",".join(outputs),
            "veca.core_select": CORE_SELECT if elastic else ""}


def export(source: str | None = None, *, out: str | Path, cores: Sequence[int] | None = None,
           image_sizes: Sequence[tuple[int, int]] | None = None, formats: Sequence[str] = FORMATS,
           precisions: Sequence[str] = ("fp32", "fp16"), batch: int | str = "dynamic",
           opset: int = DEFAULT_OPSET, exporter: str = DEFAULT_EXPORTER, simplifier: str = "onnxslim",
           elastic: bool = False, force: bool = False, random_weights: bool = False,
           calib: str | None = None, calib_options: dict[str, Any] | None = None,
           progress: Progress | None = None) -> Manifest:
    """Export a model into a bundle folder ``out`` and return its manifest.

    FP32 ONNX and OpenVINO IR come from here; FP16 ONNX and INT8 artifacts are added by
    :mod:`veca_deploy.calibration` when ``precisions`` asks for them. Every artifact passes its
    parity gate in its own runtime or the export fails with a report and writes nothing.
    """
    formats = list(dict.fromkeys(formats))
    precisions = list(dict.fromkeys(precisions))
    for f in formats:
        if f not in FORMATS:
            raise UsageError(f"unknown format {f!r}; choose from {', '.join(FORMATS)} (TensorRT: veca-deploy build-trt)")
    for p in precisions:
        if p not in ("fp32", "fp16", "int8"):
            raise UsageError(f"unknown precision {p!r}; choose from fp32, fp16, int8")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # every bundle keeps its FP32 reference graphs
    if "int8" in precisions and not calib:
        raise UsageError("int8 needs calibration data: pass --calib SRC (a folder, .npy/.npz or 'fashion-mnist')")
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise UsageError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    if exporter == "torchscript" and not 13 <= opset <= 20:
        raise UsageError(f"the TorchScript exporter supports opset 13-20, got {opset}")

    model, info = resolve_source(source, random_weights)
    cfg = model.cfg
    if cfg.attention == "full":
        tiers = [1]
        if elastic:
            raise UsageError("a full-attention ViT has no core tiers to make elastic")
    else:
        tiers = list(dict.fromkeys(cores)) if cores else default_tiers(cfg)
        for c in tiers:
            cfg.check_cores(c)
    sizes = [tuple(s) for s in (image_sizes or [cfg.default_image_size])]
    for h, w in sizes:
        if h % cfg.patch_size or w % cfg.patch_size or h <= 0 or w <= 0:
            raise UsageError(f"image size {h}x{w} is not a positive multiple of the patch size {cfg.patch_size}")
    pre = Preprocess(mean=cfg.mean, std=cfg.std)
    outs = output_names(model)
    n_ov = ("openvino" in formats) * (1 + ("fp16" in precisions))
    total = len(sizes) * (len(tiers) * (1 + n_ov) + (1 if elastic else 0))
    report = progress or (lambda *a, **k: None)
    report("preparing", advance=0, total=total)

    manifest = Manifest(
        model={**info, "config": cfg.to_dict(), "parameters": model.num_params(), "outputs": outs,
               "num_classes": cfg.num_classes},
        preprocess=pre.to_dict(),
        versions=package_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=(["random weights: for latency work only"] if info.get("random_weights") else []),
    )
    with staged_bundle(out, force=force) as stage:
        (stage / "onnx").mkdir()
        failures: list[str] = []
        for h, w in sizes:
            x = parity_inputs(pre, h, w)
            if batch != "dynamic":  # a static graph takes exactly `batch` images
                x = x[np.arange(batch) % len(x)]
            refs = {c: torch_reference(model, x, c) for c in tiers}
            for c in tiers:
                rel = f"onnx/c{c}_{h}x{w}.onnx"
                report(f"ONNX c={c} {h}x{w}")
                meta = _meta(info, c, h, w, "fp32", False, [c], outs)
                export_onnx(model, stage / rel, height=h, width=w, cores=c, batch=batch, opset=opset,
                            exporter=exporter, metadata=meta)
                pre_simplify = _run_parity(stage / rel, "onnxruntime", x, refs[c], rel, "fp32", c, None)
                simp = simplify_onnx(stage / rel, simplifier)
                par = _run_parity(stage / rel, "onnxruntime", x, refs[c], rel, "fp32", c, None)
                failures += _gate(par) + _gate(pre_simplify)
                art = _artifact(stage, "onnx", "fp32", c, h, w, rel, batch, [c], outs, par, cfg, model,
                                {"exporter": exporter, "opset": opset, "simplify": simp,
                                 "parity_before_simplify": pre_simplify.to_dict()["outputs"]})
                manifest.add(art)
                if "openvino" in formats:
                    for prec in [p for p in ("fp32", "fp16") if p in precisions]:
                        report(f"OpenVINO {prec} c={c} {h}x{w}")
                        manifest.add(_openvino(stage, stage / rel, prec, c, h, w, batch, [c], outs, x, refs,
                                               meta, cfg, model, failures, False))
            if elastic:
                rel = f"onnx/elastic_{h}x{w}.onnx"
                report(f"ONNX elastic {h}x{w} ({len(tiers)} tiers)")
                meta = _meta(info, max(tiers), h, w, "fp32", True, tiers, outs)
                export_onnx(model, stage / rel, height=h, width=w, elastic_tiers=tiers, batch=batch,
                            opset=opset, exporter=exporter, metadata=meta)
                simp = simplify_onnx(stage / rel, simplifier)
                pars = {c: _run_parity(stage / rel, "onnxruntime", x, refs[c], rel, "fp32", c, c) for c in tiers}
                for p in pars.values():
                    failures += _gate(p)
                art = _artifact(stage, "onnx", "fp32", max(tiers), h, w, rel, batch, tiers, outs, None, cfg,
                                model, {"exporter": exporter, "opset": opset, "simplify": simp,
                                        "how_to_select": f"feed {CORE_SELECT}: float32 zeros of length = cores"},
                                elastic=True)
                art.parity = {str(c): p.to_dict() for c, p in pars.items()}
                manifest.add(art)
        if failures:
            raise ExportError("parity gate failed, no bundle written: " + "; ".join(failures[:6])
                              + (f" (+{len(failures) - 6} more)" if len(failures) > 6 else ""))
        extra = [p for p in precisions if p not in ("fp32",)]
        if ("int8" in extra) or ("fp16" in extra and "onnx" in formats):
            from ..calibration.quantize import add_precisions

            add_precisions(stage, manifest, model=model, precisions=extra, formats=formats, calib=calib,
                           progress=report, **(calib_options or {}))
        write_manifest(stage, manifest)
    report("done", advance=0)
    return manifest


def _openvino(stage: Path, onnx_path: Path, prec: str, c: int, h: int, w: int, batch, tiers, outs, x, refs,
              meta, cfg, model, failures: list[str], elastic: bool) -> Artifact:
    from .openvino_export import export_openvino

    name = f"elastic_{h}x{w}" if elastic else f"c{c}_{h}x{w}"
    rel = f"openvino/{prec}/{name}.xml"
    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
    export_openvino(onnx_path, stage / rel, precision=prec, metadata={**meta, "veca.precision": prec})
    par = _run_parity(stage / rel, "openvino", x, refs[c], rel, prec, c, None)
    failures += _gate(par)
    art = _artifact(stage, "openvino", prec, c, h, w, rel, batch, tiers, outs, par, cfg, model,
                    {"weights": "fp16-compressed" if prec == "fp16" else "fp32",
                     "parity_inference_precision": "f32"})
    art.files = [file_entry(stage, rel[:-4] + ".bin")]
    return art


def _run_parity(path: Path, backend: str, x, ref, rel: str, precision: str, c: int, elastic_c: int | None) -> ParityReport:
    opts = {"inference_precision": "f32"} if backend == "openvino" else {}
    with create_runner(backend, path, **opts) as r:
        feed = {IMAGES: x}
        if elastic_c is not None:
            feed[CORE_SELECT] = core_select(elastic_c)
        got = r.infer(feed)
    return compare(ref, got, artifact=rel, precision=precision, cores=c)


def _gate(rep: ParityReport) -> list[str]:
    return [f"{rep.artifact} (c={rep.cores}) {f}" for f in rep.failures]


def _artifact(stage: Path, fmt: str, prec: str, c: int, h: int, w: int, rel: str, batch, tiers, outs,
              par: ParityReport | None, cfg, model, details: dict, elastic: bool = False) -> Artifact:
    fe = file_entry(stage, rel)
    shape = ["batch" if batch == "dynamic" else batch, cfg.in_channels, h, w]
    inputs: dict[str, Any] = {IMAGES: {"dtype": "float32", "shape": shape}}
    if elastic:
        inputs[CORE_SELECT] = {"dtype": "float32", "shape": ["cores"], "tiers": tiers}
    return Artifact(format=fmt, precision=prec, cores=c, height=h, width=w, path=rel, sha256=fe.sha256,
                    bytes=fe.bytes, id=artifact_id(fmt, prec, c, h, w, elastic), batch=batch, elastic=elastic,
                    tiers=list(tiers), inputs=inputs, outputs=outs, parity=par.to_dict() if par else {},
                    flops=forward_flops(cfg, h, w, c), params=model.num_params(), details=details)
