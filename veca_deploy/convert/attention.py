"""Rewrite exported attention into ONNX Runtime's fused CPU kernel (``com.microsoft.MultiHeadAttention``).

The TorchScript exporter lowers ``F.scaled_dot_product_attention`` to
``Reshape -> Transpose -> Mul(scale) -> MatMul -> Softmax -> MatMul -> Transpose``, which ONNX Runtime
runs op by op: the ``[heads, queries, keys]`` score matrix goes through memory (400 MB per layer for
the ViT at 1024 px). Its CPU ``MultiHeadAttention`` runs MLAS flash attention instead (tiles sized
to the L2 cache; no score matrix in memory). ONNX Runtime's own fusions (level "all", and
``onnxruntime.transformers``' optimizer) do not match this graph: RoPE sits between the
projections and the head split. OpenVINO needs none of this: it fuses the exported pattern (and
this one, and opset-23 ``Attention``) into its Snippets MHA subgraph.

The rewrite is exact up to float rounding (same scale, same heads); callers compare outputs.
Used by ``benchmarks/scaling.py`` to give the ViT baseline its fastest ONNX Runtime form; ``export``
does not apply it (VECA's attention gains ~3 % from it at 512 px, docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MS_DOMAIN = "com.microsoft"
_SPLIT = [0, 2, 1, 3]  # [B, T, H, hd] <-> [B, H, T, hd]


class _Graph:
    """Producer / consumer / constant look-ups over one ``GraphProto``."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def node(self, name: str, op_type: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def scalar(self, name: str) -> float | None:
        v = self.consts.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _attr(node, name: str, default=None):
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _unscale(g: _Graph, name: str) -> tuple[str, float]:
    """Step over a ``Mul``/``Div`` by a scalar constant: (its other input, the factor it applies)."""
    n = g.producer.get(name)
    if n is not None and n.op_type in ("Mul", "Div"):
        for i, j in ((0, 1), (1, 0)) if n.op_type == "Mul" else ((0, 1),):
            c = g.scalar(n.input[j])
            if c is not None:
                return n.input[i], (c if n.op_type == "Mul" else 1.0 / c)
    return name, 1.0


def _heads_input(g: _Graph, name: str, perms: tuple[list[int], ...]) -> str | None:
    """The ``[B, T, D]`` tensor behind ``Reshape -> Transpose(perms[0]) [-> Transpose(perms[1])]``."""
    for perm in reversed(perms):
        t = g.node(name, "Transpose")
        if t is None or list(_attr(t, "perm", [])) != perm:
            return None
        name = t.input[0]
    r = g.node(name, "Reshape")
    return r.input[0] if r is not None else None


def _key_input(g: _Graph, name: str) -> str | None:
    """K enters as ``[B, H, hd, T]``: one Transpose(0,2,3,1), or (0,2,1,3) then (0,1,3,2)."""
    return _heads_input(g, name, ([0, 2, 3, 1],)) or _heads_input(g, name, (_SPLIT, [0, 1, 3, 2]))


def _match(g: _Graph, softmax):
    """(q, k, v, scale, nodes to drop) of one exported attention around ``softmax``, else None."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    users = g.consumers.get(softmax.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        return None
    av = users[0]
    scores, s_scale = _unscale(g, softmax.input[0])
    qk = g.node(scores, "MatMul")
    if qk is None:
        return None
    q_name, q_scale = _unscale(g, qk.input[0])
    k_name, k_scale = _unscale(g, qk.input[1])
    q, k, v = _heads_input(g, q_name, (_SPLIT,)), _key_input(g, k_name), _heads_input(g, av.input[1], (_SPLIT,))
    if None in (q, k, v):
        return None
    drop = [av, softmax, qk] + ([g.producer[softmax.input[0]]] if scores != softmax.input[0] else [])
    return q, k, v, s_scale * q_scale * k_scale, drop


def fuse_mha(model, num_heads: int) -> int:
    """Replace every exported attention in ``model`` (an ``onnx.ModelProto``, in place) by
    ``MultiHeadAttention`` on the ``[B, T, D]`` q/k/v; the result is re-split into heads so every
    consumer is unchanged (ONNX Runtime cancels the transposes). Returns how many were fused."""
    from onnx import helper, numpy_helper

    graph = model.graph
    g = _Graph(graph)
    shape = f"mha_heads_shape_{num_heads}"
    fused = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        m = _match(g, softmax)
        if m is None:
            continue
        q, k, v, scale, drop = m
        out = drop[0].output[0]
        new = [helper.make_node("MultiHeadAttention", [q, k, v], [f"{out}_mha"], domain=MS_DOMAIN,
                                num_heads=num_heads, scale=float(scale), name=f"{out}_MultiHeadAttention"),
               helper.make_node("Reshape", [f"{out}_mha", shape], [f"{out}_bthd"]),
               helper.make_node("Transpose", [f"{out}_bthd"], [out], perm=_SPLIT)]
        nodes = list(graph.node)
        at = [nodes.index(n) for n in drop]
        pos = at[0] - sum(i < at[0] for i in at[1:])  # where the AV MatMul was, once the rest is gone
        for n in drop:
            graph.node.remove(n)
        for i, n in enumerate(new):
            graph.node.insert(pos + i, n)
        fused += 1
    if fused:
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, num_heads, -1], np.int64), shape))
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        _drop_dead(graph)
    return fused


def _drop_dead(graph) -> None:
    """Remove nodes none of whose outputs is used (the head splits and scales fused away)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def fuse_mha_file(path: str | os.PathLike, num_heads: int) -> int:
    """:func:`fuse_mha` on an ONNX file, rewritten in place (via a temporary file) when anything fused."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    n = fuse_mha(model, num_heads)
    if n:
        tmp = path.with_name(f".{path.name}.tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    return n
