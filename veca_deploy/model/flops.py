"""Analytic cost of one forward pass (multiply-add = 2 FLOPs). Pure Python: the runtime side
and benchmarks use it without torch."""

from __future__ import annotations

from typing import Any


def forward_flops(cfg: Any, height: int, width: int, cores: int | None = None) -> int:
    """FLOPs of one image at (cores, height, width). ``cfg`` is a VecaConfig or its dict."""
    g = (lambda k: cfg[k]) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
    d, p, layers = g("hidden_dim"), g("patch_size"), g("num_layers")
    hm = int(d * g("mlp_ratio"))
    full = g("attention") == "full"
    n = (height // p) * (width // p)
    c = 1 if full else (cores or g("num_query_tokens"))
    t = n + c
    flops = 2 * n * d * g("in_channels") * p * p  # patch embedding
    pairs = (t * t) if full else (2 * n * c + c * c)  # query-key pairs per layer
    per_layer = 2 * t * (4 * d * d + 3 * d * hm) + 2 * 2 * pairs * d  # linears + (QK^T, AV)
    flops += layers * per_layer
    if not full:
        flops += (layers - 1) * 2 * c * d * 2  # core-coordinate updates
    out_dim = g("distill_output_dim") or d
    if out_dim != d:
        flops += 2 * t * d * out_dim
    if g("num_classes"):
        flops += 2 * out_dim * g("num_classes")
    return int(flops)


def param_count(cfg: Any) -> int:
    g = (lambda k: cfg[k]) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
    d, p, layers = g("hidden_dim"), g("patch_size"), g("num_layers")
    hm = int(d * g("mlp_ratio"))
    n = g("in_channels") * p * p * d + d + (2 * d if g("patch_embed_use_ln") else 0)
    block = 2 * 2 * d + 4 * (d * d + d) + (d * 2 * hm + 2 * hm) + (hm * d + d)
    n += layers * block + 2 * d
    if g("attention") == "full":
        n += d + 2
    else:
        m = g("num_query_tokens")
        n += m * d + m * 2 + (layers - 1) * (2 * d + 2) + (layers - 1)
    out_dim = g("distill_output_dim") or d
    if out_dim != d:
        n += d * out_dim + out_dim
    if g("num_classes"):
        n += out_dim * g("num_classes") + g("num_classes")
    return int(n)
