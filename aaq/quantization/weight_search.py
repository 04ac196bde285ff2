"""Weight-range search by output error: each output channel's clipping range from a small grid.

Min/max weight ranges keep every outlier weight exact and round all the others
coarsely. Clipping a channel to ``r * max|w|`` (``r`` < 1) trades the few clipped
weights for a finer grid on the rest; which ``r`` is best depends on the inputs the
layer really sees. For a weight error ``e`` of one output channel, the layer's output
error over the calibration data is ``e^T G e`` with ``G = sum x x^T`` over its input
vectors (``statistics.gram``), so every candidate of every channel is scored from
``G`` without running the layer again (the idea of AIMET's SeqMSE, which runs the
layer per candidate instead).

``G`` is read on the model of the plan being searched (every layer quantized with
min/max weights): each layer's input comes from the quantized prefix. It is one
statistics pass over ``num_samples`` calibration samples; the prefix is not
re-quantized with the searched ranges before the next layer (one pass, not one per
layer). Layers are searched in graph (topological) order until ``time_budget``
seconds are spent; the rest keep min/max ranges and the record says which.
"""
from __future__ import annotations

import logging
import time
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


def search_weights(plan: Plan, grams: Mapping[str, np.ndarray], requests: Mapping[str, StatisticRequest],
                   ratios: Sequence[float] = DEFAULT_RATIOS, time_budget: float = 60.0) -> tuple[Plan, dict]:
    """The plan with each searched layer's per-channel weight scales chosen by output error; and a record."""
    started = time.perf_counter()
    index = GraphIndex(plan.model.graph)
    order = sorted(plan.layers, key=lambda l: index.order.get(l.name, 0))
    edited, record = [], {"layers": {}, "not_searched": [], "ratios": list(ratios)}
    for layer in order:
        if layer.name not in requests:
            continue
        if time.perf_counter() - started > time_budget:
            record["not_searched"].append(layer.name)
            continue
        gram = np.asarray(grams[requests[layer.name]], dtype=np.float64).reshape(-1, *np.shape(grams[requests[layer.name]])[-2:])
        weight = index.initializer_array(layer.layer.weight).astype(np.float32)
        searched = _search_layer(layer, weight, gram, ratios)
        if searched is None:
            continue
        new_weight, chosen, gain = searched
        edited.append(LayerPlan(layer.layer, new_weight, layer.quantizers, layer.bias))
        record["layers"][layer.name] = {"mean_ratio": round(float(np.mean(chosen)), 4),
                                        "clipped_channels": int(np.sum(chosen < 1.0)),
                                        "error_reduction": round(gain, 4)}
    record["seconds"] = round(time.perf_counter() - started, 3)
    logger.info("weight-range search: %d layer(s) searched in %.2f s%s", len(edited), record["seconds"],
                f", {len(record['not_searched'])} left at min/max (time budget)" if record["not_searched"] else "")
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
