"""The ONNX Runtime attention rewrite (veca_deploy.convert.attention): every exported attention of
the ViT baseline (full) and of VECA (core rows + patch rows) becomes one MultiHeadAttention, and the
graph computes the same outputs in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veca_deploy.convert.attention import fuse_mha_file
from veca_deploy.convert.onnx_graph import op_histogram, simplify_onnx
from veca_deploy.export.onnx_export import export_onnx
from veca_deploy.model.registry import create_model, latency_weights
from veca_deploy.runtimes import create_runner


@pytest.mark.parametrize("name,cores,per_layer", [("vit_tiny", None, 1), ("veca_tiny", 8, 2)])
@pytest.mark.parametrize("simplify", ["none", "onnxslim"])
def test_fuse_mha_matches_the_exported_graph(tmp_path, name, cores, per_layer, simplify):
    torch.manual_seed(0)
    model = latency_weights(create_model(name)).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, height=28, width=42, cores=cores)  # non-square: T differs from D and H
    simplify_onnx(path, simplify)
    x = np.random.default_rng(0).standard_normal((2, 3, 28, 42)).astype(np.float32)
    ref = create_runner("onnxruntime", path).activate().infer({"images": x})
    n = model.cfg.num_layers * per_layer
    assert fuse_mha_file(path, model.cfg.num_heads) == n
    hist = op_histogram(path)
    assert hist.get("MultiHeadAttention") == n and "Softmax" not in hist
    out = create_runner("onnxruntime", path).activate().infer({"images": x})
    for k, v in ref.items():
        np.testing.assert_allclose(out[k], v, atol=1e-5, rtol=1e-4)
    assert fuse_mha_file(path, model.cfg.num_heads) == 0  # nothing left to fuse; the file is untouched
