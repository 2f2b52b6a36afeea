"""Run Python in a subprocess where ``import torch`` fails, as on an edge device without torch
(the one blocker every torch-free test uses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision", "onnxscript")):
                raise ImportError(f"{name} is blocked: this test simulates an edge device without torch")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def run_without_torch(code: str, *args: str, cwd: str | Path | None = None,
                      timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c BLOCKER + code args...`` with the installed package (PYTHONPATH dropped)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)
