"""Plan -> QDQ model: a pure function of the float model and the plan.

Standard ONNX only (QuantizeLinear / DequantizeLinear; opset >= 13 for per-channel
weights, >= 10 otherwise): activations
get a Q/DQ pair read by the layers the quantizer serves, weights are stored as
int8 initializers behind a DequantizeLinear (per channel with ``axis``), corrected
biases are new float initializers; a hard-swish between two quantizers is rewritten into
its int8 form (``hardswish``). A float bias costs nothing: ORT 1.32 quantizes it
to int32 itself (``WeightBiasQuantization``); a 64 -> 64 1x1 conv on 16x64x24x96 gave
the same optimized graph (QLinearConv) and time (1.394 vs 1.393 ms) with the bias as
an int32 initializer behind a DequantizeLinear of scale x_scale * w_scale. Groups the
plan reverts get none of these, so their layers read exactly what they read in the
float model.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from aaq.errors import ModelError
from aaq.quantization.graph import GraphIndex, drop_unused_initializers, unique_name
from aaq.quantization.hardswish import Int8HardSwish, int8_nodes
from aaq.quantization.plan import ActivationQuantizer, LayerPlan, Plan
from aaq.state import model_digest

logger = logging.getLogger(__name__)


def apply_plan(float_model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """A new QDQ model for ``plan``; ``float_model`` (the user's model or the prepared one) is not modified.

    The plan applies to the prepared model it holds; ``float_model`` is checked
    to be the model the plan was made for, so a plan is never applied to another.
    """
    if float_model is not plan.model and model_digest(float_model) not in plan.source_digests:
        raise ModelError("the plan was made for another model (its digest differs)")
    model = onnx.ModelProto()
    model.CopyFrom(plan.model)
    _Rewriter(model.graph, plan).run()
    return model


class _Rewriter:
    """Collects the new nodes, initializers and input rewirings, then rebuilds the node list once."""

    def __init__(self, graph: onnx.GraphProto, plan: Plan) -> None:
        index = GraphIndex(graph)
        self.graph = graph
        self.plan = plan
        self.taken = index.tensor_names | set(index.nodes)  # one namespace for new nodes and tensors
        self.rewire: dict[str, dict[int, str]] = {}  # node -> input index -> new tensor
        self.renamed_outputs: dict[str, str] = {}
        self.prefix: list[onnx.NodeProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.replaced: dict[str, list[onnx.NodeProto]] = {}  # node -> the nodes computing it instead ([]: none)
        self.producer = index.producer

    def run(self) -> None:
        groups = self.plan.quantized_groups
        for group in groups:
            for tensor in group.quantizers:
                self._activation(self.plan.quantizers[tensor])
        names = {name for group in groups for name in group.layers}
        for layer in self.plan.layers:
            if layer.name in names:
                self._weight(layer)
                self._bias(layer)
        for unit in self.plan.int8_hardswish:
            dequantized = self.rewire[unit.nodes[0]][0]  # the activation reads its input's DequantizeLinear
            self.replaced.update(dict.fromkeys(unit.nodes, []))
            self.replaced[unit.nodes[-1]] = nodes = int8_nodes(unit, dequantized, self._initializer, self._name)
            if unit.shift:
                self._shifted_quantizer(unit, nodes[-1].output[0])
        self._rebuild()
        drop_unused_initializers(self.graph)
        logger.debug("QDQ model: %d groups quantized, %d reverted", len(groups), len(self.plan.reverted))

    def _name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def _initializer(self, array: np.ndarray, base: str) -> str:
        name = self._name(base)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def _activation(self, quantizer: ActivationQuantizer) -> None:
        tensor, site = quantizer.tensor, quantizer.site
        scale = self._initializer(np.array(quantizer.scale, dtype=np.float32), f"{tensor}_scale")
        zero_point = self._initializer(np.array(quantizer.zero_point, dtype=np.uint8), f"{tensor}_zero_point")
        source, dequantized = tensor, None
        if site.graph_output:  # the graph output keeps its name and becomes the dequantized copy
            source, dequantized = self._name(f"{tensor}_float"), tensor
            self.renamed_outputs[tensor] = source
        dequantized = self._qdq(tensor, scale, zero_point, source, dequantized)
        if not site.graph_output:
            for node, index in site.consumers:
                self.rewire.setdefault(node, {})[index] = dequantized
        for repeated, (node, index) in site.repeats:
            self.rewire.setdefault(node, {})[index] = self._qdq(repeated, scale, zero_point)

    def _shifted_quantizer(self, unit: Int8HardSwish, product: str) -> None:
        """The output quantizer of a shifted hard-swish reads the product, its zero point moved by the shift's
        ``levels``: the integers are those of ``product + shift`` on the output's grid, exactly."""
        quantizer = self.plan.quantizers[unit.output]
        node = next(n for n in self.after[unit.nodes[-1]]
                    if n.op_type == "QuantizeLinear" and n.input[0] == unit.output)
        node.input[0] = product
        node.input[2] = self._initializer(np.array(quantizer.zero_point + unit.levels, dtype=np.uint8),
                                          f"{unit.output}_shifted_zero_point")

    def _qdq(self, tensor: str, scale: str, zero_point: str, source: str | None = None,
             dequantized: str | None = None) -> str:
        """A Q/DQ pair reading ``source`` (default ``tensor``), placed right after ``tensor``'s producer."""
        source = source or tensor
        dequantized = dequantized or self._name(f"{tensor}_dequantized")
        quantized = self._name(f"{tensor}_quantized")
        nodes = [
            helper.make_node("QuantizeLinear", [source, scale, zero_point], [quantized],
                             name=self._name(f"{tensor}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [dequantized],
                             name=self._name(f"{tensor}_DequantizeLinear")),
        ]
        producer = self.producer.get(tensor)
        (self.after.setdefault(producer.name, []) if producer is not None else self.prefix).extend(nodes)
        return dequantized

    def _weight(self, layer: LayerPlan) -> None:
        if layer.weight is None:
            return
        weight, base = layer.weight, layer.layer.weight
        values = self._initializer(weight.values, f"{base}_quantized")
        scale = self._initializer(weight.scale, f"{base}_scale")
        zero_point = self._initializer(weight.zero_point, f"{base}_zero_point")
        dequantized = self._name(f"{base}_dequantized_{layer.name}")
        attrs = {} if weight.axis is None else {"axis": weight.axis}
        self.prefix.append(helper.make_node("DequantizeLinear", [values, scale, zero_point], [dequantized],
                                            name=self._name(f"{layer.name}_weight_DequantizeLinear"), **attrs))
        self.rewire.setdefault(layer.name, {})[layer.layer.weight_index] = dequantized

    def _bias(self, layer: LayerPlan) -> None:
        if layer.bias is None:
            return
        slot = layer.bias.slot
        name = self._initializer(layer.bias.corrected.astype(np.float32),
                                 f"{slot.initializer or layer.name}_bias_corrected")
        self.rewire.setdefault(slot.node, {})[slot.index] = name

    def _rebuild(self) -> None:
        nodes = list(self.prefix)
        for node in self.graph.node:
            if node.name in self.replaced:
                nodes.extend(self.replaced[node.name])
                nodes.extend(self.after.get(node.name, []))
                continue
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for index, tensor in self.rewire.get(node.name, {}).items():
                while len(new.input) <= index:  # an added optional input (a bias the layer lacked)
                    new.input.append("")
                new.input[index] = tensor
            for i, out in enumerate(new.output):
                if out in self.renamed_outputs:
                    new.output[i] = self.renamed_outputs[out]
            nodes.append(new)
            nodes.extend(self.after.get(node.name, []))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
