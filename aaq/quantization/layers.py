"""Which nodes are quantized layers, and where their activation quantizers sit.

A layer is a node whose weight (if it has one) and activation inputs get
quantizers. Placement rules, all measured on ONNX Runtime's optimized graphs:

* an activation quantizer moves up through ops it commutes with (Reshape, Flatten,
  Transpose, Squeeze, Unsqueeze, MaxPool) while the tensor has no other reader: the
  values are the same, and ORT then sees ``Conv -> Relu -> Q`` instead of
  ``Conv -> Relu -> Flatten -> Q`` (it propagates Q through Reshape but not through
  Flatten, which left the conv in float). The same Q/DQ is repeated after those
  ops so that the layer reads a DequantizeLinear (Gemm after Flatten stayed
  in float without it);
* ORT fuses Conv, Gemm, Add, Mul, pooling and Concat into integer kernels only when a
  QuantizeLinear reads their output (MatMul fuses without one, as
  ``MatMulIntegerToFloat``), and that QuantizeLinear must be the output's only
  reader. When no layer's input quantizer sits on such a layer's output (directly or
  after a ReLU), the layer gets an output quantizer of its own, read by every
  reader; when one does but other nodes read the tensor too, that quantizer is
  widened to every reader and shared with the producer;
* one tensor quantized for several layers is one quantizer, so those layers form
  one group (see ``plan.make_groups``);
* an output quantizer whose readers are all flat outside a range (hard-swish below
  -3, HardSigmoid, Clip) covers only that range (``clamps.consumer_clamp``);
* a hard-swish between two activation quantizers runs in int8, as ``QLinearAdd`` and
  ``QLinearMul`` (``hardswish``): it gets no quantizer or group of its own;
* latency-aware layouts leave in float the layers ORT runs slower in int8 (by the
  rules, ``latency_kinds.slower_in_int8``: small depthwise convs, convs on 1x1 images;
  or as measured on the machine, ``float_for_speed``) and keep their
  neighbours' integer kernels; a Conv between a DequantizeLinear and a QuantizeLinear
  is never float in ORT 1.32 (``WeightBiasQuantization`` quantizes its weights per
  tensor), so such a layer is quantized by aaq instead, per channel.

ConvTranspose is quantizable but not in the default op list: ORT 1.32 runs it in
float whatever the Q/DQ around it (measured), so quantizing it costs accuracy and
buys no speed.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import onnx
from onnx import TensorProto, helper

from aaq.quantization.clamps import readers_clamp
from aaq.quantization.graph import GraphIndex
from aaq.quantization.hardswish import Int8HardSwish, find_int8_hardswish
from aaq.quantization.latency_kinds import slower_in_int8

logger = logging.getLogger(__name__)

DEFAULT_OPS = ("Conv", "Gemm", "MatMul")
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
COMMUTING_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool"})
"""Ops a per-tensor quantizer commutes with (data movement, max): Q/DQ before them equals Q/DQ after.

Not ``graph.INT8_REGION_OPS`` (what ORT runs inside an INT8 region): a quantizer moves only through these.
"""
_NEEDS_OUTPUT_Q = {"Conv", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat"}


@dataclass(frozen=True)
class BiasSlot:
    """Where a layer's bias lives: ``node``'s input ``index`` (its own, or the Add after a MatMul).

    ``initializer`` is ``None`` when the layer has no bias yet (Conv/Gemm without
    one); a correction then adds it. ``beta`` is Gemm's factor on its bias.
    """

    node: str
    index: int
    initializer: str | None
    beta: float = 1.0


@dataclass(frozen=True)
class Layer:
    """A quantizable node: activation input indices, weight (initializer, input index, channel axis), bias."""

    name: str
    op_type: str
    output: str
    inputs: tuple[int, ...]
    weight: str | None = None
    weight_index: int | None = None
    weight_axis: int | None = None
    bias: BiasSlot | None = None
    channel_axis: int = 1


@dataclass(frozen=True)
class QuantizerSite:
    """One activation quantizer: ``tensor`` is quantized once, ``consumers`` read the dequantized copy.

    ``owners`` are the layers it serves; an output quantizer (``output=True``) is
    owned by the layer that produces the tensor and covers every reader, the graph
    output included (``graph_output``). ``repeats`` are ``(tensor, (layer, input))``
    pairs where a quantizer moved up through ``COMMUTING_OPS`` is repeated, with the
    same parameters, right before the layer: exact (the values are already on the
    grid) and needed by ORT, whose fusion wants a DequantizeLinear at the layer's input.
    ``clamp`` is set on an output quantizer all of whose readers are flat outside
    ``[low, high]`` (``clamps.consumer_clamp``): values beyond it need no levels of the grid.
    """

    tensor: str
    consumers: tuple[tuple[str, int], ...]
    owners: tuple[str, ...]
    output: bool = False
    graph_output: bool = False
    repeats: tuple[tuple[str, tuple[str, int]], ...] = ()
    clamp: tuple[float, float] | None = None


@dataclass(frozen=True)
class Layout:
    """The layers of a model and their quantizer sites, in graph order; ``skipped``: name -> reason.

    ``hardswish``: the hard-swishes between two of these quantizers, which run in int8 (``hardswish``).
    """

    layers: tuple[Layer, ...]
    sites: tuple[QuantizerSite, ...]
    skipped: Mapping[str, str]
    hardswish: tuple[Int8HardSwish, ...] = ()

    def sites_of(self, layer: str) -> tuple[str, ...]:
        """The tensors of the quantizers ``layer`` owns."""
        return tuple(s.tensor for s in self.sites if layer in s.owners)


def find_layout(model: onnx.ModelProto, op_types: Iterable[str], *, activation_matmul: bool = False,
                ignored: Mapping[str, str] | None = None, elem_types: Mapping[str, int] | None = None,
                latency_aware: bool = False, shapes: Mapping[str, tuple] | None = None,
                float_for_speed: Mapping[str, str] | None = None) -> Layout:
    """The quantizable layers of ``model`` among ``op_types`` (minus ``ignored``) and their quantizer sites.

    ``latency_aware``: leave in float the layers ONNX Runtime runs slower in int8 by
    the rules (``latency_kinds.slower_in_int8``; ``shapes`` are the known tensor
    shapes); ``float_for_speed``: these layers (name -> reason), as measured. Unlike ``ignored``
    ones, the layers before them still get the output quantizer their own integer
    kernel needs; and one that would sit between a DequantizeLinear and a
    QuantizeLinear all the same is quantized: ORT 1.32 would quantize its float
    weights itself (``WeightBiasQuantization``, per tensor) and run it in int8.
    A hard-swish named in ``ignored`` or ``float_for_speed`` stays float (``Layout.hardswish``).
    """
    index = GraphIndex(model.graph)
    enabled, ignored, elem_types = set(op_types), dict(ignored or {}), dict(elem_types or {})
    chosen = dict(float_for_speed or {})
    layers, skipped, slow = [], {}, {}
    for node in model.graph.node:
        if node.op_type not in enabled or node.domain not in ("", "ai.onnx"):
            continue
        if node.name in ignored:
            skipped[node.name] = f"ignored ({ignored[node.name]})"
            continue
        layer, reason = _layer(node, index, activation_matmul, elem_types)
        if layer is not None and (latency_aware or node.name in chosen):
            why = chosen.get(node.name) or slower_in_int8(node, index, shapes or {})
            if why:
                slow[node.name], layer, reason = layer, None, why
        if layer is None:
            skipped[node.name] = reason
            logger.debug("not quantized: %s (%s): %s", node.name, node.op_type, reason)
        else:
            layers.append(layer)
    sites = _place_quantizers(layers, index, ignored)
    while slow:
        forced = [name for name in slow if _between_qdq(name, sites, index)]
        if not forced:
            break
        for name in forced:
            layers.append(slow.pop(name))
            del skipped[name]
        layers.sort(key=lambda layer: index.order[layer.name])
        sites = _place_quantizers(layers, index, ignored)
    fed = {site.tensor: set(site.consumers) for site in sites}
    hardswish = find_int8_hardswish(index, fed, set(ignored) | set(chosen))
    return Layout(tuple(layers), tuple(sites), skipped, hardswish)


def _between_qdq(name: str, sites: list["QuantizerSite"], index: GraphIndex) -> bool:
    """Whether the float layer ``name`` reads a DequantizeLinear and feeds, alone, a QuantizeLinear."""
    node = index.nodes[name]
    if not any((name, 0) in site.consumers for site in sites):
        return False
    tensor = node.output[0]
    while True:
        readers = index.readers.get(tensor, [])
        site = next((s for s in sites if s.tensor == tensor), None)
        if site is not None:
            return set(readers) <= set(site.consumers) and tensor not in index.graph_outputs
        if (len(readers) != 1 or tensor in index.graph_outputs
                or index.nodes[readers[0][0]].op_type not in ("Relu", "Clip")):
            return False
        tensor = index.nodes[readers[0][0]].output[0]


def _layer(node: onnx.NodeProto, index: GraphIndex, activation_matmul: bool,
           elem_types: Mapping[str, int]) -> tuple[Layer | None, str]:
    inputs = [name for name in node.input]
    constant = [bool(name) and index.is_initializer(name) for name in inputs]
    op = node.op_type
    if op in _WEIGHTED:
        layer, reason = _weighted_layer(node, index, constant, activation_matmul)
    elif any(constant) or not inputs:
        return None, "an operand is a constant"
    else:
        layer, reason = Layer(node.name, op, node.output[0], tuple(range(len(inputs)))), ""
    if layer is None:
        return None, reason
    for i in layer.inputs:
        if elem_types.get(inputs[i], TensorProto.FLOAT) != TensorProto.FLOAT:
            return None, f"input {inputs[i]!r} is not float32"
    if layer.weight is not None and index.initializers[layer.weight].data_type != TensorProto.FLOAT:
        return None, "the weight is not float32"
    return layer, ""


def _weighted_layer(node: onnx.NodeProto, index: GraphIndex, constant: list[bool],
                    activation_matmul: bool) -> tuple[Layer | None, str]:
    op, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
    name, output = node.name, node.output[0]
    if op in ("MatMul", "Gemm") and not constant[0] and not constant[1]:
        if not activation_matmul:
            return None, "both operands are activations (quantize_activation_matmul is off)"
        return Layer(name, op, output, (0, 1), channel_axis=-1), ""
    if op == "MatMul" and constant[0] and not constant[1]:
        return Layer(name, op, output, (1,), node.input[0], 0, None, channel_axis=-2), ""
    if not constant[1] or constant[0]:
        return None, "the weight is not a constant"
    weight = node.input[1]
    rank = len(index.initializers[weight].dims)
    if op == "Conv":
        axis, channel = 0, 1
    elif op == "ConvTranspose":
        axis, channel = (1 if attrs.get("group", 1) == 1 else None), 1
    elif op == "Gemm":
        axis, channel = (0 if attrs.get("transB", 0) else 1), -1
    else:  # MatMul: one scale per output column
        axis, channel = (rank - 1 if rank >= 2 else None), -1
    return Layer(name, op, output, (0,), weight, 1, axis, _bias_slot(node, index, attrs), channel), ""


def _bias_slot(node: onnx.NodeProto, index: GraphIndex, attrs: dict) -> BiasSlot | None:
    """The bias a correction may edit: a 1-D constant read by this node only, or none yet."""
    if node.op_type == "MatMul":
        readers = index.readers.get(node.output[0], [])
        if len(readers) != 1 or node.output[0] in index.graph_outputs:
            return None
        add = index.nodes[readers[0][0]]
        other = 1 - readers[0][1]
        if add.op_type != "Add" or not index.is_initializer(add.input[other]):
            return None
        return _own_bias(add, other, index)
    if node.op_type == "Gemm" and attrs.get("transA", 0):
        return None
    beta = float(attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
    if len(node.input) < 3 or not node.input[2]:
        return BiasSlot(node.name, 2, None, beta)
    if not index.is_initializer(node.input[2]) or beta == 0.0:
        return None
    slot = _own_bias(node, 2, index)
    return None if slot is None else BiasSlot(slot.node, slot.index, slot.initializer, beta)


def _own_bias(node: onnx.NodeProto, position: int, index: GraphIndex) -> BiasSlot | None:
    name = node.input[position]
    init = index.initializers[name]
    if len(init.dims) != 1 or init.data_type != TensorProto.FLOAT or len(index.readers.get(name, [])) != 1:
        return None
    return BiasSlot(node.name, position, name)


def _place_quantizers(layers: list[Layer], index: GraphIndex, ignored: Mapping[str, str]) -> list[QuantizerSite]:
    consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)
    owners: dict[str, list[str]] = defaultdict(list)
    repeats: dict[str, list[tuple[str, tuple[str, int]]]] = defaultdict(list)
    for layer in layers:
        node = index.nodes[layer.name]
        for i in layer.inputs:
            tensor, edge = _home(node.input[i], (layer.name, i), index)
            if edge not in consumers[tensor]:
                consumers[tensor].append(edge)
            if layer.name not in owners[tensor]:
                owners[tensor].append(layer.name)
            if tensor != node.input[i]:
                repeats[tensor].append((node.input[i], (layer.name, i)))
    sites = {t: QuantizerSite(t, tuple(consumers[t]), tuple(owners[t]), repeats=tuple(repeats[t]))
             for t in consumers}
    for layer in layers:
        if layer.op_type not in _NEEDS_OUTPUT_Q:
            continue
        reach = _after_relu(layer.output, index)
        readers = index.readers.get(reach, [])
        graph_output = reach in index.graph_outputs
        if any(r in ignored for r, _ in readers) or not (readers or graph_output):
            continue
        site = sites.get(reach)
        if site is None:
            clamp = None if graph_output else readers_clamp(readers, index)
            sites[reach] = QuantizerSite(reach, tuple(readers), (layer.name,), output=True,
                                         graph_output=graph_output, clamp=clamp)
        elif set(readers) - set(site.consumers) or (graph_output and not site.graph_output):
            # ORT fuses only when the Q is the output's sole reader: the quantizer then
            # serves every reader, and the producer shares it (one group)
            sites[reach] = replace(site, consumers=tuple(readers), graph_output=graph_output,
                                   owners=site.owners + (layer.name,))
    return sorted(sites.values(), key=lambda s: _position(s.tensor, index))


def _home(tensor: str, edge: tuple[str, int], index: GraphIndex) -> tuple[str, tuple[str, int]]:
    """Move a quantizer up through ``COMMUTING_OPS`` while the tensor has no other reader."""
    while True:
        producer = index.producer.get(tensor)
        if (producer is None or producer.op_type not in COMMUTING_OPS or tensor in index.graph_outputs
                or len([o for o in producer.output if o]) != 1
                or len(index.readers.get(tensor, [])) != 1 or not producer.input
                or index.is_initializer(producer.input[0])):
            return tensor, edge
        tensor, edge = producer.input[0], (producer.name, 0)


def _after_relu(tensor: str, index: GraphIndex) -> str:
    readers = index.readers.get(tensor, [])
    if len(readers) == 1 and tensor not in index.graph_outputs and index.nodes[readers[0][0]].op_type == "Relu":
        return index.nodes[readers[0][0]].output[0]
    return tensor


def _position(tensor: str, index: GraphIndex) -> int:
    producer = index.producer.get(tensor)
    return -1 if producer is None else index.order[producer.name]
