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
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "weights" / "veca_tiny"
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


def _load_pickle(path: Path) -> dict[str, Any]:
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


def _build(cfg: VecaConfig, state: dict[str, torch.Tensor], source: str):
    from .veca import VECA

    if "head.weight" in state and not cfg.num_classes:
        cfg.num_classes = int(state["head.weight"].shape[0])
    model = VECA(cfg)
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


def _short(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(path: str | os.PathLike, **config_overrides: Any):
    """Load a model from the authors' ``torch.save`` file or from our ``save_pretrained`` folder.

    Returns the model in eval mode; ``model.source_sha256`` records the weights' hash.
    Every failure is a :class:`CheckpointError` naming the problem.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_dir() or p.suffix == ".safetensors":
        model, weights = _load_safetensors_dir(p if p.is_dir() else p.parent, p if p.is_file() else None,
                                               config_overrides)
    else:
        try:
            with open(p, "rb"):
                pass
        except OSError as e:
            raise CheckpointError(f"{p}: cannot read ({e.strerror})") from None
        obj = _load_pickle(p)
        if "student" not in obj or "config" not in obj:
            raise CheckpointError(f"{p}: expected keys 'student' and 'config', found {_short(sorted(map(str, obj)))}")
        if not isinstance(obj["config"], dict) or not isinstance(obj["student"], dict):
            raise CheckpointError(f"{p}: 'student' and 'config' must be dicts")
        cfg = VecaConfig.from_author_config(obj["config"])
        for k, v in config_overrides.items():
            setattr(cfg, k, v)
        model, weights = _build(cfg, _strip_prefixes(obj["student"]), str(p)), p
    model.source_sha256 = sha256_file(weights)
    model.source_path = str(p)
    return model


def _load_safetensors_dir(folder: Path, weights: Path | None, overrides: dict[str, Any]):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = weights or folder / WEIGHTS_FILE
    cfg_path = folder / CONFIG_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} inside")
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} beside the weights")
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg_dict, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    cfg = VecaConfig.from_dict({**cfg_dict, **overrides})
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    return _build(cfg, state, str(weights)), weights


def save_pretrained(model, directory: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``card.json``) atomically into ``directory``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=1) + "\n")
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


def load_reference_model():
    """The built-in reference model (``veca_tiny`` trained on Fashion-MNIST) shipped in the package."""
    if not (REFERENCE_DIR / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"the reference weights are missing from the package ({REFERENCE_DIR})")
    return load_checkpoint(REFERENCE_DIR)


def reference_card() -> dict[str, Any]:
    return json.loads((REFERENCE_DIR / CARD_FILE).read_text())
