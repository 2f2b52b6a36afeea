"""A second, deliberately naive VECA written straight from shared/docs/veca-architecture.md.

Masked full attention instead of split attention, explicit index-based rotate_half, periods as
``base ** (...)`` divided as in the text. Used to check configurations the golden vectors do not
cover (splus MLP ratio, output projection, patch-embedding LayerNorm, 'high' zero frequencies).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_forward(sd: dict, cfg: dict, images: torch.Tensor, cores: int):
    d, heads, layers, p = cfg["hidden_dim"], cfg["num_heads"], cfg["num_layers"], cfg["patch_size"]
    hd = d // heads
    b, _, h, w = images.shape
    hp, wp = h // p, w // p
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    if cfg.get("patch_embed_use_ln"):
        x = F.layer_norm(x, (d,), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
    k = cfg["nested_chunk_size"]
    bank = torch.cat([sd[f"query_token_chunks.{i}"] for i in range(cfg["num_query_tokens"] // k)], 1)
    raw = torch.cat([sd[f"qcoord_chunks.{i}"] for i in range(cfg["num_query_tokens"] // k)], 1)[:, :cores]
    raw = raw.expand(b, -1, -1)
    pcoords = []
    for row in range(hp):
        for col in range(wp):
            pcoords.append([(col + 0.5) / wp * 2 - 1, (row + 0.5) / hp * 2 - 1])
    pcoords = torch.tensor(pcoords, dtype=torch.float32).expand(b, -1, -1)
    n4 = hd // 4
    periods = [100.0 ** (2 * i / (hd / 2)) for i in range(n4)]
    nz = round(cfg.get("rope_p_zero_freqs", 0.125) * n4)
    if nz:
        idx = range(n4 - nz, n4) if cfg.get("rope_zero_freqs_from", "low") == "low" else range(nz)
        for i in idx:
            periods[i] = math.inf
    per = torch.tensor(periods, dtype=torch.float32)
    seq = torch.cat([bank[:, :cores].expand(b, -1, -1), x], 1)
    t = seq.shape[1]
    mask = torch.zeros(t, t, dtype=torch.bool)
    mask[:cores, :] = True
    mask[cores:, :cores] = True
    for l in range(layers):
        if l > 0:
            raw = raw + sd["pos_alpha"][l - 1] * F.linear(seq[:, :cores], sd[f"pos_linears.{l - 1}.weight"],
                                                         sd[f"pos_linears.{l - 1}.bias"])
        coords = torch.cat([torch.tanh(raw), pcoords], 1)
        ax = 2 * math.pi * coords[..., :1] / per
        ay = 2 * math.pi * coords[..., 1:] / per
        ang = torch.cat([ax.repeat_interleave(2, -1), ay.repeat_interleave(2, -1)], -1)[:, None]
        pre = f"blocks.{l}."
        hN = F.layer_norm(seq, (d,), sd[pre + "norm_attn.weight"], sd[pre + "norm_attn.bias"])
        q, kk, v = (F.linear(hN, sd[pre + f"attn.{n}_proj.weight"], sd[pre + f"attn.{n}_proj.bias"])
                    .view(b, t, heads, hd).transpose(1, 2) for n in "qkv")

        def rope(u):
            rot = torch.empty_like(u)
            rot[..., 0::2] = -u[..., 1::2]
            rot[..., 1::2] = u[..., 0::2]
            return u * ang.cos() + rot * ang.sin()

        q, kk = rope(q), rope(kk)
        s = (q @ kk.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        seq = seq + F.linear(o, sd[pre + "attn.out_proj.weight"], sd[pre + "attn.out_proj.bias"])
        hN = F.layer_norm(seq, (d,), sd[pre + "norm_ffn.weight"], sd[pre + "norm_ffn.bias"])
        u, gate = F.linear(hN, sd[pre + "fc1.weight"], sd[pre + "fc1.bias"]).chunk(2, -1)
        seq = seq + F.linear(F.silu(u) * gate, sd[pre + "fc2.weight"], sd[pre + "fc2.bias"])
    seq = F.layer_norm(seq, (d,), sd["final_norm.weight"], sd["final_norm.bias"])
    if "output_proj.weight" in sd:
        seq = F.linear(seq, sd["output_proj.weight"], sd["output_proj.bias"])
    return seq[:, 0], seq[:, cores:]
