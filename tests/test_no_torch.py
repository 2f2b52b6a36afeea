"""The runtime path must work on an edge device without torch: package imports, Runtime.open +
predict, and the bench/select CLI, each in a subprocess where ``import torch`` fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKER = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision", "onnxscript")):
                raise ImportError(f"{name} is blocked: this test simulates an edge device without torch")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notorch") / "b"
    shutil.copytree(tiny_bundle, root)
    return root


def _run(code: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp)


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
