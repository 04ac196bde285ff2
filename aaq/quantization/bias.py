"""Bias correction: cancel the shift quantization puts on the mean of each output channel.

Rounding weights moves ``E[y_c] = sum W[c,:] E[x] + b_c`` by ``sum (Wq - W)[c,:] E[x]``,
which is systematic, not noise: it adds up layer after layer. Both variants
estimate that shift per output channel from float inputs and subtract it from the
bias; the plan keeps the original bias, so reverting a layer restores it.

* fast (``use_fast_bias``, POT's FastBiasCorrection done in closed form): the
  per-channel mean of the layer's float input, from the one statistics pass, times
  ``Wq - W``. Weight rounding only; padding borders are ignored.
* measured: one extra statistics pass over ``bias_twin(plan)``, a copy of the float
  model where every layer has a twin that reads the same float input through the
  layer's activation quantizer and quantized weight, without bias. The shift is the
  difference of the twins' per-channel output means, so it covers input rounding and
  borders too, and each layer is measured on float inputs (errors of earlier layers
  are not corrected twice). The algorithm runs that pass (nothing here infers).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from aaq.quantization.graph import GraphIndex
from aaq.quantization.layers import COMMUTING_OPS, Layer, Layout
from aaq.quantization.plan import BiasCorrection, LayerPlan, Plan
from aaq.statistics.requests import StatisticRequest

logger = logging.getLogger(__name__)

_FAST_OPS = {"Conv", "Gemm", "MatMul"}
_TWIN = "__aaq_bias_twin"


def correctable(layers: Iterable[Layer], index: GraphIndex, fast: bool) -> list[Layer]:
    """The layers a bias correction can edit: a weight and a bias slot (or room for one)."""
    out = []
    for layer in layers:
        if layer.weight is None or layer.bias is None:
            continue
        rank = len(index.initializers[layer.weight].dims)
        if fast and (layer.op_type not in _FAST_OPS or (layer.op_type == "MatMul" and rank != 2)):
            continue
        out.append(layer)
    return out


def fast_requests(layout: Layout, model: onnx.ModelProto) -> list[StatisticRequest]:
    """Per-channel means of the float inputs of the layers the fast correction edits."""
    index = GraphIndex(model.graph)
    return [_input_mean(layer, index) for layer in correctable(layout.layers, index, fast=True)]


def _input_mean(layer: Layer, index: GraphIndex) -> StatisticRequest:
    tensor = index.nodes[layer.name].input[layer.inputs[0]]
    return StatisticRequest(tensor, "mean", "mean", axis=1 if layer.op_type == "Conv" else -1)


def fast_corrections(plan: Plan, statistics: Mapping[StatisticRequest, np.ndarray]) -> Plan:
    """The plan with every correctable layer's bias shifted by ``(Wq - W) . E[x]``."""
    index = GraphIndex(plan.model.graph)
    edited = []
    for spec in correctable((layer.layer for layer in plan.layers), index, fast=True):
        layer = plan.layer(spec.name)
        mean = np.asarray(statistics[_input_mean(layer.layer, index)], dtype=np.float64)
        weight = index.initializer_array(layer.layer.weight).astype(np.float64)
        delta = layer.weight.dequantize().astype(np.float64) - weight
        shift = _shift(layer.layer, index.nodes[layer.name], delta, mean)
        if shift is not None:
            edited.append(_corrected(layer, index, shift))
    return plan.with_layers(edited)


def _shift(layer: Layer, node: onnx.NodeProto, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``(Wq - W) . E[x]`` per output channel, in the units of the layer's output."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if layer.op_type == "Conv":
        groups = int(attrs.get("group", 1))
        out_ch, in_per_group = delta.shape[0], delta.shape[1]
        if mean.shape != (groups * in_per_group,):
            return None
        per_input = delta.reshape(out_ch, in_per_group, -1).sum(axis=2)
        group_of = np.arange(out_ch) // (out_ch // groups)
        return (per_input * mean.reshape(groups, in_per_group)[group_of]).sum(axis=1)
    if layer.op_type == "Gemm":
        matrix = delta if attrs.get("transB", 0) else delta.T
        return float(attrs.get("alpha", 1.0)) * matrix @ mean if matrix.shape[1] == mean.size else None
    return mean @ delta if delta.shape[0] == mean.size else None


def _corrected(layer: LayerPlan, index: GraphIndex, shift: np.ndarray) -> LayerPlan:
    slot = layer.layer.bias
    original = None if slot.initializer is None else index.initializer_array(slot.initializer).astype(np.float32)
    base = np.zeros(shift.shape, np.float64) if original is None else original.astype(np.float64)
    corrected = (base - shift / slot.beta).astype(np.float32)
    return LayerPlan(layer.layer, layer.weight, layer.quantizers, BiasCorrection(slot, original, corrected))


@dataclass(frozen=True, eq=False)
class BiasTwin:
    """The float model with a bias-free quantized twin of each correctable layer, and what to measure on it."""

    model: onnx.ModelProto
    layers: tuple[LayerPlan, ...]
    pairs: dict[str, tuple[StatisticRequest, StatisticRequest]]
    """Layer name -> (mean of its float output, mean of its twin's output)."""

    @property
    def requests(self) -> tuple[StatisticRequest, ...]:
        return tuple(r for pair in self.pairs.values() for r in pair)


def bias_twin(plan: Plan) -> BiasTwin | None:
    """The twin model of ``plan`` (``None`` when no layer can be corrected)."""
    index = GraphIndex(plan.model.graph)
    layers = [plan.layer(spec.name) for spec in correctable((l.layer for l in plan.layers), index, fast=False)]
    if not layers:
        return None
    model, pairs = _twin_model(plan, layers)
    return BiasTwin(model, tuple(layers), pairs)


def measured_corrections(plan: Plan, twin: BiasTwin, stats: Mapping[StatisticRequest, np.ndarray]) -> Plan:
    """The plan with biases shifted by the measured float-vs-quantized output mean of each layer."""
    index = GraphIndex(plan.model.graph)
    edited = []
    for layer in twin.layers:
        float_request, twin_request = twin.pairs[layer.name]
        float_mean, twin_mean = stats[float_request], stats[twin_request]
        own_bias = _own_bias_term(layer, index)
        if float_mean.shape != twin_mean.shape or (own_bias is not None and own_bias.shape != float_mean.shape):
            continue
        shift = twin_mean - (float_mean - (0.0 if own_bias is None else own_bias))
        edited.append(_corrected(layer, index, shift))
    return plan.with_layers(edited)


def _own_bias_term(layer: LayerPlan, index: GraphIndex) -> np.ndarray | None:
    """What the layer's own bias adds to its output (``beta * C`` for Gemm); ``None`` for MatMul+Add."""
    slot = layer.layer.bias
    if slot.node != layer.name or slot.initializer is None:
        return None
    return slot.beta * index.initializer_array(slot.initializer).astype(np.float64)


def _twin_model(plan: Plan, layers: list[LayerPlan]) -> tuple[onnx.ModelProto, dict]:
    """A copy of the float model with a quantized, bias-free twin of each layer, reading its float inputs.

    Twins and their Q/DQ nodes are appended after every original node and read only
    original tensors or each other, so the node list stays topologically sorted.
    """
    model = onnx.ModelProto()
    model.CopyFrom(plan.model)
    graph, index = model.graph, GraphIndex(plan.model.graph)
    pairs = {}
    for layer in layers:
        node = index.nodes[layer.name]
        inputs = list(node.input)
        for i in layer.layer.inputs:
            quantizer = _quantizer_above(plan, index, node.input[i])
            if quantizer is not None:
                inputs[i] = _qdq(graph, node.input[i], quantizer.scale, quantizer.zero_point,
                                 f"{layer.name}{_TWIN}{i}")
        weight = layer.weight
        name = f"{layer.name}{_TWIN}"
        graph.initializer.extend([numpy_helper.from_array(weight.values, f"{name}_w"),
                                  numpy_helper.from_array(weight.scale, f"{name}_ws"),
                                  numpy_helper.from_array(weight.zero_point, f"{name}_wz")])
        attrs = {} if weight.axis is None else {"axis": weight.axis}
        graph.node.append(helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"],
                                           [f"{name}_wdq"], name=f"{name}_wdq", **attrs))
        inputs[layer.layer.weight_index] = f"{name}_wdq"
        if layer.layer.bias.node == layer.name:
            inputs = inputs[:2]
        twin = helper.make_node(node.op_type, inputs, [f"{name}_out"], name=name)
        twin.attribute.extend(node.attribute)
        graph.node.append(twin)
        axis = layer.layer.channel_axis
        pairs[layer.name] = (StatisticRequest(node.output[0], "mean", "mean", axis=axis),
                             StatisticRequest(f"{name}_out", "mean", "mean", axis=axis))
    return model, pairs


def _quantizer_above(plan: Plan, index: GraphIndex, tensor: str):
    """The quantizer serving ``tensor`` from above, through the ops it was moved across."""
    while tensor not in plan.quantizers:
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type not in COMMUTING_OPS or not producer.input:
            return None
        tensor = producer.input[0]
    return plan.quantizers[tensor]


def _qdq(graph: onnx.GraphProto, tensor: str, scale: float, zero_point: int, name: str) -> str:
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                              numpy_helper.from_array(np.array(zero_point, np.uint8), f"{name}_z")])
    graph.node.extend([
        helper.make_node("QuantizeLinear", [tensor, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_q"),
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                         name=f"{name}_dq"),
    ])
    return f"{name}_dq"
