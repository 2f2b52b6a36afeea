"""Products an INT8 recipe leaves in float, found in the graph itself (ONNX or OpenVINO IR).

Three kinds, each a recipe switch (``float_rotations``, ``float_input_layer``,
``float_coordinates`` on both :class:`~veca_deploy.calibration.recipe.OrtRecipe` and ``NncfRecipe``):

- **RoPE's pair rotation**: a MatMul whose constant operand is a signed permutation
  (``model.veca.rotation_matrix``). It only moves and negates values, exactly in any float
  precision; quantized, it adds a quantize pass over q and k and rounds them.
- **The input layer**: the products that read the image input (the patch embedding). Quantizing
  raw normalised pixels was the largest INT8 error in the graph, for one layer of 3 channels.
- **Coordinate products**: a product whose constant operand has a side of at most
  :data:`COORD_WIDTH`. In VECA these map positions: RoPE's angle projection (2 coordinates in)
  and each layer's core-position update (2 coordinates out). Quantized, they round every core's
  position and so every RoPE angle, for products of a few hundred multiply-adds. NNCF's
  quantizer on the angle product also broke OpenVINO's f16 execution of the INT8 IR (a Concat of
  f32 and f16 inputs: the graph would not load under ``INFERENCE_PRECISION_HINT=f16``). Any
  product this narrow (a head of up to 4 classes too) gains nothing from INT8 kernels.

Measured on veca_small C=16 at 512 px, Intel Xeon with AMX, 2026-12-07 (docs/quantization.md):
output cosine vs FP32 up (OpenVINO 0.99841 -> 0.99971; ONNX U8S8 0.99602 -> 0.99833, S8S8
0.99868 -> 0.99926) and 2-4 % faster on every INT8 path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtimes.base import IMAGES

#: ops that only reshape, reorder or convert: looked through when following an input upstream
_PASS_THROUGH = ("Convert", "Reshape", "Transpose", "Cast")
#: bumped when what is kept in float changes, so cached INT8 graphs of the old rule are rebuilt
REVISION = 2
#: the widest side of a constant operand that makes a product a coordinate product
COORD_WIDTH = 4


def signed_permutation(a: np.ndarray) -> bool:
    """Whether ``a`` is a square matrix of 0 and +-1 with one non-zero per row and column."""
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.isin(a, (-1, 0, 1)).all():
        return False
    nz = a != 0
    return bool((nz.sum(0) == 1).all() and (nz.sum(1) == 1).all())


def coordinate_product(a: np.ndarray) -> bool:
    """Whether a constant operand of shape ``a.shape`` maps a few coordinates (a side <= COORD_WIDTH)."""
    return a.ndim == 2 and min(a.shape) <= COORD_WIDTH


def ov_source(op: Any, port: int) -> Any:
    """The node that really feeds ``op``'s input ``port``, through reshapes and converts."""
    src = op.input_value(port).get_node()
    while src.get_type_name() in _PASS_THROUGH:
        src = src.input_value(0).get_node()
    return src


def openvino_float_ops(model: Any, rotations: bool = True, input_layer: bool = True,
                       coordinates: bool = True) -> list[str]:
    """Friendly names of the ops of an OpenVINO model to leave in float (NNCF ``IgnoredScope``)."""
    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if (rotations or coordinates) and kind == "MatMul":
            w = ov_source(op, 1)  # an f16-compressed constant reads through a Convert
            if w.get_type_name() == "Constant":
                a = np.asarray(w.get_data())
                if (rotations and signed_permutation(a)) or (coordinates and coordinate_product(a)):
                    names.append(op.get_friendly_name())
                    continue
        if input_layer and kind in ("Convolution", "MatMul"):
            src = ov_source(op, 0)
            if src.get_type_name() == "Parameter" and IMAGES in src.output(0).get_names():
                names.append(op.get_friendly_name())
    return names


def onnx_float_nodes(model: Any, rotations: bool = True, input_layer: bool = True,
                     coordinates: bool = True) -> list[str]:
    """Names of the nodes of an ONNX model to leave in float (ORT ``nodes_to_exclude``)."""
    from onnx import numpy_helper

    # an initializer stored outside the file is not read (bundles keep their weights inline)
    consts = {i.name: i for i in model.graph.initializer if i.data_location != i.EXTERNAL}
    consts.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    producer = {o: n for n in model.graph.node for o in n.output}
    names = []
    for n in model.graph.node:
        if not n.name:  # ORT matches names: an empty one would exclude every unnamed node
            continue
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in consts:
            a = numpy_helper.to_array(consts[n.input[1]])
            if (rotations and n.op_type == "MatMul" and signed_permutation(a)) or (
                    coordinates and coordinate_product(a)):
                names.append(n.name)
                continue
        if input_layer and n.op_type in ("Conv", "MatMul", "Gemm"):
            src = n.input[0]
            while src in producer and producer[src].op_type in _PASS_THROUGH:
                src = producer[src].input[0]
            if src == IMAGES:
                names.append(n.name)
    return names
