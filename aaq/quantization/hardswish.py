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
where the conv after it pads) goes too. A positive ``s`` is folded into the gate's
scale. ``+ b`` costs no op either: the output quantizer's step is set so that ``b`` is
a whole number ``k`` of steps, and the product is quantized on that grid with its zero
point moved by ``k``: its integers are then exactly those of ``product + b`` on the
output's grid. A second ``QLinearAdd`` would round twice on one step instead, which
gives every element the same error (the fraction of ``b`` in steps), a bias the next
layers add up. The step only grows (a finer one would clip the range observed); a shift
whose step would grow by more than ``MAX_STEP_CHANGE`` (or that is under one step, or
moves the zero point off uint8) keeps its hard-swish float.
The only new rounding is the gate's (1/255).

The output quantizer spans ``[shift + scale * HARDSWISH_MIN, high]`` with its own zero
point (``output_grid``): hard-swish never goes below -0.375, so a symmetric grid (the
performance preset's, zero point 128) spent its lower half on values that never occur.
On 100 calibration samples this brought the full-INT8 models closer to float by output
error (PP-OCR cls 0.0057 -> 0.0006 with min/max ranges, text_recognition 0.084 -> 0.061,
PP-OCR rec 0.057 -> 0.050), and with steps half as large, more shifts are whole steps.

Measured on PP-OCRv4 rec (the text_recognition sample, 300 lines, 100 calibration
samples), character accuracy: with min/max ranges, 0.9898 with the activations in
float, 0.8953 with a second QLinearAdd for the shift, 0.9851 with the shift in the zero
point on the nearest step (0.9803-0.9932 as the allowed step change goes from 1.5 % to
10 %: which shifts qualify moves the result by that much), 0.9906 on the nearest step
that is not finer (the rule here); with percentile ranges, 0.9781 in float, 0.9889 on the
nearest step, 0.9878 on the rule here.

On PP-OCR rec (ORT 1.32, 2 threads, batch 8, interleaved rounds) 18 of its 28 hard-swishes
run in int8 (3 feed a pooling or a squeeze-excitation branch, 7 have a shift that does not
fit): the full-INT8 model ran at 0.73x ONNX Runtime's own full-INT8 model, where it was
1.09x with them all in float; character accuracy on 500 lines 0.9939 (float 0.9986, ORT's
0.9538).

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
HARDSWISH_MIN = -0.375
"""The least value of ``x * clip(x + 3, 0, 6) / 6`` (at ``x = -1.5``)."""
MAX_STEP_CHANGE = 0.05
"""How far (relative) the output quantizer's step may move to hold a shift as a whole number of steps."""


@dataclass(frozen=True)
class Int8HardSwish:
    """One hard-swish (``HardSwish``, or ``HardSigmoid(1/6, 1/2)`` then ``Mul`` by its input) ORT can run in int8.

    ``nodes`` are the nodes it replaces, in graph order: the activation, then a positive
    scalar ``Mul`` (``scale``) and a scalar ``Add`` (``shift``) after it when there are
    such. ``input`` and ``output`` are the tensors of the quantizers around it.
    ``levels`` is ``shift`` in steps of the output quantizer, set by the plan (``shift_levels``).
    """

    nodes: tuple[str, ...]
    input: str
    output: str
    scale: float = 1.0
    shift: float = 0.0
    levels: int = 0

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
        scale, shift, step = 1.0, 0.0, index.sole_reader(tensor)
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


def output_grid(unit: Int8HardSwish, high: float) -> tuple[float, int]:
    """``(scale, zero_point)`` of a uint8 grid over ``[lowest, high]``, ``lowest`` the least value the activation
    (with its scalar affine) can take: ``shift + scale * HARDSWISH_MIN``, or 0.

    A symmetric grid for a tensor that never goes below -0.375 spends its lower half on
    nothing; this one has twice the resolution. The step leaves one level of headroom, so
    the zero point rounded up still reaches ``high``."""
    lowest = min(unit.shift + HARDSWISH_MIN * unit.scale, 0.0)
    step = (high - lowest) / 254.0
    return step, int(np.ceil(-lowest / step))


def shift_levels(shift: float, scale: float, zero_point: int) -> tuple[int, float] | None:
    """``(k, step)``: the smallest output step at least ``scale`` that holds ``shift`` as ``k`` whole steps,
    or None when it would grow by more than ``MAX_STEP_CHANGE`` or the moved zero point leaves uint8.

    The step only grows: a finer one would clip the top of the range the statistics saw
    (with min / max ranges, real peaks). On the text_recognition sample (min / max ranges)
    the nearest step gave 0.9851, this one 0.9906 (module docstring)."""
    k = int(np.floor(abs(shift) / scale)) * (1 if shift > 0 else -1)
    if k == 0 or not 0 <= zero_point + k <= 255:
        return None
    step = np.float32(shift / k).item()
    return (k, step) if abs(step / scale - 1.0) <= MAX_STEP_CHANGE else None


def int8_nodes(unit: Int8HardSwish, dequantized: str, add_initializer, new_name) -> list[onnx.NodeProto]:
    """The nodes that compute ``unit`` from the DequantizeLinear output ``dequantized``, writing ``unit.output``.

    ``add_initializer(array, base) -> name`` and ``new_name(base) -> name`` come from the rewriter. With a
    shift, the product is written to a new tensor (the last node's output) for the output quantizer to read.
    """
    base, name = unit.output, unit.name
    product = unit.output if not unit.shift else new_name(f"{base}_product")
    zero = add_initializer(np.array(0, dtype=np.uint8), f"{base}_hardswish_zero")
    three_q, three = add_initializer(np.array(1, np.uint8), f"{base}_three_quantized"), new_name(f"{base}_three")
    shifted, gate_q, gate = new_name(f"{base}_plus3"), new_name(f"{base}_gate_quantized"), new_name(f"{base}_gate")
    gate_scale = add_initializer(np.array(GATE_SCALE, np.float32), f"{base}_gate_scale")
    gate_dq_scale = add_initializer(np.array(unit.scale / 255.0, np.float32), f"{base}_gate_dequantize_scale")
    return [  # 3 as an exact uint8 DequantizeLinear: QLinearAdd wants both operands quantized
        helper.make_node("DequantizeLinear", [three_q, add_initializer(np.array(3.0, np.float32),
                                                                       f"{base}_three_scale"), zero],
                         [three], name=new_name(f"{name}_three_DequantizeLinear")),
        helper.make_node("Add", [dequantized, three], [shifted], name=new_name(f"{name}_plus3")),
        helper.make_node("QuantizeLinear", [shifted, gate_scale, zero], [gate_q],
                         name=new_name(f"{name}_gate_QuantizeLinear")),
        helper.make_node("DequantizeLinear", [gate_q, gate_dq_scale, zero], [gate],
                         name=new_name(f"{name}_gate_DequantizeLinear")),
        helper.make_node("Mul", [dequantized, gate], [product], name=new_name(f"{name}_times_gate")),
    ]


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
