"""VECA in PyTorch: core-periphery attention with 2-D RoPE and moving core coordinates.

Follows ``shared/docs/veca-architecture.md``; parameter names match the authors' checkpoints.
The same module with ``attention="full"`` is the like-for-like ViT baseline (one global token
plus the patches, all-to-all), so speed comparisons differ only in who attends to whom.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VecaConfig


def rope_inv_periods(head_dim: int, base: float, p_zero: float, zero_from: str) -> Tensor:
    """2*pi/period for each of the head_dim/4 RoPE frequencies; switched-off ones are 0."""
    n4 = head_dim // 4
    i = torch.arange(n4, dtype=torch.float32)
    periods = torch.tensor(base, dtype=torch.float32) ** (2 * i / (head_dim / 2))
    n_zero = round(p_zero * n4)  # Python's round: half to even, as the reference does
    inv = (2 * math.pi) / periods
    if n_zero:
        if zero_from == "low":
            inv[n4 - n_zero:] = 0.0  # the longest periods
        else:
            inv[:n_zero] = 0.0
    return inv


def patch_coords(hp: int, wp: int) -> Tensor:
    """(x, y) in [-1, 1] of every patch centre, row-major, shape [hp*wp, 2]."""
    ys = (torch.arange(hp, dtype=torch.float32) + 0.5) / hp * 2 - 1
    xs = (torch.arange(wp, dtype=torch.float32) + 0.5) / wp * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def rotation_matrix(head_dim: int) -> Tensor:
    """Signed permutation R with t @ R == rotate_half(t); entries 0/+-1, so the product is exact."""
    r = torch.zeros(head_dim, head_dim)
    i = torch.arange(0, head_dim, 2)
    r[i + 1, i] = -1.0
    r[i, i + 1] = 1.0
    return r


def rotate_half(t: Tensor, rot: Tensor | None = None) -> Tensor:
    """(t0, t1, t2, t3, ...) -> (-t1, t0, -t3, t2, ...): rotation of adjacent pairs.

    Computed as a product with the constant signed permutation ``rot`` (see
    :func:`rotation_matrix`) rather than unflatten/index/stack: the exported graph then has one
    small MatMul instead of Gather + Concat over a size-2 axis, which ran as a slow reference
    kernel in OpenVINO (10% of the time) and as Gather in ONNX Runtime (8%); measured 11-20%
    faster end to end at 512 px (docs/performance.md). Bit-identical: each output is one input
    times +-1.
    """
    if rot is None:
        rot = rotation_matrix(t.shape[-1]).to(t)
    return t @ rot


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VecaConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_dim, cfg.patch_size, cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.hidden_dim) if cfg.patch_embed_use_ln else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head attention with 2-D RoPE; ``cores`` > 0 selects the core-periphery pattern.

    Two forms of the same computation, told apart by the tables' layout (see :func:`graph_form`):
    eager PyTorch gets ``cos``/``sin`` ``[B|1, 1, T, hd]`` and applies RoPE per head after the head
    split; the exported graph gets ``[B|1, T, D]`` tables (tiled over the heads) and applies RoPE in
    token layout, slicing cores / patches before the heads are split, so each attention is
    Reshape -> Transpose -> SDPA with nothing between (what OpenVINO fuses).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        # a buffer, not a cached tensor: follows .to()/.half() and every tracer sees a constant
        self.register_buffer("rope_rot", rotation_matrix(dim // heads), persistent=False)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, H, T, hd]

    def _rope_tokens(self, t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """RoPE on ``t`` [B, T, D] with [B|1, T, D] tables. The pair rotation runs per head as one
        ``[B, T*H, hd] @ R`` (a reshape, not a transpose)."""
        hd = self.rope_rot.shape[0]
        rot = rotate_half(t.reshape(t.shape[0], -1, hd), self.rope_rot).reshape(t.shape)
        return t * cos + rot * sin

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cores: int | Tensor | None) -> Tensor:
        if cos.dim() == 4:  # eager: heads split first, RoPE per head with tables broadcast over the heads
            q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
            q, k = (t * cos + rotate_half(t, self.rope_rot) * sin for t in (q, k))
            heads, rows = (lambda t: t), (lambda t, r: t[:, :, r])
        else:  # the exported form: RoPE and the core/patch slices in token layout, heads split last
            q, k = (self._rope_tokens(proj(x), cos, sin) for proj in (self.q_proj, self.k_proj))
            v = self.v_proj(x)
            heads, rows = self._split, (lambda t, r: t[:, r])
        if cores is None:  # full attention (ViT baseline)
            o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=self.scale)
        else:  # cores attend to every token, patches to the cores only
            core, patch = slice(None, cores), slice(cores, None)
            o_core = F.scaled_dot_product_attention(heads(rows(q, core)), heads(k), heads(v), scale=self.scale)
            o_patch = F.scaled_dot_product_attention(heads(rows(q, patch)), heads(rows(k, core)),
                                                     heads(rows(v, core)), scale=self.scale)
            o = torch.cat([o_core, o_patch], dim=2)
        return self.out_proj(o.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block with SwiGLU MLP; weights shared by cores and patches.

    ``split_fc1`` (set by :func:`graph_form` for export): ``fc1``, the checkpoint's single
    ``Linear(D, 2*Hm)``, runs as its u and v halves, two products with the same dot products, so
    the exported graph has no split of the ``[T, 2*Hm]`` activation (OpenVINO runs that split as a
    reference kernel). Eager PyTorch keeps one product and a chunk, which is faster there.
    """

    split_fc1 = False

    def __init__(self, cfg: VecaConfig) -> None:
        super().__init__()
        d, hm = cfg.hidden_dim, cfg.mlp_hidden
        self.norm_attn = nn.LayerNorm(d)
        self.attn = Attention(d, cfg.num_heads)
        self.norm_ffn = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * hm)
        self.fc2 = nn.Linear(hm, d)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cores: int | Tensor | None) -> Tensor:
        x = x + self.attn(self.norm_attn(x), cos, sin, cores)
        h = self.norm_ffn(x)
        if self.split_fc1:
            hm, w, b = self.fc2.in_features, self.fc1.weight, self.fc1.bias
            u, v = F.linear(h, w[:hm], b[:hm]), F.linear(h, w[hm:], b[hm:])
        else:
            u, v = self.fc1(h).chunk(2, dim=-1)
        return x + self.fc2(F.silu(u) * v)


class VECA(nn.Module):
    """VECA backbone (optionally with a classification head).

    ``forward(images, cores=None)`` returns ``(global [B, D_out], patches [B, N, D_out])``, and
    ``(global, patches, logits [B, num_classes])`` when ``cfg.num_classes > 0``.
    ``cores`` is a prefix budget: a multiple of the chunk size within the bank (None = all).
    """

    def __init__(self, cfg: VecaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.hidden_dim, cfg.nested_chunk_size
        self.patch_embed = PatchEmbed(cfg)
        if cfg.attention == "core":
            n_chunks = cfg.num_query_tokens // k
            self.query_token_chunks = nn.ParameterList(
                [nn.Parameter(torch.randn(1, k, d) * 0.02) for _ in range(n_chunks)])
            self.qcoord_chunks = nn.ParameterList(
                [nn.Parameter(torch.randn(1, k, 2) * 0.5) for _ in range(n_chunks)])
            self.pos_linears = nn.ModuleList([nn.Linear(d, 2) for _ in range(cfg.num_layers - 1)])
            self.pos_alpha = nn.Parameter(torch.zeros(cfg.num_layers - 1))
        else:
            self.global_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.global_coord = nn.Parameter(torch.zeros(1, 1, 2))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.final_norm = nn.LayerNorm(d)
        self.output_proj = nn.Linear(d, cfg.output_dim) if cfg.has_output_proj else None
        self.head = nn.Linear(cfg.output_dim, cfg.num_classes) if cfg.num_classes else None
        # angle = coord @ rope_proj: x drives the first head_dim/2 lanes, y the second half.
        inv = rope_inv_periods(cfg.head_dim, cfg.rope_base, cfg.rope_p_zero_freqs, cfg.rope_zero_freqs_from)
        lanes = inv.repeat_interleave(2)
        proj = torch.zeros(2, cfg.head_dim)
        proj[0, : cfg.head_dim // 2] = lanes
        proj[1, cfg.head_dim // 2:] = lanes
        self.register_buffer("rope_proj", proj, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.cfg.attention == "core":
            for lin in self.pos_linears:
                nn.init.zeros_(lin.weight)

    # ------------------------------------------------------------------ helpers
    @property
    def config(self) -> VecaConfig:
        return self.cfg

    def core_bank(self) -> tuple[Tensor, Tensor]:
        """The whole ordered bank: tokens [1, M, D] and raw coordinates [1, M, 2]."""
        return torch.cat(list(self.query_token_chunks), 1), torch.cat(list(self.qcoord_chunks), 1)

    #: set by :func:`graph_form`: the form exported graphs take (token-layout RoPE tables)
    export_form = False

    def _rope(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin tables of ``coords`` [B|1, T, 2]: [B|1, 1, T, hd] (eager: broadcast over the
        heads) or, in the export form, [B|1, T, D] (one head's angles repeated per head)."""
        ang = coords @ self.rope_proj
        ang = ang.repeat(1, 1, self.cfg.num_heads) if self.export_form else ang.unsqueeze(1)
        return ang.cos(), ang.sin()

    def forward_tokens(self, images: Tensor, cores: int | Tensor | None) -> tuple[Tensor, int | Tensor]:
        """Final-normed (and projected) token sequence and the number of leading global tokens.

        ``cores`` has been validated (or is a traced size for the elastic export).
        """
        b = images.shape[0]
        hp, wp = images.shape[-2] // self.cfg.patch_size, images.shape[-1] // self.cfg.patch_size
        patches = self.patch_embed(images)
        pc = patch_coords(int(hp), int(wp)).to(patches.dtype).unsqueeze(0)  # constant per size
        if self.cfg.attention == "full":
            lead: int | Tensor = 1
            x = torch.cat([self.global_token.expand(b, -1, -1), patches], 1)
            coords = torch.cat([torch.tanh(self.global_coord), pc], 1)
            cos, sin = self._rope(coords)
            for blk in self.blocks:
                x = blk(x, cos, sin, None)
        else:
            lead = cores
            bank, raw_bank = self.core_bank()
            tokens, raw = bank[:, :cores], raw_bank[:, :cores]
            x = torch.cat([tokens.expand(b, -1, -1), patches], 1)
            # export form: the patches' tables depend on the input size only (constants of the
            # graph); only the cores' rows (their coordinates move per image and layer) are computed
            pcos, psin = self._rope(pc) if self.export_form else (None, None)
            for i, blk in enumerate(self.blocks):
                if i > 0:
                    raw = raw + self.pos_alpha[i - 1] * self.pos_linears[i - 1](x[:, :cores])
                core_xy = torch.tanh(raw)
                if self.export_form:
                    ccos, csin = self._rope(core_xy)
                    n = ccos.shape[0]
                    cos = torch.cat([ccos, pcos.expand(n, -1, -1)], 1)
                    sin = torch.cat([csin, psin.expand(n, -1, -1)], 1)
                else:
                    cos, sin = self._rope(torch.cat([core_xy, pc.expand(core_xy.shape[0], -1, -1)], 1))
                x = blk(x, cos, sin, cores)
        x = self.final_norm(x)
        if self.output_proj is not None:
            x = self.output_proj(x)
        return x, lead

    def forward(self, images: Tensor, cores: int | None = None) -> tuple[Tensor, ...]:
        if isinstance(cores, (Tensor, torch.SymInt)) and (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            c = cores  # a traced size (elastic export of a task model): validated by the exporter's tiers
        else:
            c = self.cfg.check_cores(cores)
        p = self.cfg.patch_size
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"images must be [B, {self.cfg.in_channels}, H, W], got {list(images.shape)}")
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"H and W must be multiples of the patch size {p}, got {list(images.shape[-2:])}")
        x, lead = self.forward_tokens(images, None if self.cfg.attention == "full" else c)
        return self.outputs_from_tokens(x, lead)

    def outputs_from_tokens(self, x: Tensor, lead: int | Tensor) -> tuple[Tensor, ...]:
        g, pt = x[:, 0], x[:, lead:]
        if self.head is None:
            return g, pt
        return g, pt, self.head(g)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@contextlib.contextmanager
def graph_form(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every VECA inside ``module`` computes in the form its exported graphs
    take (docs/export.md, "Graph form"): RoPE tables of the patches as constants and RoPE in token
    layout, fc1 as two products, and each block's LayerNorm scale and shift folded into the
    products that read it (:func:`fold_norms`). The same numbers (golden vectors and parity gates
    hold), but eager PyTorch runs the original form ~10 % faster (veca_small C=16 at 512 px: 264
    vs 289 ms), so the eager baseline of every benchmark keeps it and only the exporters switch.
    The weights are restored on leaving the block."""
    models = [m for m in module.modules() if isinstance(m, VECA)]
    blocks = [b for m in models for b in m.blocks]
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        for m in models:
            m.export_form = True
        for b in blocks:
            b.split_fc1 = True
        fold_norms(blocks, saved)
        yield module
    finally:
        with torch.no_grad():
            for t, value in reversed(saved):  # last change first: shared tensors end as they began
                t.copy_(value)
        for m in models:
            m.export_form = False
        for b in blocks:
            b.split_fc1 = False


def fold_norms(blocks: list["Block"], saved: list[tuple[Tensor, Tensor]]) -> None:
    """Fold each block's pre-norm affine into the products that read it, in place:
    ``W (n * g + s) + b == (W diag g) n + (W s + b)`` for q/k/v after ``norm_attn`` and fc1 after
    ``norm_ffn``, whose scale and shift become 1 and 0. The exported LayerNorm is then a bare
    normalisation, which OpenVINO runs as one MVN with the next product's quantize fused into it
    (veca_small C=16 at 512 px, AMX Xeon, interleaved: INT8 with bf16 floats 46.75 -> 45.93 ms,
    FP32 IR in bf16 54.81 -> 53.19; docs/performance.md). Appends (tensor, original) to ``saved``
    before each change, so a failure half-way is undone too. Computed in float32 whatever the
    model's dtype. A norm without an affine or a product without a bias is left as it is."""
    with torch.no_grad():
        for b in blocks:
            for norm, lins in ((b.norm_attn, (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj)), (b.norm_ffn, (b.fc1,))):
                if getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is None \
                        or any(lin.bias is None for lin in lins):
                    continue
                g, sh = norm.weight.detach().float(), norm.bias.detach().float()
                for t in (norm.weight, norm.bias, *(p for lin in lins for p in (lin.weight, lin.bias))):
                    saved.append((t, t.detach().clone()))
                for lin in lins:
                    w = lin.weight.detach().float()
                    lin.bias.copy_((lin.bias.detach().float() + w @ sh).to(lin.bias.dtype))
                    lin.weight.copy_((w * g[None, :]).to(lin.weight.dtype))
                norm.weight.fill_(1.0)
                norm.bias.zero_()
