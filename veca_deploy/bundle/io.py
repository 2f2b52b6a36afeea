"""Atomic bundle writes and integrity checks (hashes, sizes, paths that stay inside)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import BundleError, OutputExistsError, UsageError
from .manifest import MANIFEST_NAME, Artifact, FileEntry, Manifest, resolve_inside


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, rel: str) -> FileEntry:
    p = root / rel
    return FileEntry(path=rel, sha256=sha256_file(p), bytes=p.stat().st_size)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` via a temporary file and an atomic rename."""
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)


@contextlib.contextmanager
def staged_bundle(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; on success it replaces ``out`` atomically.

    An existing ``out`` is kept unless ``force``; on any failure the staging folder is removed
    and ``out`` is left exactly as it was.
    """
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:  # parent is a file, read-only, permission denied, ...
        raise UsageError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    try:
        yield stage
        swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_update(bundle: str | os.PathLike) -> Iterator[Path]:
    """Copy a bundle to a staging folder, yield it for changes, then swap it in atomically.

    Used to add artifacts (quantized graphs, engines): an interrupted update leaves the
    original bundle untouched.
    """
    src = Path(bundle)
    if not (src / MANIFEST_NAME).is_file():
        raise BundleError(f"{src}: not a bundle (no {MANIFEST_NAME})")
    stage = Path(tempfile.mkdtemp(prefix=f".{src.name}.partial-", dir=src.parent))
    try:
        shutil.copytree(src, stage, dirs_exist_ok=True, symlinks=True)
        yield stage
        swap_in(stage, src)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def swap_in(stage: Path, out: Path) -> None:
    """Replace ``out`` by ``stage`` with renames only (the old folder survives until the end)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        try:
            os.rename(stage, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, out)


def verify_file(root: Path, rel: str, digest: str, size: int, what: str) -> Path:
    """The file ``rel`` inside ``root``, after checking it stays inside and has the recorded size
    and sha256; ``what`` names its owner in the error."""
    path = resolve_inside(root, rel)
    if not path.is_file():
        raise BundleError(f"{what}: missing file {rel}")
    actual = path.stat().st_size
    if actual != size:
        raise BundleError(f"{what}: {rel} has {actual} bytes, manifest says {size} (truncated or replaced)")
    if sha256_file(path) != digest:
        raise BundleError(f"{what}: {rel} sha256 mismatch (tampered or corrupt)")
    return path


def verify_artifact(root: Path, art: Artifact) -> None:
    """Check that every file of ``art`` exists inside the bundle with the recorded size and hash."""
    for rel, digest, size in art.all_files():
        verify_file(root, rel, digest, size, art.id)
