"""Atomic bundle writes and integrity checks (hashes, sizes, paths that stay inside).

Staging folders (``.<name>.partial-*`` beside the target) are registered while they exist, so a
last-resort exit (the CLI after SIGTERM, see ``veca_deploy/cli.py``) can remove them; the two
renames of a swap and the removal of a staging folder run with SIGINT / SIGTERM / SIGHUP held back
(re-delivered right after), so a signal never cuts a swap in half.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import tempfile
import threading
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


#: staging folders of this process that are neither swapped in nor removed yet
_ACTIVE_STAGES: set[Path] = set()
#: held while a swap renames folders (a last-resort cleanup waits for it)
_SWAP_LOCK = threading.RLock()
_HELD_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back SIGINT / SIGTERM / SIGHUP for the duration of the block and re-deliver them
    (to whatever handler was there) at its end. Only in the main thread (where Python runs signal
    handlers); an ignored signal stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved: dict[int, object] = {}

    def hold(signum, frame):  # noqa: ARG001
        pending.append(signum)

    try:
        for s in _HELD_SIGNALS:
            h = signal.getsignal(s)
            if h is None or h == signal.SIG_IGN:  # installed outside Python, or ignored: leave it
                continue
            saved[s] = h
            signal.signal(s, hold)
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _discard(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    _ACTIVE_STAGES.discard(stage)


def discard_active_stages(timeout: float = 10.0) -> None:
    """Remove every staging folder this process still has (for an exit that skips the normal
    unwinding). Waits up to ``timeout`` seconds for a swap in progress to finish first."""
    locked = _SWAP_LOCK.acquire(timeout=timeout)
    try:
        for stage in list(_ACTIVE_STAGES):
            _discard(stage)
    finally:
        if locked:
            _SWAP_LOCK.release()


def _new_stage(parent: Path, name: str) -> Path:
    """``.<name>.partial-*`` in ``parent``, registered, with the mode of a normally created
    folder (mkdtemp's is 0700, which would make the bundle private to its writer)."""
    with deferred_signals():
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
        _ACTIVE_STAGES.add(stage)
    try:
        os.chmod(stage, 0o777 & ~_umask())
    except OSError:
        pass
    return stage


def _umask() -> int:
    try:  # Linux >= 4.7: no need to change the process umask to read it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` via a temporary file and an atomic rename. A signature of the
    previous manifest is removed first: it no longer covers the bundle (re-sign with
    ``veca-deploy sign``), and a stale one would read as tampering on a device."""
    from .signing import SIGNATURE_NAME

    (root / SIGNATURE_NAME).unlink(missing_ok=True)
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)


def check_output_path(out: str | os.PathLike) -> None:
    """Refuse an output path that is a symbolic link (to a folder, to nothing, or a loop), before
    any work: replacing the link would leave the folder it points to stale, and renaming over a
    link to nothing fails only after the whole export. One :class:`OutputExistsError`."""
    out = Path(out)
    if not out.is_symlink():
        return
    try:
        target = os.readlink(out)
    except OSError:
        target = "?"
    try:
        out.stat()
        what = f"a symbolic link to {target}"
    except OSError as e:
        what = (f"a symbolic link loop ({target})" if e.errno == errno.ELOOP
                else f"a symbolic link to {target}, which does not exist")
    raise OutputExistsError(f"{out} is {what}: refusing to write a bundle through a link; give the real "
                            "folder path, or remove the link")


def _remove_old(old: Path) -> None:
    """Remove a previous bundle renamed aside: a folder, or a link (rmtree refuses links)."""
    if old.is_symlink() or old.is_file():
        with contextlib.suppress(OSError):
            old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_bundle(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; on success it replaces ``out`` atomically.

    An existing ``out`` is kept unless ``force``; on any failure the staging folder is removed
    and ``out`` is left exactly as it was. A symbolic link as ``out`` is refused
    (:func:`check_output_path`).
    """
    out = Path(out)
    check_output_path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = _new_stage(out.parent, out.name)
    except OSError as e:  # parent is a file, read-only, permission denied, ...
        raise UsageError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    try:
        yield stage
        swap_in(stage, out)
    except BaseException:
        with deferred_signals():  # a second Ctrl-C must not leave half a staging folder
            _discard(stage)
        raise


@contextlib.contextmanager
def staged_update(bundle: str | os.PathLike) -> Iterator[Path]:
    """Copy a bundle to a staging folder, yield it for changes, then swap it in atomically.

    Used to add artifacts (quantized graphs, engines): an interrupted update leaves the
    original bundle untouched. A bundle given through a symbolic link is updated where the
    link points (the link stays a link, its folder gets the update).
    """
    src = Path(bundle)
    if src.is_symlink():
        try:
            src = src.resolve(strict=True)
        except (OSError, RuntimeError) as e:  # a loop, or a link to nothing
            raise BundleError(f"{bundle}: broken symbolic link ({getattr(e, 'strerror', None) or e})") from None
    if not (src / MANIFEST_NAME).is_file():
        raise BundleError(f"{src}: not a bundle (no {MANIFEST_NAME})")
    stage = _new_stage(src.parent, src.name)
    try:
        shutil.copytree(src, stage, dirs_exist_ok=True, symlinks=True)
        yield stage
        swap_in(stage, src)
    except BaseException:
        with deferred_signals():
            _discard(stage)
        raise


def swap_in(stage: Path, out: Path) -> None:
    """Replace ``out`` by ``stage`` with renames only (the old folder survives until the end).
    Signals are held back until both renames are done (or undone)."""
    with deferred_signals(), _SWAP_LOCK:
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            _remove_old(old)
            os.rename(out, old)
            try:
                os.rename(stage, out)
            except BaseException:
                os.rename(old, out)
                raise
            _ACTIVE_STAGES.discard(stage)
            _remove_old(old)
        else:
            os.rename(stage, out)
            _ACTIVE_STAGES.discard(stage)


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
