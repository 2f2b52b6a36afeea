"""Shared fixtures. Bundles are exported once per session (small models, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "veca-official-dev"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """veca_tiny (random weights, backbone only: no classifier head) at 4 tiers, 28x28, ONNX + OpenVINO FP32 + elastic."""
    import veca_deploy

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    veca_deploy.export("veca_tiny", random_weights=True, out=out, cores=[8, 16, 24, 32], image_sizes=[(28, 28)],
                       formats=["onnx", "openvino"], precisions=["fp32"], elastic=True)
    return out


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory) -> Path:
    """The built-in reference model (trained weights) at its 4 tiers, ONNX + OpenVINO FP32 + elastic."""
    import veca_deploy

    out = tmp_path_factory.mktemp("bundles") / "reference"
    veca_deploy.export(None, out=out, formats=["onnx", "openvino"], precisions=["fp32"], elastic=True)
    return out
