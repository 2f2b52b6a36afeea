"""Trace a VECA model at a fixed tier (or elastic over tiers) into ONNX, then simplify.

Two exporters are supported: the TorchScript tracer (default: fast, opset 17 with
LayerNormalization, a graph TensorRT 10 and ORT's quantizer both accept) and the torch.export
based one (``dynamo``, opset >= 18; at 23 it emits the fused ``Attention`` op). See
``docs/export.md`` for the measurements behind the default.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..convert.onnx_graph import update_metadata
from ..errors import ExportError, first_line
from ..model.veca import graph_form
from ..runtimes.base import CORE_SELECT, IMAGES

DEFAULT_OPSET = 17
DEFAULT_EXPORTER = "torchscript"


class TierModule(nn.Module):
    """The model frozen at one core count: ``images -> (global, patches[, logits])``."""

    def __init__(self, model: nn.Module, cores: int) -> None:
        super().__init__()
        self.model, self.cores = model, cores

    def forward(self, images: Tensor):
        lead = None if self.model.cfg.attention == "full" else self.cores
        x, lead = self.model.forward_tokens(images, lead)
        return self.model.outputs_from_tokens(x, lead)


class ElasticModule(nn.Module):
    """Core count read from the *length* of ``core_select`` so one graph serves every tier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, core_select: Tensor):
        cores = core_select.shape[0]
        x, lead = self.model.forward_tokens(images, cores)
        return self.model.outputs_from_tokens(x, lead)


def output_names(model: nn.Module) -> list[str]:
    """Graph output names: a task model's own (:class:`~.task_export.TaskAdapter`), else the backbone's."""
    if getattr(model, "is_task", False):
        return list(model.output_names)
    return ["global", "patches"] + (["logits"] if model.cfg.num_classes else [])


def export_onnx(model: nn.Module, path: str | os.PathLike, *, height: int, width: int,
                cores: int | None = None, elastic_tiers: list[int] | None = None,
                batch: int | str = "dynamic", opset: int = DEFAULT_OPSET,
                exporter: str = DEFAULT_EXPORTER, metadata: dict[str, str] | None = None) -> Path:
    """Export one graph with weights embedded (a single self-contained file)."""
    path = Path(path)
    model = model.eval()
    outs = output_names(model)
    # torch.export specializes a dimension whose example size is 0 or 1, so the dynamo exporter
    # traces a dynamic batch with 2 examples (else "dynamic" silently became a fixed batch of 1)
    b = (2 if exporter == "dynamo" else 1) if batch == "dynamic" else int(batch)
    images = torch.zeros(b, model.cfg.in_channels, height, width)
    if elastic_tiers and getattr(model, "is_task", False):
        raise ExportError("elastic export is not supported for task models yet")
    if elastic_tiers:
        module: nn.Module = ElasticModule(model)
        args: tuple = (images, torch.zeros(max(elastic_tiers)))
        in_names = [IMAGES, CORE_SELECT]
    elif getattr(model, "is_task", False):
        from .task_export import TaskTierModule

        module = TaskTierModule(model, cores if cores is not None else model.cfg.num_query_tokens)
        args = (images,)
        in_names = [IMAGES]
    else:
        module = TierModule(model, cores if cores is not None else model.cfg.num_query_tokens)
        args = (images,)
        in_names = [IMAGES]
    try:
        # no autograd while tracing: at 1024 px the recorded graph of the trace input alone
        # doubled the export's peak RSS (2.7 GB vs 1.1 GB for veca_small, C=16)
        # graph_form: the form the backends fuse (docs/export.md); eager keeps the original one
        with torch.no_grad(), graph_form(module):
            _export(module, args, path, in_names, outs, batch, elastic_tiers, opset, exporter)
    except ExportError:
        raise
    except Exception as e:  # the exporters raise many types; name the step and the first line
        msg = first_line(e)
        raise ExportError(f"ONNX export failed for {path.name}: {msg}") from e
    if metadata:
        update_metadata(path, metadata)
    return path


def _export(module, args, path, in_names, outs, batch, elastic_tiers, opset, exporter) -> None:
    if exporter == "torchscript":
        _export_torchscript(module, args, path, in_names, outs, batch, bool(elastic_tiers), opset)
    elif exporter == "dynamo":
        _export_dynamo(module, args, path, in_names, outs, batch, elastic_tiers, opset)
    else:
        raise ExportError(f"unknown exporter {exporter!r} (torchscript or dynamo)")


def _export_torchscript(module, args, path, in_names, outs, batch, elastic, opset) -> None:
    axes: dict[str, dict[int, str]] = {}
    if batch == "dynamic":
        axes = {n: {0: "batch"} for n in [IMAGES, *outs]}
    if elastic:
        axes[CORE_SELECT] = {0: "cores"}
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=in_names, output_names=outs,
                          dynamic_axes=axes or None, opset_version=opset, do_constant_folding=True,
                          dynamo=False)


def _export_dynamo(module, args, path, in_names, outs, batch, elastic_tiers, opset) -> None:
    from torch.export import Dim

    shapes: dict[str, Any] = {}
    if batch == "dynamic":
        shapes[IMAGES] = {0: Dim("batch", min=1, max=1024)}
    else:
        shapes[IMAGES] = None
    if elastic_tiers:
        shapes[CORE_SELECT] = {0: Dim("cores", min=min(elastic_tiers), max=max(elastic_tiers))}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, input_names=in_names, output_names=outs,
                                 dynamic_shapes=shapes, opset_version=max(opset, 18), dynamo=True,
                                 external_data=False, optimize=True, verify=False)
        prog.save(str(path), external_data=False)
