"""Weight-range search by output error: each output channel's clipping range from a small grid.

Min/max weight ranges keep every outlier weight exact and round all the others
coarsely. Clipping a channel to ``r * max|w|`` (``r`` < 1) trades the few clipped
weights for a finer grid on the rest; which ``r`` is best depends on the inputs the
layer really sees. For a weight error ``e`` of one output channel, the layer's output
error over the calibration data is ``e^T G e`` with ``G = sum x x^T`` over its input
vectors (``statistics.gram``), so every candidate of every channel is scored from
``G`` without running the layer again (the idea of AIMET's SeqMSE, which runs the
layer per candidate instead).

Sequential, as the issue asks (and as SeqMSE is): layers are searched in
topological order in *waves* of layers none of which feeds another, and each wave's
``G`` is read on the plan's QDQ model with every earlier wave's searched ranges in
(the inputs come from the already-quantized prefix). That is one statistics pass
over ``num_samples`` calibration samples per wave (for a plain chain, per layer).
A layer keeps its min/max ranges unless the searched ones lower its output error by
more than ``margin`` (relative): a clipping that helps one layer's MSE a little
need not help the model. After ``time_budget`` seconds (passes included) the layers
not reached keep min/max ranges and the record says which.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.graph import GraphIndex
from aaq.quantization.plan import LayerPlan, Plan
from aaq.quantization.ranges import QuantizedWeight
from aaq.statistics.requests import StatisticRequest

logger = logging.getLogger(__name__)

DEFAULT_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)
DEFAULT_MARGIN = 0.1
"""Relative output-error reduction a layer's searched ranges must beat to replace its min/max ranges."""


def gram_requests(plan: Plan, quantized: onnx.ModelProto) -> dict[str, StatisticRequest]:
    """Layer name -> the ``gram`` of the input it reads in ``quantized`` (the plan's QDQ model)."""
    index = GraphIndex(quantized.graph)
    out = {}
    for layer in plan.layers:
        spec = layer.layer
        node = index.nodes.get(layer.name)
        if layer.weight is None or layer.weight.axis is None or node is None or not spec.inputs:
            continue
        tensor = node.input[spec.inputs[0]]
        if spec.op_type == "Conv":
            patch = _conv_patch(node, layer.weight.values.shape)
            if patch is None:
                continue
            out[layer.name] = StatisticRequest(tensor, "gram", "sum", patch=patch)
        elif spec.op_type in ("MatMul", "Gemm") and not _attr(node, "transA", 0):
            out[layer.name] = StatisticRequest(tensor, "gram", "sum")
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _conv_patch(node: onnx.NodeProto, weight_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The patch geometry of a 2-D conv with explicit pads (``auto_pad`` convs are not searched)."""
    if len(weight_shape) != 4 or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kh, kw = weight_shape[2], weight_shape[3]
    strides = list(_attr(node, "strides", [1, 1]))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    group = int(_attr(node, "group", 1))
    return (kh, kw, strides[0], strides[1], pads[0], pads[1], pads[2], pads[3], dilations[0], dilations[1], group)


def waves(plan: Plan, names: Sequence[str]) -> list[list[str]]:
    """``names`` (layers) in topological order, cut into runs where no layer is upstream of another in its run."""
    index = GraphIndex(plan.model.graph)
    layer_nodes = set(names)
    memo: dict[str, frozenset[str]] = {}

    def upstream(node: onnx.NodeProto) -> frozenset[str]:
        """The layers ``node`` reads from, directly or not (iterative: deep graphs)."""
        stack = [node]
        while stack:
            top = stack[-1]
            parents = [index.producer[t] for t in top.input if t in index.producer]
            missing = [p for p in parents if p.name not in memo]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            found: set[str] = set()
            for p in parents:
                found |= memo[p.name]
                if p.name in layer_nodes:
                    found.add(p.name)
            memo[top.name] = frozenset(found)
        return memo[node.name]

    out: list[list[str]] = []
    current: set[str] = set()
    for name in sorted(names, key=lambda n: index.order.get(n, 0)):
        if current and upstream(index.nodes[name]) & current:
            out.append(sorted(current, key=lambda n: index.order.get(n, 0)))
            current = set()
        current.add(name)
    if current:
        out.append(sorted(current, key=lambda n: index.order.get(n, 0)))
    return out


def search_weights(plan: Plan, grams: Mapping[str, np.ndarray], requests: Mapping[str, StatisticRequest],
                   ratios: Sequence[float] = DEFAULT_RATIOS, margin: float = DEFAULT_MARGIN) -> tuple[Plan, dict]:
    """The plan with each layer of ``requests`` given the per-channel weight scales of least output error
    (when they beat min/max by ``margin``); and a record per layer."""
    index = GraphIndex(plan.model.graph)
    layers = {layer.name: layer for layer in plan.layers}
    edited, record = [], {}
    for name in sorted(requests, key=lambda n: index.order.get(n, 0)):
        layer = layers[name]
        gram = np.asarray(grams[requests[name]], dtype=np.float64)
        gram = gram.reshape(-1, *gram.shape[-2:])
        weight = index.initializer_array(layer.layer.weight).astype(np.float32)
        searched = _search_layer(layer, weight, gram, ratios)
        if searched is None:
            continue
        new_weight, chosen, gain = searched
        kept = gain <= margin
        if not kept:
            edited.append(LayerPlan(layer.layer, new_weight, layer.quantizers, layer.bias))
        record[name] = {"mean_ratio": 1.0 if kept else round(float(np.mean(chosen)), 4),
                        "clipped_channels": 0 if kept else int(np.sum(chosen < 1.0)),
                        "error_reduction": round(gain, 4), "kept_min_max": kept}
    return plan.with_layers(edited), record


def _search_layer(layer: LayerPlan, weight: np.ndarray, gram: np.ndarray,
                  ratios: Sequence[float]) -> tuple[QuantizedWeight, np.ndarray, float] | None:
    """The best ratio per output channel, the new quantized weight, and the relative error reduction."""
    base = layer.weight
    axis = base.axis % weight.ndim
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).astype(np.float64)
    channels, width = rows.shape
    groups = gram.shape[0]
    if gram.shape[1:] != (width, width) or channels % groups:
        logger.debug("%s: gram of shape %s does not match the weight: not searched", layer.name, gram.shape)
        return None
    levels = 2 ** (base.bits - 1) - 1
    scale0 = base.scale.reshape(-1).astype(np.float64)
    group_of = np.arange(channels) // (channels // groups)
    errors = []
    for ratio in ratios:
        scale = (scale0 * ratio)[:, None]
        error = np.clip(np.round(rows / scale), -levels, levels) * scale - rows
        if groups == 1:
            errors.append(np.sum((error @ gram[0]) * error, axis=1))
        else:
            errors.append(np.einsum("cd,cde,ce->c", error, gram[group_of], error))
    errors = np.stack(errors)  # (ratios, channels)
    best = errors.argmin(axis=0)
    chosen = np.asarray(ratios, dtype=np.float64)[best]
    scale = (scale0 * chosen).astype(np.float32)
    before, after = float(errors[0].sum()), float(errors[best, np.arange(channels)].sum())
    gain = 0.0 if before <= 0 else 1.0 - after / before
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.round(weight / scale.reshape(shape)), -levels, levels).astype(np.int8)
    zero_point = np.zeros_like(scale, dtype=np.int8)
    for array in (values, scale, zero_point):
        array.setflags(write=False)
    return QuantizedWeight(values, scale, zero_point, base.axis, base.bits), chosen, gain
