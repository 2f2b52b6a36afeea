"""Read-only bundles (field reliability): a bundle on a read-only mount (or a folder the service
user cannot write) still gets ``bench`` and ``select``; the profile goes to the cache,
``<cache root>/profiles/<sha256 of manifest.json>/<device>.json`` (cache root: $VECA_CACHE_DIR,
else $XDG_CACHE_HOME/veca-deploy, else ~/.cache/veca-deploy), the commands say where, and
``Runtime.open`` on the same read-only bundle finds it without measuring again.

Read-only for real: as root (which file permissions do not stop) the commands run in a private
mount namespace where the bundle is a read-only bind mount (``unshare -m`` + ``mount -o
remount,ro,bind``); as another user the bundle is ``chmod -R a-w``. Where neither works the test
is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from veca_deploy.bundle.reader import Bundle
from veca_deploy.cli import main
from veca_deploy.selector.profile import (Profile, cached_profile_path, load_profile, profile_path, save_profile,
                                          write_profile)

BIN = Path(sys.executable).parent
CLI = str(BIN / "veca-deploy")

RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'


def snapshot(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def chmod_tree(root: Path, writable: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = Path(dirpath) / name
            mode = p.stat().st_mode
            bits = stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
            os.chmod(p, (mode | bits) if writable else bits)


@pytest.fixture
def ro_bundle(tiny_bundle, tmp_path):
    """(bundle, prefix): a copy of the tiny bundle without profiles, chmod -R a-w, and the command
    prefix that makes it really read-only for the commands run through it."""
    root = shutil.copytree(tiny_bundle, tmp_path / "ro" / "b")
    shutil.rmtree(root / "profiles", ignore_errors=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            pytest.skip("running as root and unshare/mount are missing: no way to make a folder read-only for root")
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", RO_MOUNT, str(root),
                                "sh", "-c", f'! touch "{root}/probe" 2>/dev/null'], capture_output=True, text=True)
        if probe.returncode != 0 or (root / "probe").exists():
            pytest.skip(f"running as root and a read-only bind mount is not permitted here ({probe.stderr.strip()})")
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", RO_MOUNT, str(root)]
    chmod_tree(root, writable=False)
    yield root, prefix
    chmod_tree(root, writable=True)


def run(cmd: list[str], env: dict[str, str], prefix: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *cmd], env=env, capture_output=True, text=True, timeout=180)


OPEN = textwrap.dedent("""
    import sys
    import numpy as np
    import veca_deploy
    # measure=False: without a profile for this device this raises BudgetError instead of measuring
    with veca_deploy.Runtime.open(sys.argv[1], budget_ms=1000, tiers=[8], measure=False) as rt:
        assert rt.predict(np.zeros((28, 28, 3), np.uint8))["global"].shape[0] == 1
        print("profiled" if rt.selection.profiled else "from-profile", rt.selection.chosen.cand.key)
""")


def test_bench_select_and_runtime_on_a_read_only_bundle(ro_bundle, tmp_path):
    root, prefix = ro_bundle
    xdg = tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if k not in ("VECA_CACHE_DIR", "VECA_DEBUG")}
    env["XDG_CACHE_HOME"] = str(xdg)
    before = snapshot(root.parent)
    key = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    cache = xdg / "veca-deploy" / "profiles" / key

    # select with no profile anywhere: measures, saves into the cache, says where
    r = run([CLI, "select", str(root), "--budget-ms", "1000", "--tiers", "8", "--count", "3", "--json"], env, prefix)
    assert r.returncode == 0, r.stderr
    saved = Path(json.loads(r.stdout)["profile"])
    assert saved.parent == cache and saved.is_file(), (saved, cache)
    assert "read-only" in r.stderr and str(saved) in r.stderr.replace("\n", ""), r.stderr
    first = json.loads(saved.read_text())
    assert first["entries"], first

    # bench: measures again (the same tier), merges into the cached profile, says where
    r = run([CLI, "bench", str(root), "--tiers", "8", "--count", "3", "--warmup", "0", "--quiet", "--json"], env, prefix)
    assert r.returncode == 0, r.stderr
    assert Path(json.loads(r.stdout)["profile"]) == saved
    assert "read-only" in r.stderr and str(saved) in r.stderr.replace("\n", ""), r.stderr
    assert json.loads(saved.read_text())["updated"] >= first["updated"]

    # Runtime.open on the same read-only bundle finds it (measure=False would refuse otherwise)
    r = run([sys.executable, "-c", OPEN, str(root)], env, prefix)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("from-profile"), r.stdout

    # bench --out FILE: the profile goes exactly there
    out = tmp_path / "exported" / "profile.json"
    r = run([CLI, "bench", str(root), "--tiers", "8", "--count", "3", "--warmup", "0", "--quiet", "--out", str(out)],
            env, prefix)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["schema"] == 1 and d["entries"] and all(e["cores"] == 8 for e in d["entries"].values())
    assert f"profile: {out}" in r.stdout.replace("\n", ""), r.stdout

    assert snapshot(root.parent) == before  # nothing in or beside the bundle changed


def test_profile_cache_location_and_merge(tiny_bundle, tmp_path, monkeypatch, capsys):
    """In-process: $VECA_CACHE_DIR wins over XDG; load_profile merges the bundle's and the cached
    profile entry by entry (the newer measurement wins); a corrupt cached copy is ignored;
    bench --out refuses a path inside the bundle."""
    root = shutil.copytree(tiny_bundle, tmp_path / "b")
    shutil.rmtree(root / "profiles", ignore_errors=True)
    b = Bundle.open(root)
    key = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VECA_CACHE_DIR", raising=False)
    assert cached_profile_path(b, "dev") == tmp_path / "xdg" / "veca-deploy" / "profiles" / key / "dev.json"
    monkeypatch.setenv("VECA_CACHE_DIR", str(tmp_path / "cache"))
    cpath = cached_profile_path(b, "dev")
    assert cpath == tmp_path / "cache" / "profiles" / key / "dev.json"

    def entry(when, tag):
        return {"measured": when, "tag": tag}

    save_profile(b, Profile("dev", {}, {"a": entry("2026-01-02", "bundle"), "b": entry("2026-01-01", "bundle")}))
    assert profile_path(root, "dev").is_file() and not cpath.exists()  # writable: the bundle's own file
    write_profile(cpath, Profile("dev", {}, {"a": entry("2026-01-01", "cache"), "b": entry("2026-01-03", "cache"),
                                             "c": entry("2026-01-01", "cache")}))
    merged = load_profile(b, "dev")
    assert {k: e["tag"] for k, e in merged.entries.items()} == {"a": "bundle", "b": "cache", "c": "cache"}
    cpath.write_text("{ not json")
    assert set(load_profile(b, "dev").entries) == {"a", "b"}

    capsys.readouterr()
    assert main(["bench", str(root), "--out", str(root / "p.json")]) == 2
    assert "inside the bundle" in capsys.readouterr().err
