"""``veca_deploy.export``: the orchestrator on top of both sides. Model -> plan -> one builder
per artifact kind -> parity-checked bundle.

1. golden data: a few real images per input size and the PyTorch FP32 outputs per tier, stored
   in the bundle (:mod:`veca_deploy.compare.golden`) and used as the reference of every gate;
2. FP32 ONNX per tier (traced, checked, simplified, checked again), OpenVINO IR FP32/FP16
   converted from it, the elastic ONNX graph (checked at every tier);
3. FP16/INT8 artifacts through :func:`veca_deploy.calibration.quantize.add_precisions`.
Everything is written into a staging folder and renamed into place at the end, so a failed
gate or an interruption never leaves a bundle that claims to pass.
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Callable, Sequence

from ..bundle.io import check_output_path, file_entry, staged_bundle, write_manifest
from ..bundle.manifest import Artifact, Manifest, artifact_id
from ..calibration.quantize import QuantizePlan, add_precisions
from ..compare.checks import BundleReferences, failures_of, parity_record
from ..compare.comparator import Comparator
from ..compare.golden import GoldenWriter
from ..convert.onnx_graph import simplify_onnx
from ..convert.openvino_ir import export_openvino
from ..errors import ExportError, UsageError
from ..formats import EXPORT_FORMATS, parity_options
from ..model.flops import forward_flops
from ..preprocess import Preprocess
from ..runtimes.base import CORE_SELECT, IMAGES
from .onnx_export import DEFAULT_EXPORTER, DEFAULT_OPSET, export_onnx, output_names
from .plan import ExportPlan, check_options, check_sizes
from .reference import torch_reference
from .source import default_tiers, resolve_source

Progress = Callable[..., None]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("veca-deploy", "torch", "onnx", "onnxruntime", "onnxslim", "onnxsim", "openvino", "nncf", "numpy"):
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out


#: what ``export(preprocess=...)`` may set
PREPROCESS_OPTIONS = {"antialias", "resize_mode", "crop_pct", "color_order"}


def export(source: Any = None, *, out: str | Path, cores: Sequence[int] | None = None,
           image_sizes: Sequence[tuple[int, int]] | None = None, formats: Sequence[str] = EXPORT_FORMATS,
           precisions: Sequence[str] = ("fp32", "fp16"), batch: int | str = "dynamic",
           opset: int | None = None, exporter: str = DEFAULT_EXPORTER, simplifier: str = "onnxslim",
           elastic: bool = False, force: bool = False, random_weights: bool = False,
           calib: str | None = None, calib_options: dict[str, Any] | None = None,
           progress: Progress | None = None, preprocess: dict[str, Any] | None = None,
           config: Any = None, output_names: Sequence[str] | None = None,
           postprocess: Sequence[str] | None = None, source_info: dict[str, Any] | None = None) -> Manifest:
    """Export a model into a bundle folder ``out`` and return its manifest.

    ``force`` replaces an existing ``out``. ``calib_options`` are
    :meth:`~veca_deploy.calibration.quantize.QuantizePlan.from_options` keywords (count, seed,
    method, int8_scheme, allow_small, allow_drop, eval_limit, ...). Every artifact passes its
    parity gate in its own runtime or the export fails with a report and writes nothing.
    ``preprocess`` sets what the bundle declares training used (``antialias``, default True;
    ``resize_mode`` "stretch" or "shorter"; ``crop_pct``); mean/std come from the model.
    ``config`` (a registry name, a JSON file of config fields, a dict or a ``VecaConfig``) is the
    model config of a checkpoint that carries none (a bare ``state_dict``); ignored otherwise.

    ``source`` may also be a task model: any ``torch.nn.Module`` whose ``forward(images, cores=C)``
    returns a tensor, a tuple or a dict of tensors, with a VECA backbone inside
    (:mod:`.task_export`). ``output_names`` names a tensor/tuple's outputs (a dict's keys are its
    names); ``postprocess`` (``argmax``, ``softmax``) is applied in the graph to its dense
    ``mask_logits`` output. Elastic export of task models is not supported yet.
    """
    opset = DEFAULT_OPSET if opset is None else opset
    formats, precisions = check_options(formats, precisions, batch, opset, exporter, simplifier, calib)
    if image_sizes:
        check_sizes(image_sizes)  # bounds first: nothing is loaded for an impossible size
    check_output_path(out)  # a symlink as --out: refused before any work
    task = _is_module(source)
    if task:
        if config is not None or random_weights:
            raise UsageError("config and random_weights do not apply to an nn.Module SOURCE")
        info = {"name": str((source_info or {}).get("name") or type(source).__name__), "source": "module",
                "source_sha256": None, "random_weights": False, **(source_info or {})}
    else:
        source, info = resolve_source(source, random_weights, config)
        task = getattr(source, "head_config", None) is not None  # a checkpoint with a head (TaskModel)
    if (output_names or postprocess) and not task:
        raise UsageError("output_names and postprocess are for a task model (an nn.Module, or a checkpoint "
                         "with a head) as SOURCE")
    if task:
        if elastic:
            raise UsageError("elastic export is not supported for task models yet: export fixed tiers "
                             "(drop --elastic)")
        from .task_export import TaskAdapter

        if output_names is None and getattr(source, "head_config", None) is not None:
            # a checkpoint with a head serves its head's outputs (what the application wants); the
            # backbone's global / patches only on request (output_names)
            output_names = list(source.head.outputs)
        model = TaskAdapter(source, output_names, postprocess or ())
        info["task"] = True
        if getattr(source, "head_config", None) is not None:
            info["head"] = dict(source.head_config)
    else:
        model = source
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
    check_sizes(sizes, cfg.patch_size)
    if task:
        model.probe(sizes[0][0], sizes[0][1], min(tiers))
        for h, w in sizes:
            model.record_shapes(h, w, min(tiers))
    extra = [p for p in precisions if p != "fp32"]
    qplan = None
    if "int8" in extra or ("fp16" in extra and "onnx" in formats):
        opts = dict(calib_options or {})
        if "num_samples" in opts:  # older names: num_samples = count, force = allow_small
            opts.setdefault("count", opts.pop("num_samples"))
        if "force" in opts:
            opts["allow_small"] = bool(opts.pop("force")) or bool(opts.get("allow_small"))
        qplan = QuantizePlan.from_options(precisions=extra, formats=formats, calib=calib, **opts)
    pre_options = dict(preprocess or {})
    bad = sorted(set(pre_options) - PREPROCESS_OPTIONS)
    if bad:
        raise UsageError(f"unknown preprocess option(s) {', '.join(bad)}; known: {', '.join(sorted(PREPROCESS_OPTIONS))}")
    try:
        Preprocess(mean=cfg.mean, std=cfg.std, **{"antialias": True, **pre_options})
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    plan = ExportPlan(formats=tuple(formats), precisions=tuple(precisions), sizes=tuple(sizes), tiers=tuple(tiers),
                      batch=batch, opset=opset, exporter=exporter, simplifier=simplifier, elastic=elastic,
                      quantize=qplan, preprocess=pre_options)
    return build_bundle(model, info, plan, out, force=force, progress=progress)


def _is_module(source: Any) -> bool:
    if isinstance(source, (str, Path)) or source is None:
        return False
    from torch import nn

    if isinstance(source, nn.Module):
        return True
    raise UsageError(f"SOURCE must be a registry name, a checkpoint path or a torch.nn.Module, "
                     f"got {type(source).__name__}")


def build_bundle(model, info: dict[str, Any], plan: ExportPlan, out: str | Path, *, force: bool = False,
                 progress: Progress | None = None) -> Manifest:
    """Run the builders of ``plan`` for ``model`` into a new bundle at ``out``."""
    cfg = model.cfg
    pre = Preprocess(mean=cfg.mean, std=cfg.std, **{"antialias": True, **plan.preprocess})
    outs = output_names(model)
    report = progress or (lambda *a, **k: None)
    report("preparing", advance=0, total=plan.steps)
    manifest = Manifest(
        model={**info, "config": cfg.to_dict(), "parameters": model.num_params(), "outputs": outs,
               "num_classes": cfg.num_classes,
               **({"output_specs": model.specs} if getattr(model, "is_task", False) else {})},
        preprocess=pre.to_dict(),
        versions=package_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=(["random weights: for latency work only"] if info.get("random_weights") else []),
    )
    with staged_bundle(out, force=force) as stage, Comparator() as comp:
        (stage / "onnx").mkdir()
        golden = GoldenWriter(stage, manifest, pre)
        for h, w in plan.sizes:
            report(f"PyTorch reference {h}x{w} ({len(plan.tiers)} tiers)", advance=0)
            _, x = golden.inputs(h, w)
            for c in plan.tiers:
                golden.outputs(c, h, w, torch_reference(model, x, c))
        refs = BundleReferences(stage, manifest, comp)
        b = _Builders(stage, manifest, plan, refs, info, model, outs, report)
        for h, w in plan.sizes:
            for c in plan.tiers:
                onnx_art = b.onnx_tier(c, h, w)
                for prec in plan.openvino_precisions:
                    b.openvino(onnx_art, prec)
            if plan.elastic:
                b.onnx_elastic(h, w)
        if b.failures:
            raise ExportError("parity gate failed, no bundle written: " + "; ".join(b.failures[:6])
                              + (f" (+{len(b.failures) - 6} more)" if len(b.failures) > 6 else ""))
        if plan.quantize is not None:
            add_precisions(stage, manifest, plan.quantize, report)
        write_manifest(stage, manifest)
    report("done", advance=0)
    return manifest


class _Builders:
    """One builder per artifact kind; each checks what it wrote against the golden outputs."""

    def __init__(self, stage: Path, manifest: Manifest, plan: ExportPlan, refs: BundleReferences,
                 info: dict[str, Any], model, outs: list[str], report: Progress) -> None:
        self.stage, self.manifest, self.plan, self.refs = stage, manifest, plan, refs
        self.info, self.model, self.outs, self.report = info, model, outs, report
        self.failures: list[str] = []

    def _meta(self, cores: int, h: int, w: int, elastic: bool, tiers: Sequence[int]) -> dict[str, str]:
        return {"veca.model": self.info["name"], "veca.cores": str(cores), "veca.height": str(h),
                "veca.width": str(w), "veca.precision": "fp32", "veca.elastic": "1" if elastic else "0",
                "veca.tiers": ",".join(map(str, tiers)), "veca.outputs": ",".join(self.outs),
                "veca.core_select": CORE_SELECT if elastic else ""}

    def _artifact(self, fmt: str, prec: str, c: int, h: int, w: int, rel: str, tiers: Sequence[int],
                  details: dict[str, Any], elastic: bool = False) -> Artifact:
        fe = file_entry(self.stage, rel)
        batch, cfg = self.plan.batch, self.model.cfg
        shape = ["batch" if batch == "dynamic" else batch, cfg.in_channels, h, w]
        inputs: dict[str, Any] = {IMAGES: {"dtype": "float32", "shape": shape}}
        if elastic:
            inputs[CORE_SELECT] = {"dtype": "float32", "shape": ["cores"], "tiers": list(tiers)}
        return Artifact(format=fmt, precision=prec, cores=c, height=h, width=w, path=rel, sha256=fe.sha256,
                        bytes=fe.bytes, id=artifact_id(fmt, prec, c, h, w, elastic), batch=batch, elastic=elastic,
                        tiers=list(tiers), inputs=inputs, outputs=list(self.outs),
                        flops=forward_flops(cfg, h, w, c), params=self.model.num_params(), details=details)

    def _gate(self, art: Artifact) -> None:
        reports = self.refs.check(art)
        self.failures += failures_of(reports)
        art.parity = parity_record(reports, art.elastic)

    def _trace(self, rel: str, c: int, h: int, w: int, tiers: list[int], elastic: bool) -> Artifact:
        p = self.plan
        export_onnx(self.model, self.stage / rel, height=h, width=w, cores=None if elastic else c,
                    elastic_tiers=tiers if elastic else None, batch=p.batch, opset=p.opset, exporter=p.exporter,
                    metadata=self._meta(c, h, w, elastic, tiers))
        art = self._artifact("onnx", "fp32", c, h, w, rel, tiers, {"exporter": p.exporter, "opset": p.opset},
                             elastic)
        if not elastic:  # the traced graph alone, so a simplifier bug is told apart from a tracing bug
            pre_simplify = self.refs.check(art)
            self.failures += [f"{m} (before simplification)" for m in failures_of(pre_simplify)]
            art.details["parity_before_simplify"] = parity_record(pre_simplify, False)["outputs"]
        art.details["simplify"] = simplify_onnx(self.stage / rel, p.simplifier)
        fe = file_entry(self.stage, rel)
        art.sha256, art.bytes = fe.sha256, fe.bytes
        if elastic:
            art.details["how_to_select"] = f"feed {CORE_SELECT}: float32 zeros of length = cores"
        self._gate(art)
        self.manifest.add(art)
        return art

    def onnx_tier(self, c: int, h: int, w: int) -> Artifact:
        self.report(f"ONNX c={c} {h}x{w}")
        return self._trace(f"onnx/c{c}_{h}x{w}.onnx", c, h, w, [c], elastic=False)

    def onnx_elastic(self, h: int, w: int) -> Artifact:
        tiers = list(self.plan.tiers)
        self.report(f"ONNX elastic {h}x{w} ({len(tiers)} tiers)")
        return self._trace(f"onnx/elastic_{h}x{w}.onnx", max(tiers), h, w, tiers, elastic=True)

    def openvino(self, onnx_art: Artifact, prec: str) -> Artifact:
        c, h, w = onnx_art.cores, onnx_art.height, onnx_art.width
        self.report(f"OpenVINO {prec} c={c} {h}x{w}")
        rel = f"openvino/{prec}/c{c}_{h}x{w}.xml"
        (self.stage / rel).parent.mkdir(parents=True, exist_ok=True)
        export_openvino(self.stage / onnx_art.path, self.stage / rel, precision=prec,
                        metadata={**self._meta(c, h, w, False, [c]), "veca.precision": prec})
        art = self._artifact("openvino", prec, c, h, w, rel, [c],
                             {"weights": "fp16-compressed" if prec == "fp16" else "fp32",
                              "parity_inference_precision": parity_options("openvino").get("inference_precision")})
        art.files = [file_entry(self.stage, rel[:-4] + ".bin")]
        self._gate(art)
        self.manifest.add(art)
        return art
