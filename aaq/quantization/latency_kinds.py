"""Kinds of layers whose int8 kernels may be slower than float in ONNX Runtime: the rules, and the kinds to measure.

Graph-only (nothing here runs inference): ``slower_in_int8`` is the hard-coded rule
set measured on one CPU (``latency_aware: "rules"``); ``latency_kinds`` groups the
layers a measurement on this machine times as a whole (``latency_aware: "measure"``,
``aaq.engine.layer_timing``): each kind in int8 against float, in the whole model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import onnx

from aaq.quantization.graph import GraphIndex

DEPTHWISE_SMALL = "depthwise conv, under 64 channels or not a multiple of 16"
DEPTHWISE_LARGE = "depthwise conv, 64+ channels in multiples of 16"
ONE_BY_ONE = "conv on a 1x1 image"
HARD_SWISH = "hard-swish in int8 (QLinearAdd + QLinearMul)"
KINDS = (DEPTHWISE_SMALL, ONE_BY_ONE, DEPTHWISE_LARGE, HARD_SWISH)
"""In the order they are measured: the rules' slow kinds first. ``HARD_SWISH`` holds activation nodes, not
layers (``quantization.hardswish``): in float, they run as ``HardSwish`` between a DequantizeLinear and a
QuantizeLinear. Not a kind: the first conv on a 3-channel
image (2.5-3.3x slower alone in int8, but no change to the whole model: see ``slower_in_int8``), which
every CNN would pay a measurement for."""
RULES_FLOAT = (DEPTHWISE_SMALL, ONE_BY_ONE)
"""The kinds the rules leave in float."""


def latency_kind(node: onnx.NodeProto, index: GraphIndex, shapes: Mapping[str, tuple]) -> str:
    """The kind of a layer (or int8 hard-swish) that may run slower in int8 (one of ``KINDS``), or ``""``."""
    if node.op_type in ("HardSwish", "HardSigmoid"):
        return HARD_SWISH
    if node.op_type != "Conv":
        return ""
    weight = index.initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) < 3:
        return ""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    out_channels, per_group = weight.dims[0], weight.dims[1]
    if group > 1 and per_group == 1 and out_channels == group:
        return DEPTHWISE_SMALL if out_channels % 16 or out_channels < 64 else DEPTHWISE_LARGE
    spatial = shapes.get(node.input[0], ())[2:]
    if spatial and all(d == 1 for d in spatial):
        return ONE_BY_ONE
    return ""


def latency_kinds(model: onnx.ModelProto, layers: Sequence[str], shapes: Mapping[str, tuple]) -> dict[str, list[str]]:
    """``layers`` (names of layers and of int8 hard-swishes) grouped by ``latency_kind``, kinds in ``KINDS``
    order; layers of no kind are left out."""
    index = GraphIndex(model.graph)
    found: dict[str, list[str]] = {}
    for name in layers:
        kind = latency_kind(index.nodes[name], index, shapes)
        if kind:
            found.setdefault(kind, []).append(name)
    return {kind: found[kind] for kind in KINDS if kind in found}


def slower_in_int8(node: onnx.NodeProto, index: GraphIndex, shapes: Mapping[str, tuple]) -> str:
    """Why ONNX Runtime runs this layer slower in int8 than in float (``""``: it does not).

    Measured with ORT 1.32 (MLAS, x86-64 AVX512-VNNI), each conv of PP-OCR cls/rec
    alone, kernel time only, batch 16, one thread (int8 / float):

    * depthwise conv: the int8 kernel wants 16-channel blocks; with other channel
      counts it takes a generic path, 4.3-9.4x slower than float (C=8: 4.9, 24: 4.3,
      40: 7.5, 88: 7.8, 104: 7.4, 200: 9.2). With multiples of 16 it is still slower
      below 64 channels (C=16: 4.6, 32: 2.2-2.9, 48: 3.1) and 0.5-0.85x from 64 up
      (64: 0.47-0.58, 128: 0.59-0.70, 240: 0.55-0.79, 480: 0.82-0.85);
    * not a rule: a conv on the 3-channel input image is 2.5-3.3x slower alone at every
      size measured (8x8 to 224x224, batch 1 and 16; im2col over 3 channels), but
      leaving PP-OCR cls's in float moved the whole model by no more than the noise
      (batch 1/16/32: 0.93/0.91/0.90 of float vs 1.00/0.90/0.92); 1x1 convs with few
      input channels are fast (8 -> 24: 0.33x), and from 4 channels a 3x3 conv is too
      (4 -> 32 on 64x64: 0.89x);
    * a conv on a 1x1 image (the fully connected layers of a squeeze-excitation block,
      after a GlobalAveragePool): a few microseconds either way (0.5-2x), but in int8
      it brings a QuantizeLinear, a DequantizeLinear and two NHWC transposes to every
      block; leaving the 18 of PP-OCR cls in float made the whole model 14 % faster at
      batch 1 (no change at 16 and 32).
    """
    kind = latency_kind(node, index, shapes)
    if kind == DEPTHWISE_SMALL:
        channels = index.initializers[node.input[1]].dims[0]
        return f"latency: depthwise conv with {channels} channels is slower in int8"
    if kind == ONE_BY_ONE:
        return "latency: conv on a 1x1 image gains nothing in int8"
    return ""
