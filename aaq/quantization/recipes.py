"""INC's quantization recipes as edits of a plan: the first Conv/MatMul layer, and Concat inputs sharing one scale.

``scale_propagation_max_pooling`` needs no edit: the layout always moves a quantizer
up through MaxPool (``layers.COMMUTING_OPS``), so MaxPool reads and writes its
input's grid and gets no quantizer of its own.
"""
from __future__ import annotations

import dataclasses

from aaq.quantization.plan import ActivationQuantizer, Plan
from aaq.quantization.presets import ActivationScheme, RangeStatistic
from aaq.quantization.ranges import activation_params

FIRST_LAYER_OPS = ("Conv", "MatMul", "Gemm")


def first_conv_or_matmul(plan: Plan) -> str | None:
    """The first Conv / MatMul / Gemm node of the model in graph order, when the plan quantizes it.

    ``None`` when there is none, or when it is float already (ignored, left float for
    latency): the recipe then has nothing to change, and the next such node is not it.
    """
    first = next((n.name for n in plan.model.graph.node if n.op_type in FIRST_LAYER_OPS), None)
    return first if first in {layer.name for layer in plan.layers} else None


def share_concat_scales(plan: Plan) -> tuple[Plan, list[str]]:
    """The plan with the input quantizers of every quantized Concat on one common range; the Concats edited.

    The common range is the union of the inputs' ranges, so no input is clipped; ONNX
    Runtime then concatenates on one grid (QLinearConcat with no requantization).
    """
    quantizers = dict(plan.quantizers)
    edited = []
    for layer in plan.layers:
        if layer.layer.op_type != "Concat":
            continue
        inputs = [q for q in quantizers.values() if not q.site.output
                  and any(node == layer.name for node, _ in q.site.consumers)]
        if len(inputs) < 2 or len({(q.scale, q.zero_point) for q in inputs}) == 1:
            continue
        symmetric = all(q.symmetric for q in inputs)
        low, high = min(q.low for q in inputs), max(q.high for q in inputs)
        scheme = ActivationScheme(symmetric, RangeStatistic("min", "min"),
                                  RangeStatistic("abs_max" if symmetric else "max", "max"))
        params = activation_params(low, max(high, -low) if symmetric and low < 0 else high, scheme)
        for q in inputs:
            quantizers[q.tensor] = ActivationQuantizer(q.site, params.scale, params.zero_point, params.low,
                                                       params.high, symmetric)
        edited.append(layer.name)
    return dataclasses.replace(plan, quantizers=quantizers), edited
