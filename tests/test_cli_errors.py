"""Every class of bad input through the real CLI (issue 8): a distinct exit code per error class,
exactly one line on stderr naming the problem, no traceback (``--debug`` shows one), and nothing
left behind next to the output folder. Plus fault injection during export / quantize: the
previous bundle stays byte-for-byte intact and no staging folder survives.

The library-level behaviour of most of these is tested in test_reliability.py, test_checkpoint.py,
test_export.py and test_runtime.py; here the point is what a user of the command line sees.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.manifest import read_manifest
from veca_deploy.cli import main
from veca_deploy.data import fashion_mnist_available
from veca_deploy.errors import (BackendUnavailable, BudgetError, BundleError, CheckpointError, InputError,
                                OutputExistsError, UsageError, VecaError)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers
def snapshot(root: Path) -> dict[str, str]:
    """relpath -> content hash (files), 'dir' or 'link -> target', hidden entries included."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    out[rel] = "unreadable"
    return out


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, cls: type[VecaError], *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == cls.exit_code, f"exit {code}, expected {cls.__name__} ({cls.exit_code}); stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith("veca-deploy: error: "), lines[0]
    assert "Traceback" not in err
    assert "weights_only` set to `False`" not in err  # never advise loading a refused pickle unsafely
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def cli_subprocess(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "veca_deploy.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT), env={**os.environ, **(env or {})})


def documented_exit_codes() -> dict[int, str]:
    """exit code -> class name, from the table in docs/guarantees.md ('-' rows have no class)."""
    rows = {}
    for line in (ROOT / "docs" / "guarantees.md").read_text().splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|\s*(`(\w+)`|-)", line)
        if m:
            rows[int(m.group(1))] = m.group(3) or "-"
    return rows


def test_exit_codes_are_distinct(tmp_path, tiny_bundle, capsys):
    """The exit-code table users read (docs/guarantees.md) against what the CLI really returns: one
    real bad input per row, through ``main``; ``--debug`` shows that the documented class is the
    one raised. Codes are distinct and none collides with 0, 1 (uncaught), 70 (internal) or 74 (OS)."""
    from onnx import TensorProto

    from .test_tensorrt import make_bundle, qdq_graph, save

    doc = documented_exit_codes()
    classes = {n: c for n, c in vars(veca_deploy.errors).items()
               if isinstance(c, type) and issubclass(c, VecaError) and c is not VecaError}
    typed = {code: name for code, name in doc.items() if name != "-"}
    assert sorted(typed.values()) == sorted(classes), "every error class has exactly one row in the table"
    assert len(set(typed)) == len(typed) and not {0, 1, 70, 74, 130} & set(typed)
    assert {0, 70, 74, 130} <= set(doc)

    def ctx(name: str) -> Ctx:
        (tmp_path / name).mkdir()
        return Ctx(tmp=tmp_path / name, tiny=tiny_bundle)

    np.save(tmp_path / "few.npy", np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8))
    u8 = make_bundle(tmp_path / "u8", [{"src": save(qdq_graph(TensorProto.UINT8, 128), tmp_path / "u8.onnx"),
                                        "precision": "int8", "cores": 8}])
    real = {  # class -> a real bad input that the CLI refuses with it
        "UsageError": r_budget_zero(ctx("usage")),
        "CheckpointError": k_not_checkpoint(ctx("ckpt")),
        "ExportError": ["check-trt", str(u8)],  # a UINT8-zero-point QDQ graph TensorRT would not build
        "BundleError": b_schema(ctx("bundle")),
        "BudgetError": r_no_profile(ctx("budget")),
        "QuantizationError": ["quantize", str(ctx("quant").bundle()), "--precision", "int8", "--calib",
                              str(tmp_path / "few.npy"), "-q"],
        "OutputExistsError": p_out_exists(ctx("exists")),
    }
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        real["BackendUnavailable"] = r_unavailable_backend(ctx("backend"))
    for name, args in real.items():
        code, _, err = run_main(args, capsys)
        assert code == classes[name].exit_code, (name, code, err)
        assert doc[code] == name, f"{' '.join(args[:1])} exits {code}, documented as {doc.get(code)}, raised {name}"
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        with pytest.raises(classes[name]):
            main(["--debug", *args])
    # InputError is the Python API's (no command takes a raw inference request): the class a bad
    # request raises carries the documented code
    with veca_deploy.Runtime.open(tiny_bundle, backend="onnxruntime", tiers=[8]) as r:
        with pytest.raises(VecaError) as info:
            r.predict(np.zeros((28, 28, 4), np.uint8))
    assert doc[info.value.exit_code] == type(info.value).__name__ == "InputError"
    if fashion_mnist_available():  # 74: the OS refused a write (here: the report's folder does not exist)
        b = ctx("eval").bundle()
        code, _, err = run_main(["eval", str(b), "--limit", "4", "--backend", "onnxruntime", "--no-write",
                                 "--json", str(tmp_path / "no" / "such" / "r.json"), "-q"], capsys)
        assert code == 74 and doc[74] == "-" and "No such file or directory" in err, (code, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------ the case table
@dataclass
class Ctx:
    tmp: Path  # the parent folder whose listing must not change (except ``allowed``)
    tiny: Path  # the session's tiny bundle (never modified)
    allowed: set[str] = field(default_factory=set)  # relpath prefixes a failed command may still write

    def bundle(self, name: str = "b") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.tiny, dst, symlinks=True)
        return dst


def _edit(root: Path, fn: Callable[[dict], None]) -> None:
    d = json.loads((root / "manifest.json").read_text())
    fn(d)
    (root / "manifest.json").write_text(json.dumps(d))


def _art(root: Path, fmt: str, cores: int = 8):
    return read_manifest(root).find(fmt, "fp32", cores, elastic=False)[0]


# --- bundles: each returns the argv; the error class and the words the line must hold are in CASES
def b_missing(c: Ctx):
    return ["inspect", str(c.tmp / "nope")]


def b_file(c: Ctx):
    (c.tmp / "file").write_text("x")
    return ["validate", str(c.tmp / "file")]


def b_no_manifest(c: Ctx):
    (c.tmp / "empty").mkdir()
    return ["bench", str(c.tmp / "empty"), "--count", "1"]


def b_invalid_json(c: Ctx):
    root = c.bundle()
    (root / "manifest.json").write_text('{"schema_version": 1, "model": ')
    return ["validate", str(root)]


def b_schema(c: Ctx):
    root = c.bundle()
    _edit(root, lambda d: d.__setitem__("schema_version", 2))
    return ["inspect", str(root)]


def b_missing_field(c: Ctx):
    root = c.bundle()
    _edit(root, lambda d: d.pop("preprocess"))
    return ["select", str(root), "--budget-ms", "5", "--no-measure"]


def b_missing_art_field(c: Ctx):
    root = c.bundle()
    _edit(root, lambda d: d["artifacts"][1].pop("bytes"))
    return ["bench", str(root), "--count", "1"]


def b_dotdot(c: Ctx):
    root = c.bundle()
    _edit(root, lambda d: d["artifacts"][0].__setitem__("path", "onnx/../../secret.onnx"))
    return ["validate", str(root)]


def b_absolute(c: Ctx):
    root = c.bundle()
    _edit(root, lambda d: d["artifacts"][0].__setitem__("path", "/etc/passwd"))
    return ["inspect", str(root)]


def b_side_file_escapes(c: Ctx):
    root = c.bundle()
    _edit(root, lambda d: next(a for a in d["artifacts"] if a["files"])["files"][0].__setitem__("path", "../x.bin"))
    return ["select", str(root), "--budget-ms", "5", "--no-measure"]


def b_symlink(c: Ctx):
    root = c.bundle()
    art = _art(root, "onnx")
    outside = c.tmp / "outside.onnx"
    shutil.copy(root / art.path, outside)
    os.remove(root / art.path)
    os.symlink(outside, root / art.path)
    return ["validate", str(root), "--backend", "onnxruntime"]


def b_sha(c: Ctx):
    root = c.bundle()
    p = root / _art(root, "onnx", 16).path
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    return ["validate", str(root), "--backend", "onnxruntime"]


def b_truncated(c: Ctx):
    root = c.bundle()
    p = root / _art(root, "onnx", 24).path
    p.write_bytes(p.read_bytes()[:1000])
    return ["validate", str(root), "--backend", "onnxruntime"]


def b_missing_bin(c: Ctx):
    root = c.bundle()
    os.remove(root / _art(root, "openvino", 8).files[0].path)
    return ["validate", str(root), "--backend", "openvino"]


def b_bench_sha(c: Ctx):
    root = c.bundle()
    p = root / _art(root, "onnx", 8).path
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    c.allowed.add("b/profiles")  # bench records the failed measurement in the device profile
    return ["bench", str(root), "--backend", "onnxruntime", "--tiers", "8", "--count", "2", "--warmup", "0", "--quiet"]


def b_bench_missing_bin(c: Ctx):
    root = c.bundle()
    os.remove(root / _art(root, "openvino", 8).files[0].path)
    c.allowed.add("b/profiles")
    return ["bench", str(root), "--backend", "openvino", "--tiers", "8", "--count", "2", "--warmup", "0", "--quiet"]


# --- requests
def r_budget_zero(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "0", "--no-measure"]


def r_calib_resolution_no_larger(c: Ctx):
    return ["quantize", str(c.bundle()), "--calib", "fashion-mnist", "--calib-resolution", "14", "-q"]


def r_budget_negative(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms=-5", "--no-measure"]


def r_budget_text(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "fast", "--no-measure"]


def r_budget_unsatisfiable(c: Ctx):
    c.allowed.add("b/profiles")  # select profiles this device first (a real measurement), then refuses
    return ["select", str(c.bundle()), "--budget-ms", "0.000001", "--backend", "onnxruntime", "--tiers", "8",
            "--count", "3", "--json"]  # --json: no progress bar on stderr


def r_no_profile(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "5", "--no-measure"]


def r_unknown_backend(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "5", "--backend", "cuda", "--no-measure"]


def r_unavailable_backend(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "5", "--backend", "tensorrt", "--no-measure"]


def r_tiers_absent(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "5", "--tiers", "12,40", "--no-measure"]


def r_tiers_text(c: Ctx):
    return ["select", str(c.bundle()), "--budget-ms", "5", "--tiers", "eight", "--no-measure"]


def r_bench_precision(c: Ctx):
    return ["bench", str(c.bundle()), "--precision", "int4"]


# --- paths for export
EXPORT = ["export", "veca_tiny", "--random-weights", "--cores", "8", "--formats", "onnx", "--precision", "fp32", "-q"]


def p_out_exists(c: Ctx):
    (c.tmp / "out").mkdir()
    (c.tmp / "out" / "mine.txt").write_text("keep me")
    return [*EXPORT, "--out", str(c.tmp / "out")]


def p_out_is_file(c: Ctx):
    (c.tmp / "out").write_text("a file")
    return [*EXPORT, "--out", str(c.tmp / "out"), "--force"]


def p_out_under_file(c: Ctx):
    (c.tmp / "f").write_text("a file")
    return [*EXPORT, "--out", str(c.tmp / "f" / "out")]


def p_source_missing(c: Ctx):
    return ["export", str(c.tmp / "missing.pt"), "--out", str(c.tmp / "out"), "-q"]


def p_source_empty_folder(c: Ctx):
    (c.tmp / "ckpt").mkdir()
    return ["export", str(c.tmp / "ckpt"), "--out", str(c.tmp / "out"), "-q"]


def p_bad_size(c: Ctx):
    return [*EXPORT, "--image-size", "30", "--out", str(c.tmp / "out")]


# --- checkpoints through ``veca-deploy export PATH``
def _good_ckpt(c: Ctx) -> dict:
    from .test_checkpoint import _author_checkpoint

    import torch

    _author_checkpoint(c.tmp / "good.pt", {})
    obj = torch.load(c.tmp / "good.pt", weights_only=True)
    os.remove(c.tmp / "good.pt")
    return obj


def _export_ckpt(c: Ctx, name: str) -> list[str]:
    return ["export", str(c.tmp / name), "--cores", "8", "--formats", "onnx", "--precision", "fp32",
            "--out", str(c.tmp / "out"), "-q"]


def k_truncated(c: Ctx):
    data = (Path(__file__).parent / "golden" / "veca-official-dev" / "checkpoint.pt").read_bytes()
    (c.tmp / "t.pt").write_bytes(data[: len(data) // 2])
    return _export_ckpt(c, "t.pt")


def k_not_checkpoint(c: Ctx):
    (c.tmp / "notes.pt").write_text("these are not weights\n")
    return _export_ckpt(c, "notes.pt")


def k_wrong_container(c: Ctx):
    import torch

    torch.save([1, 2, 3], c.tmp / "list.pt")
    return _export_ckpt(c, "list.pt")


def k_missing_key(c: Ctx):
    import torch

    obj = _good_ckpt(c)
    del obj["student"]["blocks.1.fc2.weight"]
    torch.save(obj, c.tmp / "m.pt")
    return _export_ckpt(c, "m.pt")


def k_unexpected_key(c: Ctx):
    import torch

    obj = _good_ckpt(c)
    obj["student"]["blocks.7.extra.weight"] = torch.zeros(3)
    torch.save(obj, c.tmp / "u.pt")
    return _export_ckpt(c, "u.pt")


def k_wrong_shape(c: Ctx):
    import torch

    obj = _good_ckpt(c)
    obj["student"]["final_norm.weight"] = torch.zeros(65)
    torch.save(obj, c.tmp / "s.pt")
    return _export_ckpt(c, "s.pt")


class _Evil:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def k_evil_pickle(c: Ctx):
    with open(c.tmp / "evil.pt", "wb") as f:
        pickle.dump({"student": _Evil(c.tmp / "PWNED"), "config": {}}, f)
    return _export_ckpt(c, "evil.pt")


def k_evil_torch_zip(c: Ctx):
    import torch

    torch.save({"student": {"w": _Evil(c.tmp / "PWNED")}, "config": {}}, c.tmp / "evil_zip.pt")
    return _export_ckpt(c, "evil_zip.pt")


# name -> (setup, error class, words the one line must contain)
CASES: dict[str, tuple[Callable[[Ctx], list[str]], type[VecaError], tuple[str, ...]]] = {
    # bundles
    "bundle-missing": (b_missing, BundleError, ("no such bundle folder",)),
    "bundle-is-a-file": (b_file, BundleError, ("not a folder",)),
    "bundle-no-manifest": (b_no_manifest, BundleError, ("no manifest.json",)),
    "bundle-invalid-json": (b_invalid_json, BundleError, ("invalid JSON",)),
    "bundle-schema-version": (b_schema, BundleError, ("unsupported schema_version 2",)),
    "bundle-missing-field": (b_missing_field, BundleError, ("missing field 'preprocess'",)),
    "bundle-artifact-field": (b_missing_art_field, BundleError, ("artifacts[1] lacks bytes",)),
    "bundle-path-dotdot": (b_dotdot, BundleError, ("onnx/../../secret.onnx", "escapes the bundle")),
    "bundle-path-absolute": (b_absolute, BundleError, ("/etc/passwd", "escapes the bundle")),
    "bundle-side-file-escapes": (b_side_file_escapes, BundleError, ("../x.bin", "escapes the bundle")),
    "bundle-symlink-outside": (b_symlink, BundleError, ("onnx-fp32-c8-28x28", "outside the bundle")),
    "bundle-sha256": (b_sha, BundleError, ("onnx-fp32-c16-28x28", "sha256 mismatch")),
    "bundle-truncated-onnx": (b_truncated, BundleError, ("onnx-fp32-c24-28x28", "truncated")),
    "bundle-missing-bin": (b_missing_bin, BundleError, ("openvino-fp32-c8-28x28", "missing file", "c8_28x28.bin")),
    "bench-sha256": (b_bench_sha, BundleError, ("onnx-fp32-c8-28x28", "sha256 mismatch")),
    "bench-missing-bin": (b_bench_missing_bin, BundleError, ("missing file", "c8_28x28.bin")),
    # requests
    "budget-zero": (r_budget_zero, UsageError, ("budget", "got 0")),
    "budget-negative": (r_budget_negative, UsageError, ("budget", "-5")),
    "calib-resolution-no-larger": (r_calib_resolution_no_larger, UsageError, ("--calib-resolution 14", "14x14")),
    "budget-not-a-number": (r_budget_text, UsageError, ("--budget-ms", "'fast'")),
    "budget-unsatisfiable": (r_budget_unsatisfiable, BudgetError, ("fastest",)),
    "budget-no-profile": (r_no_profile, BudgetError, ("no latency profile", "bench")),
    "backend-unknown": (r_unknown_backend, UsageError, ("unknown backend 'cuda'",)),
    "backend-unavailable": (r_unavailable_backend, BackendUnavailable, ("tensorrt", "not installed")),
    "tiers-not-in-bundle": (r_tiers_absent, UsageError, ("tiers [12, 40]",)),
    "tiers-not-integers": (r_tiers_text, UsageError, ("--tiers", "'eight'")),
    "bench-unknown-precision": (r_bench_precision, UsageError, ("unknown precision 'int4'",)),
    # paths
    "out-exists": (p_out_exists, OutputExistsError, ("exists", "--force")),
    "out-is-a-file": (p_out_is_file, OutputExistsError, ("not a folder",)),
    "out-under-a-file": (p_out_under_file, UsageError, ("cannot create the output folder",)),
    "source-missing": (p_source_missing, UsageError, ("missing.pt", "neither a registry name")),
    "source-empty-folder": (p_source_empty_folder, CheckpointError, ("no model.safetensors",)),
    "image-size-not-multiple": (p_bad_size, UsageError, ("30x30", "patch size")),
    # checkpoints
    "ckpt-truncated": (k_truncated, CheckpointError, ("t.pt", "not a readable checkpoint")),
    "ckpt-not-a-checkpoint": (k_not_checkpoint, CheckpointError, ("notes.pt",)),
    "ckpt-not-a-dict": (k_wrong_container, CheckpointError, ("expected a dict",)),
    "ckpt-missing-key": (k_missing_key, CheckpointError, ("missing keys blocks.1.fc2.weight",)),
    "ckpt-unexpected-key": (k_unexpected_key, CheckpointError, ("unexpected keys blocks.7.extra.weight",)),
    "ckpt-wrong-shape": (k_wrong_shape, CheckpointError, ("shape mismatch for final_norm.weight",)),
    "ckpt-malicious-pickle": (k_evil_pickle, CheckpointError, ("evil.pt", "weights_only")),
    "ckpt-malicious-torch-zip": (k_evil_torch_zip, CheckpointError, ("evil_zip.pt", "unsupported GLOBAL posix.system")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_with_its_exit_code(name, tmp_path, tiny_bundle, capsys):
    setup, cls, needles = CASES[name]
    ctx = Ctx(tmp=tmp_path, tiny=tiny_bundle)
    args = setup(ctx)
    before = snapshot(tmp_path)
    code, _, err = run_main(args, capsys)
    assert_one_line_error(code, err, cls, *needles)
    after = snapshot(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    changed = {k for k in changed if not any(k == a or k.startswith(a + "/") for a in ctx.allowed)}
    assert not changed, f"{name} left behind / changed: {sorted(changed)}"
    assert not (tmp_path / "PWNED").exists(), "a pickle ran code"
    # --debug: the same typed error escapes (the real CLI then prints its traceback, see below)
    with pytest.raises(cls):
        main(["--debug", *args])
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", ["bundle-schema-version", "ckpt-malicious-pickle"])
def test_real_process_debug_shows_traceback_and_plain_does_not(name, tmp_path, tiny_bundle):
    setup, cls, needles = CASES[name]
    ctx = Ctx(tmp=tmp_path, tiny=tiny_bundle)
    args = setup(ctx)
    before = snapshot(tmp_path)
    plain = cli_subprocess(*args)
    assert_one_line_error(plain.returncode, plain.stderr, cls, *needles)
    debug = cli_subprocess("--debug", *args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and cls.__name__ in debug.stderr
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


def test_unreadable_files(tmp_path, tiny_bundle, capsys, monkeypatch):
    """chmod 000 does not stop root, so the permission error is injected at the open call when
    the suite runs as root; the real chmod path runs for everyone else."""
    root = shutil.copytree(tiny_bundle, tmp_path / "b")
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"\0" * 64)
    if os.geteuid() != 0:
        os.chmod(root / "manifest.json", 0)
        os.chmod(ckpt, 0)
    else:
        import builtins

        import veca_deploy.model.checkpoint as ckpt_mod

        real_read_text, real_read_bytes, real_open = Path.read_text, Path.read_bytes, builtins.open

        def read_text(self, *a, **k):
            if self.name == "manifest.json":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_read_text(self, *a, **k)

        def read_bytes(self):
            if self.name == "manifest.json":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_read_bytes(self)

        def fake_open(file, *a, **k):
            if Path(file) == ckpt:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr(Path, "read_text", read_text)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        monkeypatch.setattr(ckpt_mod, "open", fake_open, raising=False)
    try:
        before = snapshot(tmp_path)
        code, _, err = run_main(["inspect", str(root)], capsys)
        assert_one_line_error(code, err, BundleError, "manifest.json", "cannot read", "Permission denied")
        code, _, err = run_main(["export", str(ckpt), "--out", str(tmp_path / "out"), "-q"], capsys)
        assert_one_line_error(code, err, CheckpointError, "w.pt", "cannot read", "Permission denied")
        assert snapshot(tmp_path) == before
    finally:
        os.chmod(root / "manifest.json", 0o644)
        os.chmod(ckpt, 0o644)


def test_click_usage_errors_exit_2_and_leave_nothing(tmp_path, capsys):
    """Click's own usage errors (unknown option, missing argument) are one line too, exit 2,
    carry no traceback and write nothing."""
    for args in (["select", str(tmp_path)], ["export", "--bogus", "--out", str(tmp_path / "o")],
                 ["no-such-command"]):
        code, _, err = run_main(args, capsys)
        assert code == 2 and "Traceback" not in err and "usage error" in err
        assert len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ Runtime (Python API)
@pytest.fixture(scope="module")
def rt(tiny_bundle):
    with veca_deploy.Runtime.open(tiny_bundle, backend="onnxruntime", tiers=[8]) as r:
        yield r


@pytest.mark.parametrize("bad,msg", [  # (test_runtime.py covers channels, NaN, empty, float64/int32, size, rank)
    (np.full((1, 3, 28, 28), np.inf, np.float32), "NaN or Inf"),
    (np.concatenate([np.zeros((1, 3, 28, 28), np.float32), np.full((1, 3, 28, 28), -np.inf, np.float32)]),
     "NaN or Inf"),
    (np.zeros((2, 3, 28, 27), np.float32), "28x28"),
    (np.zeros((1, 4, 28, 28), np.float32), "channels must be 3"),
    (np.zeros((1, 3, 28, 28), np.float16), "float16"),
    (np.zeros((28, 28, 3), bool), "bool"),
    (np.zeros((0, 3, 28, 28), np.float32), "empty"),
    (np.zeros((0, 28, 28), np.uint8), "empty"),
])
def test_runtime_predict_bad_input(rt, bad, msg):
    with pytest.raises(InputError, match=msg):
        rt.predict(bad)
    assert rt.predict(np.zeros((28, 28), np.uint8))["global"].shape[0] == 1  # still serving


@pytest.mark.parametrize("kw,cls,msg", [
    (dict(budget_ms=0), UsageError, "budget"),
    (dict(budget_ms=-1.0), UsageError, "budget"),
    (dict(budget_ms=float("inf")), UsageError, "budget"),
    (dict(budget_ms=5, backend="cuda"), UsageError, "unknown backend"),
    (dict(budget_ms=5, backend="tensorrt"), BackendUnavailable, "tensorrt"),
    (dict(budget_ms=None, tiers=[12]), UsageError, r"tiers \[12\]"),
    (dict(budget_ms=5, measure=False), BudgetError, "no latency profile"),
])
def test_runtime_open_bad_requests(tiny_bundle, tmp_path, kw, cls, msg):
    root = shutil.copytree(tiny_bundle, tmp_path / "b")  # no profile in it: nothing measured, nothing written
    before = snapshot(tmp_path)
    with pytest.raises(cls, match=msg):
        veca_deploy.Runtime.open(root, **kw)
    assert snapshot(tmp_path) == before


def test_runtime_open_unsatisfiable_budget(tiny_bundle, tmp_path):
    root = shutil.copytree(tiny_bundle, tmp_path / "b")
    with pytest.raises(BudgetError, match="fastest"):
        veca_deploy.Runtime.open(root, budget_ms=1e-6, backend="onnxruntime", tiers=[8], count=3, warmup=1)


# ------------------------------------------------------------------------------ fault injection
class Injected(RuntimeError):
    pass


def _fail_on_call(real, n: int, exc: BaseException, before: Callable | None = None):
    """Wrap ``real``: calls 1..n-1 pass through, call n runs ``before`` (if any) then raises ``exc``."""
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] >= n:
            if before is not None:
                before(*a, **k)
            raise exc
        return real(*a, **k)

    wrapper.calls = calls
    return wrapper


def _truncate_after_real(real):
    def partial(*a, **k):  # write the file for real, then cut it short like a full disk would
        real(*a, **k)
        dst = Path(a[1] if len(a) > 1 else k.get("out") or k.get("path"))
        if dst.exists():
            dst.write_bytes(dst.read_bytes()[: max(1, dst.stat().st_size // 3)])
    return partial


def _fault_export(monkeypatch, fault: str):
    import veca_deploy.bundle.io as bio
    import veca_deploy.convert.openvino_ir as ove
    import veca_deploy.export.pipeline as pipe

    enospc = OSError(errno.ENOSPC, "No space left on device")
    if fault == "simplify-2nd-call":
        monkeypatch.setattr(pipe, "simplify_onnx", _fail_on_call(pipe.simplify_onnx, 2, Injected("simplify")))
        return Injected
    if fault == "openvino-2nd-call":
        monkeypatch.setattr(pipe, "export_openvino", _fail_on_call(ove.export_openvino, 2, Injected("openvino")))
        return Injected
    if fault == "enospc-onnx-write":
        real = pipe.export_onnx
        monkeypatch.setattr(pipe, "export_onnx", _fail_on_call(real, 2, enospc, before=_truncate_after_real(real)))
        return OSError
    if fault == "enospc-manifest":
        real_write = Path.write_text

        def write_text(self, *a, **k):
            if self.name.startswith(".manifest.json"):
                real_write(self, "{\"schema_ver", encoding="utf-8")
                raise enospc
            return real_write(self, *a, **k)

        monkeypatch.setattr(Path, "write_text", write_text)
        return OSError
    if fault == "interrupt-openvino":
        monkeypatch.setattr(pipe, "export_openvino", _fail_on_call(ove.export_openvino, 1, KeyboardInterrupt()))
        return KeyboardInterrupt
    if fault == "rename-into-place":  # the final swap: out -> .old succeeds, stage -> out fails
        real_rename = os.rename

        def rename(src, dst):
            if ".partial-" in str(src):
                raise OSError(errno.EIO, "Input/output error")
            return real_rename(src, dst)

        monkeypatch.setattr(bio.os, "rename", rename)
        return OSError
    raise AssertionError(fault)


# fault -> what the faulty export over the previous bundle asks for (as little as reaches the fault)
FAULT_EXPORTS = {
    "simplify-2nd-call": dict(cores=[8, 16], formats=["onnx"]),
    "openvino-2nd-call": dict(cores=[8, 16], formats=["onnx", "openvino"]),
    "enospc-onnx-write": dict(cores=[8, 16], formats=["onnx"]),
    "enospc-manifest": dict(cores=[8], formats=["onnx", "openvino"]),
    "interrupt-openvino": dict(cores=[8], formats=["onnx", "openvino"]),
    "rename-into-place": dict(cores=[8], formats=["onnx"]),
}


@pytest.mark.parametrize("fault", list(FAULT_EXPORTS))
def test_export_fault_keeps_previous_bundle(fault, tiny_bundle, tmp_path, monkeypatch):
    out = shutil.copytree(tiny_bundle, tmp_path / "b", symlinks=True)  # the previous bundle
    before = snapshot(tmp_path)
    exc = _fault_export(monkeypatch, fault)
    with pytest.raises(exc):
        veca_deploy.export("veca_tiny", random_weights=True, out=out, precisions=["fp32"], force=True,
                           **FAULT_EXPORTS[fault])
    monkeypatch.undo()
    assert snapshot(tmp_path) == before, "the previous bundle changed"
    assert sorted(os.listdir(tmp_path)) == ["b"], "staging / .old folders left behind"
    assert not [p for p in tmp_path.rglob(".*")]


def test_export_fault_through_cli_is_one_line(tiny_bundle, tmp_path, monkeypatch, capsys):
    out = shutil.copytree(tiny_bundle, tmp_path / "b", symlinks=True)
    before = snapshot(tmp_path)
    _fault_export(monkeypatch, "enospc-manifest")
    code, _, err = run_main(["export", "veca_tiny", "--random-weights", "--cores", "8", "--formats", "onnx",
                             "--precision", "fp32", "--out", str(out), "--force", "-q"], capsys)
    monkeypatch.undo()
    assert code == 74 and len(err.strip().splitlines()) == 1 and "No space left on device" in err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("fault", ["enospc-2nd-conversion", "interrupt-1st-conversion"])
def test_quantize_fault_keeps_previous_bundle(fault, tiny_bundle, tmp_path, monkeypatch):
    quantize = pytest.importorskip("veca_deploy.calibration.quantize").quantize
    import veca_deploy.calibration.onnx_quant as oq

    out = shutil.copytree(tiny_bundle, tmp_path / "b", symlinks=True)
    before = snapshot(tmp_path)
    if fault == "enospc-2nd-conversion":
        exc: type[BaseException] = OSError
        monkeypatch.setattr(oq, "convert_onnx_fp16", _fail_on_call(
            oq.convert_onnx_fp16, 2, OSError(errno.ENOSPC, "No space left on device"),
            before=_truncate_after_real(oq.convert_onnx_fp16)))
    else:
        exc = KeyboardInterrupt
        monkeypatch.setattr(oq, "convert_onnx_fp16", _fail_on_call(oq.convert_onnx_fp16, 1, KeyboardInterrupt()))
    with pytest.raises(exc):
        quantize(out, precisions=["fp16"], formats=["onnx"], eval_data=None)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["b"]


# ------------------------------------------------------------------------------ what is never done
def test_no_network_and_no_writes_outside_the_bundle(tiny_bundle, tmp_path, monkeypatch, capsys):
    """validate, select (with profiling) and Runtime.predict with every socket connection refused:
    they work, and the only thing written anywhere under the parent is the bundle's profiles/."""
    import socket

    def no_network(*a, **k):
        raise AssertionError(f"network access attempted: {a!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    root = shutil.copytree(tiny_bundle, tmp_path / "b")
    before = snapshot(tmp_path)
    assert run_main(["validate", str(root), "--backend", "onnxruntime"], capsys)[0] == 0
    assert run_main(["inspect", str(root), "--json"], capsys)[0] == 0
    code, _, err = run_main(["select", str(root), "--budget-ms", "1000", "--backend", "onnxruntime", "--tiers", "8",
                             "--count", "3", "--json"], capsys)
    assert code == 0, err
    with veca_deploy.Runtime.open(root, budget_ms=1000, backend="onnxruntime", tiers=[8]) as r:
        assert r.predict(np.zeros((28, 28), np.uint8))["global"].shape[0] == 1
    after = snapshot(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k == "b/profiles" or k.startswith("b/profiles/") for k in changed), sorted(changed)


def test_first_line_quotes_what_went_wrong_not_where():
    """OpenVINO leads its messages with source locations; the one-line error quotes the message."""
    from veca_deploy.errors import first_line

    ov = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                      "Exception from src/inference/src/dev/plugin.cpp:54:\n"
                      "Check 'element::Type::merge(a, b)' failed at src/core/src/op/concat.cpp:36:\n"
                      "While validating node 'Concat /Concat_5':\n"
                      "Argument element types are inconsistent.\n")
    assert first_line(ov) == "While validating node 'Concat /Concat_5': Argument element types are inconsistent."
    assert first_line(ValueError("plain\nsecond")) == "plain" and first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("Exception from a.cpp:1:")) == "Exception from a.cpp:1:"  # nothing else said
