"""Loading and saving weights: the authors' ``torch.save`` format and our safetensors folders.

Pickles are opened with ``weights_only=True`` only, so a checkpoint can never run code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..bundle.io import sha256_file
from ..errors import CheckpointError
from .config import VecaConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "card.json"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
REFERENCE_DIR = WEIGHTS_DIR / "veca_tiny"
#: models whose trained weights ship inside the package (nothing is ever downloaded)
PRETRAINED = ("veca_tiny", "veca_tiny_seg")
_PREFIXES = ("module.", "student.", "_orig_mod.")


def _strip_prefixes(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = key
        stripped = True
        while stripped:
            stripped = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p):], True
        out[k] = value
    return out


def _refusal_reason(e: BaseException) -> str:
    """The informative line of torch's weights_only refusal (e.g. "unsupported GLOBAL posix.system"),
    without its boilerplate, which advises retrying with weights_only=False: never for us."""
    for line in str(e).splitlines():
        line = line.strip()
        if line.startswith("Please file an issue") and "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if not line or line.startswith(("Weights only load failed", "Check the documentation", "Please file")):
            continue
        return line
    return "unsupported pickle content"


#: what a weights file must be, for the "not a checkpoint" message
CHECKPOINT_KINDS = ("a safetensors file or folder (model.safetensors + config.json), or a torch.save file "
                    "that loads with torch.load(weights_only=True)")
#: the hint of every "no model config" error
CONFIG_HINT = "pass --config NAME_OR_JSON (a registry name such as veca_small, or a JSON file of config fields)"


def _sniff(path: Path) -> str:
    """What the first bytes say the file is: ``torch`` (a zip, torch.save's format since 1.6, or a
    pickle: protocol 2+ starts with 0x80), ``safetensors`` (a little-endian header length, then a
    JSON header), ``empty`` or ``other`` (text, images, ...: not weights at all)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (1 << 32):
        return "safetensors"
    return "other"


def _load_pickle(path: Path) -> dict[str, Any]:
    kind = _sniff(path)
    if kind == "empty":
        raise CheckpointError(f"{path}: not a checkpoint (the file is empty); expected {CHECKPOINT_KINDS}")
    if kind != "torch":
        raise CheckpointError(f"{path}: not a checkpoint; expected {CHECKPOINT_KINDS}")
    try:
        with warnings.catch_warnings():  # torch warns on stderr about pickle protocols: not one line
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle (weights_only=True): {_refusal_reason(e)}") from None
    except Exception as e:  # torch.load raises many types (RuntimeError, KeyError, EOFError, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict with 'student' and 'config', got {type(obj).__name__}")
    return obj


def _load_strict(model, state: dict[str, torch.Tensor], source: str):
    """Load ``state`` into ``model`` strictly: missing/unexpected keys or a shape mismatch is a
    one-line CheckpointError, never a silent re-initialization."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointError(f"{source}: weights do not fit the config: {'; '.join(parts)}")
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: shape mismatch for {name}: checkpoint "
                                  f"{list(state[name].shape)} vs model {list(ref.shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model.eval()


def _build(cfg: VecaConfig, state: dict[str, torch.Tensor], source: str):
    from .veca import VECA

    if "head.weight" in state and not cfg.num_classes:
        cfg.num_classes = int(state["head.weight"].shape[0])
    model = VECA(cfg)
    return _load_strict(model, state, source)


def _short(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _unpack(obj: dict[str, Any], p: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(state_dict, author config or None)`` of a loaded pickle: the authors' ``{"student",
    "config"}``, a ``{"state_dict" | "model": ...}`` wrapper, or a bare ``state_dict``."""
    if "student" in obj:
        state, cfg = obj["student"], obj.get("config")
    elif isinstance(obj.get("state_dict"), dict) or isinstance(obj.get("model"), dict):
        state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj["model"]
        cfg = obj.get("config")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, cfg = obj, None  # torch.save(model.state_dict()): the weights alone
    else:
        raise CheckpointError(f"{p}: expected keys 'student' and 'config' (or a bare state_dict of tensors), "
                              f"found {_short(sorted(map(str, obj)))}")
    if not isinstance(state, dict) or (cfg is not None and not isinstance(cfg, dict)):
        raise CheckpointError(f"{p}: 'student' and 'config' must be dicts")
    return state, cfg


def load_checkpoint(path: str | os.PathLike, *, config: VecaConfig | None = None, **config_overrides: Any):
    """Load a model from the authors' ``torch.save`` file, a bare ``state_dict`` saved with
    ``torch.save``, or our ``save_pretrained`` folder (or a ``.safetensors`` file).

    ``config`` is the model config to use when the checkpoint carries none (a bare state_dict,
    safetensors without ``config.json``); a checkpoint's own config always wins, and
    ``model.config_from`` says which was used (``"checkpoint"`` or ``"given"``). Returns the
    model in eval mode; ``model.source_sha256`` records the weights' hash. Every failure is a
    :class:`CheckpointError` naming the problem.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_dir() or p.suffix == ".safetensors" or _sniff(p) == "safetensors":
        model, weights = _load_safetensors_dir(p if p.is_dir() else p.parent, p if p.is_file() else None,
                                               config_overrides, config)
    else:
        try:
            with open(p, "rb"):
                pass
        except OSError as e:
            raise CheckpointError(f"{p}: cannot read ({e.strerror})") from None
        state, author_cfg = _unpack(_load_pickle(p), p)
        if author_cfg is not None:
            cfg, config_from = VecaConfig.from_author_config(author_cfg), "checkpoint"
        elif config is not None:
            cfg, config_from = VecaConfig.from_dict(config.to_dict()), "given"  # a copy: _build may set num_classes
        else:
            raise CheckpointError(f"{p}: the checkpoint has weights but no model config; {CONFIG_HINT}")
        for k, v in config_overrides.items():
            setattr(cfg, k, v)
        model, weights = _build(cfg, _strip_prefixes(state), str(p)), p
        model.config_from = config_from
    model.source_sha256 = sha256_file(weights)
    model.source_path = str(p)
    return model


def _load_safetensors_dir(folder: Path, weights: Path | None, overrides: dict[str, Any],
                          config: VecaConfig | None = None):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = weights or folder / WEIGHTS_FILE
    cfg_path = folder / CONFIG_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} inside")
    if not cfg_path.is_file():
        if config is None:
            raise CheckpointError(f"{folder}: no {CONFIG_FILE} beside the weights; {CONFIG_HINT}")
        cfg_dict, config_from = config.to_dict(), "given"
    else:
        try:
            cfg_dict = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
        if not isinstance(cfg_dict, dict):
            raise CheckpointError(f"{cfg_path}: expected a JSON object")
        config_from = "checkpoint"
    head_cfg = cfg_dict.pop("head", None) if isinstance(cfg_dict, dict) else None
    cfg = VecaConfig.from_dict({**cfg_dict, **overrides})
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    model = _build(cfg, state, str(weights)) if head_cfg is None else _build_task(cfg, head_cfg, state, str(weights))
    model.config_from = config_from
    return model, weights


def _build_task(cfg: VecaConfig, head_cfg: Any, state: dict[str, torch.Tensor], source: str):
    """A TaskModel (backbone + head) from a folder whose config.json names a head; strict load,
    so a head that does not fit the weights is refused rather than silently re-initialized."""
    from ..errors import UsageError
    from .task import TaskModel
    from .veca import VECA

    if not isinstance(head_cfg, dict):
        raise CheckpointError(f"{source}: 'head' in {CONFIG_FILE} must be an object")
    try:
        model = TaskModel(VECA(cfg), head_cfg)
    except UsageError as e:
        raise CheckpointError(f"{source}: invalid head config: {e}") from None
    return _load_strict(model, state, source)


def save_pretrained(model, directory: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``card.json``) atomically into ``directory``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        cfg_out = model.cfg.to_dict()
        head_config = getattr(model, "head_config", None)
        if isinstance(head_config, dict):  # a TaskModel: load_checkpoint rebuilds the head from this
            cfg_out["head"] = head_config
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg_out, indent=1) + "\n")
        if card is not None:
            (tmp / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the folder ships as package data
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_reference_model(name: str = "veca_tiny"):
    """A built-in model shipped in the package: ``veca_tiny`` (the Fashion-MNIST classifier) or
    ``veca_tiny_seg`` (the dense reference model: a TaskModel with a segmentation head)."""
    folder = WEIGHTS_DIR / name
    if name not in PRETRAINED or not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"the {name} weights are missing from the package ({folder})")
    return load_checkpoint(folder)


def reference_card(name: str = "veca_tiny") -> dict[str, Any]:
    return json.loads((WEIGHTS_DIR / name / CARD_FILE).read_text())
