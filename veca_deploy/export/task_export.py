"""Task models as an export SOURCE: any ``nn.Module`` whose ``forward(images, cores=C)`` returns a
tensor, a tuple of tensors or a dict name -> tensor, with a VECA backbone among its submodules.

:class:`TaskAdapter` gives such a module the interface the export pipeline already uses for a
bare backbone (``cfg``, ``num_params()``, ``forward(images, cores=)`` returning a tuple in a fixed
name order), plus named outputs, their kinds and optional in-graph post-processing. Tracing goes
through the user's own ``forward`` at a fixed python-int tier, so whatever head the user wrote is
what the graph holds. Elastic export is not supported for task models yet (see docs/task-models.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, UsageError, first_line

#: output kinds a manifest may record (``model.output_specs[name].kind``)
OUTPUT_KINDS = ("global", "patches", "logits", "mask_logits", "mask_probs", "mask", "dense")
#: in-graph post-processing steps (``export(postprocess=...)``, CLI ``--postprocess``)
POSTPROCESS = ("argmax", "softmax")

_MEANING = {
    "global": "global feature per image [B, D]",
    "patches": "patch tokens [B, N, D] in row-major patch order",
    "logits": "class logits per image [B, K]",
    "mask_logits": "per-pixel class logits [B, K, H, W]",
    "mask_probs": "per-pixel class probabilities (softmax over K) [B, K, H, W]",
    "mask": "per-pixel class index (argmax over K) [B, H, W]",
    "dense": "dense map [B, C, H, W]",
}


def find_backbone(module: nn.Module):
    """The VECA submodule of ``module`` (the module itself counts)."""
    from ..model.veca import VECA

    found = [m for m in module.modules() if isinstance(m, VECA)]
    if not found:
        raise UsageError(f"{type(module).__name__} has no VECA backbone among its submodules "
                         "(build it with veca_deploy.create_model)")
    return found[0]


def check_forward(module: nn.Module) -> None:
    """The contract: ``forward(images, cores=...)``; refuse a forward that cannot take the tier."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return
    if "cores" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise UsageError(f"{type(module).__name__}.forward takes no 'cores' argument: a task model's forward "
                         "must be forward(images, cores=C) and pass the tier to its VECA backbone")


def _guess_kind(name: str, t: Tensor, n_patches: int, height: int, width: int) -> str:
    lname = name.lower()
    if not t.is_floating_point():
        return "mask" if t.ndim == 3 else "dense"
    if t.ndim == 2:
        return "logits" if ("logit" in lname or lname in ("cls", "class", "classes")) else "global"
    if t.ndim == 3 and t.shape[1] == n_patches:
        return "patches"
    if t.ndim == 4:
        if "prob" in lname:
            return "mask_probs"
        if "logit" in lname or "mask" in lname or "seg" in lname:
            return "mask_logits"
        return "dense"
    return "dense"


def _layout(kind: str, t: Tensor) -> str:
    return {"global": "BD", "patches": "BND", "logits": "BK", "mask": "BHW"}.get(kind, "BKHW" if t.ndim == 4 else
                                                                                   "B" + "x" * (t.ndim - 1))


class TaskAdapter(nn.Module):
    """A user's task module at the interface the exporter uses for a bare backbone.

    ``forward(images, cores=C)`` returns the outputs as a tuple in :attr:`output_names` order,
    post-processing applied, so the traced graph, the golden reference and every runtime see the
    same names in the same order."""

    is_task = True

    def __init__(self, module: nn.Module, output_names: Sequence[str] | None = None,
                 postprocess: Sequence[str] = ()) -> None:
        super().__init__()
        check_forward(module)
        self.task = module.eval()
        self.backbone = find_backbone(module)
        self.cfg = self.backbone.cfg
        self.user_names = list(output_names) if output_names else None
        self.postprocess = list(dict.fromkeys(postprocess or ()))
        bad = [p for p in self.postprocess if p not in POSTPROCESS]
        if bad:
            raise UsageError(f"unknown postprocess step {bad[0]!r}; choose from {', '.join(POSTPROCESS)}")
        self.raw_names: list[str] = []
        self.output_names: list[str] = []
        self.specs: dict[str, dict[str, Any]] = {}
        self._plan: list[tuple[str, str, str]] = []  # (output name, raw name, step or "")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.task.parameters())

    # ----------------------------------------------------------------- outputs
    def _flatten(self, out: Any) -> dict[str, Tensor]:
        if isinstance(out, Tensor):
            items = [out]
        elif isinstance(out, dict):
            if not all(isinstance(v, Tensor) for v in out.values()):
                raise UsageError("a task model's forward must return tensors (a dict of tensors here has others)")
            names = [str(k) for k in out]
            unknown = [n for n in (self.user_names or []) if n not in names]
            if unknown:
                raise UsageError(f"output_names {unknown} are not among the model's outputs {names}")
            order = self.user_names or names  # a subset: only those become graph outputs
            return {n: out[n] for n in order}
        elif isinstance(out, (tuple, list)) and all(isinstance(v, Tensor) for v in out):
            items = list(out)
        else:
            raise UsageError(f"a task model's forward must return a Tensor, a tuple of Tensors or a dict of "
                             f"Tensors, got {type(out).__name__}")
        names = self.user_names or (["output0"] if len(items) == 1 else [f"output{i}" for i in range(len(items))])
        if len(names) != len(items):
            raise UsageError(f"output_names has {len(names)} names for {len(items)} outputs")
        return dict(zip(names, items))

    def probe(self, height: int, width: int, cores: int) -> None:
        """Run once on zeros to learn the outputs' names, shapes and kinds (and plan post-processing)."""
        with torch.no_grad():
            try:
                raw = self._flatten(self.task(torch.zeros(1, self.cfg.in_channels, height, width), cores=cores))
            except UsageError:
                raise
            except Exception as e:
                raise UsageError(f"{type(self.task).__name__}(images, cores={cores}) failed at {height}x{width}: "
                                 f"{first_line(e)}") from None
        if len(set(raw)) != len(raw):
            raise UsageError("task model output names must be distinct")
        n_patches = (height // self.cfg.patch_size) * (width // self.cfg.patch_size)
        kinds = {n: _guess_kind(n, t, n_patches, height, width) for n, t in raw.items()}
        user_specs = {}
        if hasattr(self.task, "output_specs"):
            try:
                user_specs = dict(self.task.output_specs() or {})
            except Exception:
                user_specs = {}
        for n, s in user_specs.items():
            if n in kinds and isinstance(s, dict) and s.get("kind") in OUTPUT_KINDS:
                kinds[n] = s["kind"]
        plan: list[tuple[str, str, str]] = []
        dense = [n for n in raw if kinds[n] == "mask_logits"]
        if self.postprocess and not dense:
            raise UsageError(f"postprocess {','.join(self.postprocess)} needs a dense mask_logits output [B, K, H, W]; "
                             f"outputs are {', '.join(f'{n} ({k})' for n, k in kinds.items())}")
        for n in raw:
            if n in dense and self.postprocess:
                stem = n[: -len("_logits")] if n.endswith("_logits") else n
                stem = stem[: -len("_mask")] if stem.endswith("_mask") and stem != "mask" else stem
                for step in self.postprocess:
                    new = ("mask" if stem == "mask" else f"{stem}_mask") if step == "argmax" else \
                        ("mask_probs" if stem == "mask" else f"{stem}_probs")
                    plan.append((new, n, step))
            else:
                plan.append((n, n, ""))
        names = [p[0] for p in plan]
        if len(set(names)) != len(names):
            raise UsageError(f"post-processed output names collide: {names}")
        self.raw_names, self.output_names, self._plan = list(raw), names, plan
        self.specs = {}
        for new, src, step in plan:
            kind = {"argmax": "mask", "softmax": "mask_probs"}.get(step, kinds[src])
            us = user_specs.get(src) if not step and isinstance(user_specs.get(src), dict) else {}
            self.specs[new] = {"kind": kind, "layout": str(us.get("layout") or _layout(kind, raw[src])),
                               "meaning": str(us.get("meaning") or _MEANING.get(kind, "")),
                               "dtype": "int32" if step == "argmax" else str(raw[src].dtype).replace("torch.", ""),
                               **({"from": src, "postprocess": step} if step else {})}

    def record_shapes(self, height: int, width: int, cores: int) -> None:
        """Per output, its shape at ``height x width`` with a symbolic batch (the manifest's ``shapes``)."""
        with torch.no_grad():
            outs = self.forward(torch.zeros(1, self.cfg.in_channels, height, width), cores=cores)
        for n, t in zip(self.output_names, outs):
            self.specs[n].setdefault("shapes", {})[f"{height}x{width}"] = ["batch", *map(int, t.shape[1:])]

    def forward(self, images: Tensor, cores: int | None = None) -> tuple[Tensor, ...]:
        raw = self._flatten(self.task(images, cores=cores))
        outs = []
        for _new, src, step in self._plan:
            t = raw[src]
            if step == "argmax":
                t = torch.argmax(t, dim=1).to(torch.int32)
            elif step == "softmax":
                t = torch.softmax(t, dim=1)
            outs.append(t)
        return tuple(outs)


class TaskTierModule(nn.Module):
    """The task model frozen at one python-int core count: ``images -> outputs``."""

    def __init__(self, adapter: TaskAdapter, cores: int) -> None:
        super().__init__()
        self.adapter, self.cores = adapter, int(cores)

    def forward(self, images: Tensor):
        return self.adapter(images, cores=self.cores)


# ---------------------------------------------------------------------- --model-factory
def load_factory(spec: str, checkpoint: str | None = None) -> nn.Module:
    """``module:function`` (module: a .py file path or an importable module) -> the nn.Module it
    returns, with ``checkpoint`` (safetensors, or a torch file read with ``weights_only=True``) loaded
    into its state_dict. Every failure is a one-line typed error."""
    mod_part, sep, fn_name = str(spec).rpartition(":")
    if not sep or not mod_part or not fn_name or not fn_name.isidentifier():
        raise UsageError(f"--model-factory {spec!r}: expected module:function (a .py file or an importable "
                         "module, then the function returning the nn.Module)")
    mod = _import(mod_part, spec)
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise UsageError(f"--model-factory {spec!r}: {mod_part} has no function {fn_name!r}")
    if not callable(fn):
        raise UsageError(f"--model-factory {spec!r}: {fn_name} is not callable")
    try:
        model = fn()
    except Exception as e:
        raise UsageError(f"--model-factory {spec!r}: {fn_name}() raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model-factory {spec!r}: {fn_name}() returned {type(model).__name__}, not a torch.nn.Module")
    find_backbone(model)
    check_forward(model)
    if checkpoint:
        load_weights(model, checkpoint)
    return model.eval()


def _import(mod_part: str, spec: str):
    path = Path(mod_part)
    if mod_part.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UsageError(f"--model-factory {spec!r}: no such file {mod_part}")
        name = f"veca_user_model_{abs(hash(str(path.resolve())))}"
        try:
            s = importlib.util.spec_from_file_location(name, path)
            if s is None or s.loader is None:
                raise UsageError(f"--model-factory {spec!r}: cannot import {mod_part}")
            mod = importlib.util.module_from_spec(s)
            sys.modules[name] = mod
            s.loader.exec_module(mod)
            return mod
        except UsageError:
            raise
        except Exception as e:
            sys.modules.pop(name, None)
            raise UsageError(f"--model-factory {spec!r}: importing {mod_part} raised {type(e).__name__}: "
                             f"{first_line(e)}") from None
    try:
        return importlib.import_module(mod_part)
    except ImportError as e:
        raise UsageError(f"--model-factory {spec!r}: cannot import module {mod_part} ({first_line(e)})") from None
    except Exception as e:
        raise UsageError(f"--model-factory {spec!r}: importing {mod_part} raised {type(e).__name__}: "
                         f"{first_line(e)}") from None


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a safetensors file or a torch file (``weights_only=True``; a dict with ``state_dict`` /
    ``model`` inside is unwrapped) into ``model`` strictly."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint {checkpoint}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"--checkpoint {checkpoint}: unreadable ({first_line(e)})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"--checkpoint {checkpoint}: not a state_dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"--checkpoint {checkpoint}: does not fit the model ({first_line(e)})") from None
