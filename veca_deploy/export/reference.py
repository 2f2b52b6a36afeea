"""PyTorch FP32 reference outputs, named like the graph outputs: the numbers every artifact of
a bundle is gated against (and that the bundle carries as its golden outputs)."""

from __future__ import annotations

import numpy as np
import torch

from .onnx_export import output_names


def torch_reference(model, images: np.ndarray, cores: int | None, chunk: int | None = None) -> dict[str, np.ndarray]:
    """``model`` at ``cores`` on float32 NCHW ``images`` (in chunks, so memory stays one batch)."""
    from ..compare.comparator import default_batch

    bs = chunk or default_batch(int(images.shape[2]), int(images.shape[3]))
    names = output_names(model)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.no_grad():
        for i in range(0, len(images), bs):
            outs = model(torch.from_numpy(np.ascontiguousarray(images[i:i + bs])),
                         cores=None if model.cfg.attention == "full" else cores)
            for n, o in zip(names, outs):
                parts[n].append(o.numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}
