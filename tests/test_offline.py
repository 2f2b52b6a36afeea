"""Offline by construction (field reliability): no entry point of veca-deploy phones home or
writes outside the bundle, in real processes with the real dependencies (no mocks).

- ``validate``, ``bench`` and ``Runtime.open(...).predict`` with HOME, XDG_CACHE_HOME and TMPDIR
  pointed at empty folders leave all three empty (onnxruntime's device id / event store and
  OpenVINO's client id would otherwise appear there) and change only ``profiles/`` in the bundle;
- the telemetry switches are the dependencies' real ones, set only when the user has not set
  them (``ORT_DISABLE_TELEMETRY=0`` from the user is kept, and then onnxruntime does write: the
  switch is real), OpenVINO's explicit consent file is honoured, ``VECA_ALLOW_TELEMETRY=1`` opts
  out of all of it;
- under ``unshare -n`` (no network at all) validate and bench succeed;
- under ``strace -f -e trace=connect`` validate, bench and an export of the built-in model make
  no AF_INET / AF_INET6 connection (an ``import openvino`` without the switch does: the
  telemetry subprocess's DNS lookup).

Tests that need a tool this machine lacks are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CLI = str(BIN / "veca-deploy")
#: variables that would change what the dependencies do: removed so the defaults are tested
_SCRUB = ("ORT_DISABLE_TELEMETRY", "NNCF_CI", "NNCF_DEV", "VECA_ALLOW_TELEMETRY", "CI", "TF_BUILD", "JENKINS_URL",
          "VECA_CACHE_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "VECA_DEBUG",
          "VECA_PROGRESS_LOG")


def snapshot(root: Path) -> dict[str, str]:
    """relpath -> sha256 (files) or 'dir', hidden entries included."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def sandbox(tmp_path):
    """Empty HOME, XDG_CACHE_HOME and TMPDIR folders and an environment that points at them."""
    dirs = {name: tmp_path / name for name in ("home", "xdg-cache", "tmp")}
    for d in dirs.values():
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(HOME=str(dirs["home"]), XDG_CACHE_HOME=str(dirs["xdg-cache"]), TMPDIR=str(dirs["tmp"]),
               PYTHONDONTWRITEBYTECODE="1")
    return env, dirs


def run(cmd: list[str], env: dict[str, str], timeout: float = 120, prefix: list[str] | None = None):
    return subprocess.run([*(prefix or []), *cmd], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["HOME"])


def assert_untouched(dirs: dict[str, Path]) -> None:
    for name, d in dirs.items():
        assert everything_under(d) == [], f"written under {name} ({d}): {everything_under(d)}"


def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    root = shutil.copytree(tiny_bundle, tmp_path / "bundles" / "b")
    shutil.rmtree(root / "profiles", ignore_errors=True)  # another test may have profiled the shared bundle
    return root


RUNTIME_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import veca_deploy
    with veca_deploy.Runtime.open(sys.argv[1], budget_ms=1000, tiers=[8], count=3, warmup=0) as rt:
        pred = rt.predict(np.zeros((28, 28, 3), np.uint8))
        assert pred["global"].shape[0] == 1
    print("ok", rt.selection.chosen.cand.key)
""")


def test_validate_bench_and_runtime_write_nothing_outside_the_bundle(tiny_bundle, tmp_path, sandbox):
    env, dirs = sandbox
    root = bundle_copy(tiny_bundle, tmp_path)
    before = snapshot(root.parent)
    r = run([CLI, "validate", str(root)], env)
    assert r.returncode == 0, r.stderr
    r = run([sys.executable, "-c", RUNTIME_SCRIPT, str(root)], env)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr
    r = run([CLI, "bench", str(root), "--tiers", "8", "--count", "3", "--warmup", "0", "--quiet"], env)
    assert r.returncode == 0, r.stderr
    assert_untouched(dirs)
    after = snapshot(root.parent)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k == "b/profiles" or re.fullmatch(r"b/profiles/[\w.-]+\.json", k) for k in changed), \
        sorted(changed)


PROBE = textwrap.dedent("""
    import json, os, sys
    import veca_deploy
    out = {k: os.environ.get(k) for k in ("ORT_DISABLE_TELEMETRY", "NNCF_CI")}
    out["gate"] = any(type(f).__name__ == "_TelemetryGate" for f in sys.meta_path)
    if "onnxruntime" in sys.argv[1:]:
        import onnxruntime
    if "consent" in sys.argv[1:]:  # the consent check itself: no openvino import, so nothing is ever sent
        from openvino_telemetry.utils.opt_in_checker import OptInChecker
        out["consent"] = OptInChecker().check(False, True).name
    if "openvino" in sys.argv[1:]:
        import openvino, nncf
        import openvino_telemetry
        from nncf.telemetry import telemetry
        out["ov_consent"] = openvino_telemetry.Telemetry().consent
        out["nncf_stub"] = type(telemetry).__name__ == "MagicMock"
    print(json.dumps(out))
""")


def probe(env: dict[str, str], *what: str) -> dict:
    r = run([sys.executable, "-c", PROBE, *what], env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_telemetry_is_off_by_default_and_explicit_settings_win(sandbox):
    env, dirs = sandbox
    # the defaults: every switch set, openvino + nncf + onnxruntime imported, nothing written
    d = probe(env, "onnxruntime", "openvino", "consent")
    assert d == {"ORT_DISABLE_TELEMETRY": "1", "NNCF_CI": "1", "gate": True, "consent": "DECLINED",
                 "ov_consent": False, "nncf_stub": True}, d
    assert_untouched(dirs)

    # the user's own value wins, and the switch is the real one: with "0" onnxruntime writes its store
    d = probe({**env, "ORT_DISABLE_TELEMETRY": "0", "NNCF_CI": ""}, "onnxruntime")
    assert d["ORT_DISABLE_TELEMETRY"] == "0" and d["NNCF_CI"] == ""
    written = everything_under(dirs["xdg-cache"])
    assert any("Microsoft/DeveloperTools" in p for p in written), written  # + $TMPDIR/.ses (1DS session)
    for d in (dirs["xdg-cache"], dirs["tmp"]):
        shutil.rmtree(d)
        d.mkdir()

    # an explicit OpenVINO opt-in (the file `opt_in_out --opt_in` writes) is honoured; an opt-out too
    consent = dirs["home"] / "intel" / "openvino_telemetry"
    consent.parent.mkdir()
    consent.write_text("1")
    assert probe(env, "consent")["consent"] == "ACCEPTED"
    consent.write_text("0")
    assert probe(env, "consent")["consent"] == "DECLINED"
    shutil.rmtree(consent.parent)

    # VECA_ALLOW_TELEMETRY=1: veca-deploy leaves every dependency as it would be without it
    d = probe({**env, "VECA_ALLOW_TELEMETRY": "1"}, "consent")
    assert d == {"ORT_DISABLE_TELEMETRY": None, "NNCF_CI": None, "gate": False, "consent": "NO_FILE"}, d
    assert_untouched(dirs)


def _unshare_n() -> str | None:
    """None when ``unshare -n`` works here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    try:
        r = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unshare -n failed: {e}"
    return None if r.returncode == 0 else f"unshare -n is not permitted here ({r.stderr.strip()})"


def test_validate_and_bench_without_any_network(tiny_bundle, tmp_path, sandbox):
    reason = _unshare_n()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    env, dirs = sandbox
    root = bundle_copy(tiny_bundle, tmp_path)
    for cmd in ([CLI, "validate", str(root)],
                [CLI, "bench", str(root), "--tiers", "8", "--count", "3", "--warmup", "0", "--quiet"],
                [sys.executable, "-c", RUNTIME_SCRIPT, str(root)]):
        r = run(cmd, env, prefix=["unshare", "-n"])
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
    assert_untouched(dirs)


def _strace() -> str | None:
    """None when ``strace -f`` works here, else why not (not installed: ``apt-get install -y strace``)."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install -y strace)"
    try:
        r = subprocess.run(["strace", "-f", "-e", "trace=connect", "-o", os.devnull, "true"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"strace failed: {e}"
    return None if r.returncode == 0 else f"strace cannot trace here ({r.stderr.strip()[:200]})"


INET_CONNECT = re.compile(r"connect\(\d+, \{sa_family=AF_INET6?\b")


@pytest.mark.parametrize("what", ["validate", "bench", pytest.param("export", marks=pytest.mark.extended)])
def test_no_inet_connection_under_strace(what, tiny_bundle, tmp_path, sandbox):
    reason = _strace()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    env, dirs = sandbox
    root = bundle_copy(tiny_bundle, tmp_path)
    cmd = {"validate": [CLI, "validate", str(root)],
           "bench": [CLI, "bench", str(root), "--tiers", "8", "--count", "3", "--warmup", "0", "--quiet"],
           # the built-in reference model, one tier, FP32: the whole export path (torch, ONNX, OpenVINO)
           "export": [CLI, "export", "--cores", "8", "--precision", "fp32", "--out", str(tmp_path / "new"), "-q"],
           }[what]
    log = tmp_path / "strace.log"
    r = run(cmd, env, timeout=300, prefix=["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log)])
    assert r.returncode == 0, r.stderr
    lines = [line for line in log.read_text().splitlines() if INET_CONNECT.search(line)]
    assert lines == [], "\n".join(lines[:5])
    assert_untouched(dirs)
