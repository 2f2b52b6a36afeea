"""The runtime path must work on an edge device without torch: every module outside the torch
side imports, Runtime.open + predict, and the bench/select CLI, each in a subprocess where
``import torch`` fails. scripts/ci_device.sh runs the same commands in a venv without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .torchless import run_without_torch

@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notorch") / "b"
    shutil.copytree(tiny_bundle, root)
    return root


def _run(code: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return run_without_torch(code, *args, cwd=tmp)


# The torch side of the package: only these may need torch (and the export extra's packages).
TORCH_SIDE = ("veca_deploy.model", "veca_deploy.export")
# What only the export extra installs (a device venv from ".[device]" has none of it), plus torchvision.
EXPORT_ONLY = ("torch", "torchvision", "onnxscript", "onnxslim", "onnxsim", "safetensors")

WALK = """
    import importlib, json, pkgutil, sys, traceback

    blocked = sys.argv[1].split(",")
    for name in blocked:
        sys.modules[name] = None  # `import name` now raises ImportError, like on a device without it
    side = tuple(sys.argv[2].split(","))

    def torch_side(name):
        return any(name == s or name.startswith(s + ".") for s in side)

    import veca_deploy

    # pkgutil.walk_packages would import each package to recurse into it, the torch side too:
    # the same walk, that never imports a torch-side package
    def walk(path, prefix):
        for info in pkgutil.iter_modules(path, prefix):
            if torch_side(info.name):
                continue
            yield info.name
            if info.ispkg:
                mod = importlib.import_module(info.name)
                yield from walk(mod.__path__, info.name + ".")

    names, failed = ["veca_deploy"], {}
    try:
        for name in walk(veca_deploy.__path__, "veca_deploy."):
            names.append(name)
            try:
                importlib.import_module(name)
            except BaseException as e:  # noqa: BLE001 - report every module, whatever it raised
                tb = traceback.extract_tb(e.__traceback__)
                where = next((f"{f.filename}:{f.lineno}" for f in reversed(tb) if "importlib" not in f.filename), "?")
                failed[name] = f"{type(e).__name__}: {e} (at {where})"
    except BaseException as e:  # noqa: BLE001 - a package whose import fails stops the walk below it
        failed["<walk>"] = f"{type(e).__name__}: {e}"
    loaded_side = sorted(m for m in sys.modules if torch_side(m) and sys.modules[m] is not None)
    print("RESULT", json.dumps({"names": names, "failed": failed, "loaded_side": loaded_side}))
"""


def _walk_without(blocked: tuple[str, ...], tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(WALK), ",".join(blocked), ",".join(TORCH_SIDE)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_every_device_module_imports_without_torch(tmp_path):
    """Every module of the package outside the torch side imports with torch (and the rest of the
    export extra) unimportable; the failure lists each module that needs them."""
    r = _walk_without(EXPORT_ONLY, tmp_path)
    assert not r["failed"], "modules outside the torch side that need torch or the export extra:\n" + "\n".join(
        f"  {name}: {why}" for name, why in sorted(r["failed"].items()))
    # the walk really covered the package (a broken walk must not pass as "nothing failed")
    for name in ("veca_deploy.cli", "veca_deploy.runtimes.onnxrt", "veca_deploy.calibration.onnx_quant",
                 "veca_deploy.commands.quantize"):
        assert name in r["names"], f"{name} was not walked"
    assert not any(n.startswith(TORCH_SIDE) for n in r["names"])


def test_module_block_is_real(tmp_path):
    """``sys.modules[name] = None`` really blocks: the torch side fails to import under it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import veca_deploy.model.veca"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode != 0 and "torch" in res.stderr


def test_blocker_really_blocks(tmp_path):
    res = _run("import torch", tmp_path)
    assert res.returncode != 0 and "blocked" in res.stderr


def test_runtime_path_without_torch(bundle, tmp_path):
    code = """
        import json, sys
        import numpy as np
        import veca_deploy, veca_deploy.bundle, veca_deploy.runtimes, veca_deploy.selector
        import veca_deploy.runtimes.timing, veca_deploy.runtimes.fingerprint, veca_deploy.preprocess
        from veca_deploy.cli import main

        root = sys.argv[1]
        b = veca_deploy.Bundle.open(root)
        with veca_deploy.Runtime.open(root, budget_ms=1000, backend="onnxruntime", tiers=[8], count=3,
                                      warmup=1, adaptive=True, window=2) as rt:
            p = rt.predict(np.zeros((40, 30, 3), np.uint8))
            tier = rt.tier.cores
        rc_bench = main(["bench", root, "--backend", "onnxruntime", "--tiers", "16", "--count", "3",
                         "--warmup", "1", "--quiet"])
        rc_select = main(["select", root, "--budget-ms", "1000", "--backend", "onnxruntime", "--tiers", "8,16",
                          "--json"])
        rc_budget = main(["select", root, "--budget-ms", "0.0001", "--backend", "onnxruntime", "--tiers", "8"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxscript"))
        print("RESULT", json.dumps({"tier": tier, "shape": list(p["global"].shape), "bench": rc_bench,
                                    "select": rc_select, "budget": rc_budget, "heavy": heavy}))
    """
    res = _run(code, tmp_path, str(bundle))
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    assert r == {"tier": 8, "shape": [1, r["shape"][1]], "bench": 0, "select": 0, "budget": 8, "heavy": []}


def test_cli_entry_point_without_torch(bundle, tmp_path):
    """The installed ``veca-deploy`` script with a torch package on the path that cannot import."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch on this device')\n")
    exe = Path(sys.executable).with_name("veca-deploy")
    if not exe.exists():
        pytest.skip("veca-deploy console script not installed next to this python")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    res = subprocess.run([str(exe), "select", str(bundle), "--budget-ms", "1000", "--backend", "onnxruntime",
                          "--tiers", "8", "--count", "3", "--json"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["chosen"]["cores"] == 8
