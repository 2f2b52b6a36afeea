"""Calibration-statistics cache, so a second quantization of the same graph is fast.

Entries are keyed by sha256(calibration tensors) + sha256(FP32 graph) + tier + recipe, so a
change of data, sampling, preprocessing, model or recipe is a different key and can never
return stale statistics. Location: ``$VECA_CACHE_DIR`` or ``~/.cache/veca-deploy``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .recipe import recipe_key


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """Absolute, so a quantizer that changes the working directory still finds it."""
    if override:
        return Path(override).expanduser().absolute()
    env = os.environ.get("VECA_CACHE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (Path(base) / "veca-deploy").absolute()


def entry_key(data_sha256: str, model_sha256: str, tier: int | str, recipe: dict) -> str:
    return recipe_key(data_sha256, model_sha256, str(tier), recipe)[:40]


def entry_dir(kind: str, key: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of one entry (may not exist yet)."""
    return cache_root(root) / "calibration" / kind / key


def publish(tmp: Path, final: Path) -> None:
    """Move a filled temporary folder into place atomically (concurrent writers: first wins)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:  # someone else published the same key first: identical content
        shutil.rmtree(tmp, ignore_errors=True)


def new_tmp(kind: str, root: str | os.PathLike | None = None) -> Path:
    d = cache_root(root) / "calibration" / kind
    d.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=d))
