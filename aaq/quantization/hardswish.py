"""Hard-swish in int8: ``QLinearAdd`` + ``QLinearMul`` between two activation quantizers.

ONNX Runtime has no int8 kernel for ``HardSwish`` (nor ``HardSigmoid``): between a
quantized conv and the next one it dequantizes, runs the activation in float and
quantizes again. Written as ``x * (Clip(x + 3, 0, 6) / 6)`` it runs in int8 with no
float pass at all, and the clip and the division cost nothing:

* ``a = x + 3`` is quantized on ``[0, 6]`` (scale 6/255, zero point 0): the
  QuantizeLinear saturates exactly where the Clip would, and ORT fuses the Add into
  ``QLinearAdd``;
* the gate ``a / 6`` is the same integers dequantized with scale 1/255: no op;
* ``x * gate`` is read by the next layer's QuantizeLinear: ``QLinearMul``.

A scalar affine right after the activation (PP-LCNet's learnable ``* s + b``, kept
where the conv after it has padding) goes too: a positive ``s`` is folded into the
gate's scale, and ``+ b`` is a second ``QLinearAdd`` from a product quantized on the
output quantizer's range shifted by ``-b``. The only new rounding is the gate's
(1/255) and, with a shift, the product's.

Measured on PP-OCR rec (ORT 1.32, 2 threads, batch 8, interleaved rounds; 25 of its 28
hard-swishes qualify, the other 3 feed a pooling): the full-INT8 model ran at 0.56x ONNX
Runtime's own full-INT8 model (whose Add / Mul run in int8 but whose Div stays float),
where it was 1.09x with the activations in float; character accuracy on 500 lines 0.9941
(float model 0.9986, ORT's 0.9538). PP-OCR cls: 0.86x float, where it was 1.04x.

A hard-swish is rewritten only where both quantizers are in the model (``active``): a
reverted group removes one and the activation is float again, so every subset of
groups still gives a valid model and groups stay what ``plan.make_groups`` makes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.graph import GraphIndex

GATE_SCALE = 6.0 / 255.0
"""The quantizer of ``x + 3``: uint8 on ``[0, 6]``, zero point 0, so that it saturates where Clip(0, 6) does."""


@dataclass(frozen=True)
class Int8HardSwish:
    """One hard-swish (``HardSwish``, or ``HardSigmoid(1/6, 1/2)`` then ``Mul`` by its input) ORT can run in int8.

    ``nodes`` are the nodes it replaces, in graph order: the activation, then a scalar
    ``Mul`` (``scale``) and a scalar ``Add`` (``shift``) after it when there are such.
    ``input`` and ``output`` are the tensors of the quantizers around it. ``product``
    is the quantizer (scale, zero point) of the product before the shift, set by the
    plan from the output quantizer when ``shift`` is not 0.
    """

    nodes: tuple[str, ...]
    input: str
    output: str
    scale: float = 1.0
    shift: float = 0.0
    product: tuple[float, int] | None = None

    @property
    def name(self) -> str:
        return self.nodes[0]


def find_int8_hardswish(index: GraphIndex, quantized: Mapping[str, set[tuple[str, int]]],
                        excluded: Iterable[str] = ()) -> tuple[Int8HardSwish, ...]:
    """The hard-swishes whose input and output both have a quantizer.

    ``quantized``: tensor -> the (node, input) pairs its quantizer's DequantizeLinear
    feeds. The output's quantizer must feed every reader (ORT fuses the Mul only into
    a QuantizeLinear that is its output's sole reader). ``excluded``: activation nodes
    left float (ignored, or measured faster in float).
    """
    skip = set(excluded)
    found = []
    for node in index.graph.node:
        start = _activation(node, index)
        if start is None or node.name in skip:
            continue
        x, nodes, tensor = start
        if x in index.protected:
            continue
        reads = {(n, i) for n in nodes for i, name in enumerate(index.nodes[n].input) if name == x}
        if not reads <= quantized.get(x, set()):
            continue
        scale, shift = 1.0, 0.0
        step = index.sole_reader(tensor)
        value = _scalar_operand(step, tensor, index, "Mul")
        if value is not None and value > 0:
            scale, nodes, tensor = value, nodes + [step.name], step.output[0]
            step = index.sole_reader(tensor)
        value = _scalar_operand(step, tensor, index, "Add")
        if value is not None:
            shift, nodes, tensor = value, nodes + [step.name], step.output[0]
        readers = set(index.readers.get(tensor, []))
        if not readers or tensor in index.protected or not readers <= quantized.get(tensor, set()):
            continue
        if skip & set(nodes[1:]):
            continue
        found.append(Int8HardSwish(tuple(nodes), x, tensor, scale, shift))
    return tuple(found)


def product_quantizer(low: float, high: float, shift: float) -> tuple[float, int]:
    """uint8 (scale, zero point) of ``v - shift`` for ``v`` on the output quantizer's grid ``[low, high]``."""
    lo, hi = min(low - shift, 0.0), max(high - shift, 0.0)
    scale = np.float32(max(hi - lo, 1e-8) / 255.0).item()
    return scale, int(np.clip(np.round(-lo / scale), 0, 255))


def int8_nodes(unit: Int8HardSwish, dequantized: str, add_initializer, new_name) -> list[onnx.NodeProto]:
    """The nodes that compute ``unit`` from the DequantizeLinear output ``dequantized``, writing ``unit.output``.

    ``add_initializer(array, base) -> name`` and ``new_name(base) -> name`` come from the rewriter.
    """
    base = unit.output
    zero = add_initializer(np.array(0, dtype=np.uint8), f"{base}_hardswish_zero")
    three = _constant(3.0, base + "_hardswish_three", add_initializer, new_name)
    shifted, gate_q, gate = new_name(f"{base}_plus3"), new_name(f"{base}_gate_quantized"), new_name(f"{base}_gate")
    product = unit.output if unit.shift == 0.0 else new_name(f"{base}_product")
    nodes = three[1] + [
        helper.make_node("Add", [dequantized, three[0]], [shifted], name=new_name(f"{unit.name}_plus3")),
        helper.make_node("QuantizeLinear", [shifted, add_initializer(np.array(GATE_SCALE, np.float32),
                                                                      f"{base}_gate_scale"), zero],
                         [gate_q], name=new_name(f"{unit.name}_gate_QuantizeLinear")),
        helper.make_node("DequantizeLinear", [gate_q, add_initializer(np.array(unit.scale / 255.0, np.float32),
                                                                       f"{base}_gate_dequantize_scale"), zero],
                         [gate], name=new_name(f"{unit.name}_gate_DequantizeLinear")),
        helper.make_node("Mul", [dequantized, gate], [product], name=new_name(f"{unit.name}_times_gate")),
    ]
    if unit.shift == 0.0:
        return nodes
    if unit.product is None:
        raise ValueError(f"hard-swish {unit.name!r}: a shifted product needs its quantizer (set by the plan)")
    scale = add_initializer(np.array(unit.product[0], np.float32), f"{base}_product_scale")
    zero_point = add_initializer(np.array(unit.product[1], np.uint8), f"{base}_product_zero_point")
    product_q, product_dq = new_name(f"{base}_product_quantized"), new_name(f"{base}_product_dequantized")
    shift = _constant(unit.shift, base + "_hardswish_shift", add_initializer, new_name)
    return nodes + shift[1] + [
        helper.make_node("QuantizeLinear", [product, scale, zero_point], [product_q],
                         name=new_name(f"{unit.name}_product_QuantizeLinear")),
        helper.make_node("DequantizeLinear", [product_q, scale, zero_point], [product_dq],
                         name=new_name(f"{unit.name}_product_DequantizeLinear")),
        helper.make_node("Add", [product_dq, shift[0]], [unit.output], name=new_name(f"{unit.name}_plus_shift")),
    ]


def _constant(value: float, base: str, add_initializer, new_name) -> tuple[str, list[onnx.NodeProto]]:
    """A scalar as an exact uint8 DequantizeLinear (``QLinearAdd`` wants both operands quantized)."""
    q = add_initializer(np.array(1 if value > 0 else 0, np.uint8), f"{base}_quantized")
    scale = add_initializer(np.array(abs(value) or 1.0, np.float32), f"{base}_scale")
    zero_point = add_initializer(np.array(0 if value >= 0 else 1, np.uint8), f"{base}_zero_point")
    out = new_name(base)
    return out, [helper.make_node("DequantizeLinear", [q, scale, zero_point], [out],
                                  name=new_name(f"{base}_DequantizeLinear"))]


def _activation(node: onnx.NodeProto, index: GraphIndex) -> tuple[str, list[str], str] | None:
    """``(x, nodes, output)`` when a hard-swish of ``x`` starts at ``node``."""
    if node.domain not in ("", "ai.onnx") or not node.input:
        return None
    if node.op_type == "HardSwish":
        return node.input[0], [node.name], node.output[0]
    if node.op_type != "HardSigmoid":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if abs(float(attrs.get("alpha", 0.2)) - 1 / 6) > 1e-6 or abs(float(attrs.get("beta", 0.5)) - 0.5) > 1e-6:
        return None
    x, mul = node.input[0], index.sole_reader(node.output[0])
    if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, node.output[0]]):
        return None
    return x, [node.name, mul.name], mul.output[0]


def _scalar_operand(node: onnx.NodeProto | None, tensor: str, index: GraphIndex, op_type: str) -> float | None:
    """The finite constant ``node`` (an ``op_type`` of ``tensor`` and a one-value constant of rank <= 1) applies."""
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    if tensor not in node.input or node.input[0] == node.input[1]:
        return None
    other = node.input[1 - list(node.input).index(tensor)]
    array = index.float_constant(other)
    if array is None or array.size != 1 or array.ndim > 1 or not np.isfinite(array).all():
        return None
    return float(array.reshape(-1)[0])
