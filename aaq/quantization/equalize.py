"""Cross-layer equalization (Nagel et al. 2019, data-free quantization) on the prepared float graph.

Per-channel weight ranges differ by orders of magnitude in some networks (depthwise
convs, folded BatchNorms): one output channel of conv A with a large range next to
many small ones. For a chain ``A -> f -> B`` where ``f`` commutes with a positive
per-channel scale (``f(s x) = s f(x)``: no activation, ``Relu``, ``LeakyRelu``,
``PRelu``), dividing A's output channel ``c`` (weights and bias) by ``s_c`` and
multiplying B's input channel ``c`` by ``s_c`` computes the same function.
``s_c = sqrt(r1_c / r2_c)`` makes both ranges ``sqrt(r1_c r2_c)``: A's small channels
grow, B's large ones shrink, and the per-channel int8 grids lose less. Chains of
several convs are swept a few times (each conv is the B of one pair and the A of the
next).

``Clip`` (ReLU6) is not equalized: its bounds are scalars in ONNX, and rescaling them
per channel would need a different op; AIMET replaces ReLU6 by ReLU, which changes
what the model computes. High-bias absorption is not done: after BatchNorm folding
the pre-activation statistics it needs are not in the graph (a statistics pass would
be needed before the one pass the ranges use).

Run after ``prepare`` (BatchNorm folded), before any statistic: the float model's
outputs stay the same up to float rounding (tested to 1e-5 relative).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.graph import GraphEditor, GraphIndex, drop_unused_initializers

logger = logging.getLogger(__name__)

HOMOGENEOUS_OPS = frozenset({"Relu", "LeakyRelu", "PRelu"})
"""Activations with ``f(s x) = s f(x)`` for every positive per-channel ``s``."""
_SWEEPS = 4
_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


@dataclass
class Equalization:
    """The equalized model and what was done: pairs (conv A, conv B) and chains skipped with the reason."""

    model: onnx.ModelProto
    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        note = None if self.pairs else ("no equalizable Conv -> (Relu/LeakyRelu/PRelu/none) -> Conv pair: "
                                        "cross-layer equalization changed nothing")
        return {"pairs": [list(p) for p in self.pairs], "skipped": dict(self.skipped), "note": note}


def equalize(model: onnx.ModelProto) -> Equalization:
    """A copy of ``model`` with every equalizable Conv pair rescaled (``model`` is not modified)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out.graph)
    pairs, skipped = _find_pairs(index)
    if not pairs:
        return Equalization(out, [], skipped)
    editor = GraphEditor(out.graph)
    weights = {name: editor.initializer_array(editor.nodes[name].input[1]).astype(np.float64)
               for pair in pairs for name in pair}
    biases = {name: _bias(editor, editor.nodes[name]) for pair in pairs for name in pair}
    for _ in range(_SWEEPS):
        for first, second in pairs:
            _equalize_pair(weights, biases, first, second, _group(editor.nodes[second]))
    for name, weight in weights.items():
        node = editor.nodes[name]
        node.input[1] = editor.add_initializer(weight.astype(np.float32), f"{name}.weight_cle")
        if biases[name] is not None:
            bias_name = editor.add_initializer(biases[name].astype(np.float32), f"{name}.bias_cle")
            if len(node.input) > 2:
                node.input[2] = bias_name
            else:
                node.input.append(bias_name)
    drop_unused_initializers(out.graph)
    logger.info("cross-layer equalization: %d conv pair(s) rescaled", len(pairs))
    return Equalization(out, pairs, skipped)


def _find_pairs(index: GraphIndex) -> tuple[list[tuple[str, str]], dict[str, str]]:
    pairs, skipped = [], {}
    for node in index.graph.node:
        if not _is_plain_conv(node, index):
            continue
        tensor = node.output[0]
        reader = index.sole_reader(tensor)
        if reader is None:
            continue
        if reader.op_type in HOMOGENEOUS_OPS:
            if reader.op_type == "PRelu" and index.float_constant(reader.input[1]) is None:
                skipped[node.name] = "PRelu slope is not a constant"
                continue
            tensor = reader.output[0]
            reader = index.sole_reader(tensor)
        elif reader.op_type == "Clip":
            skipped[node.name] = "Clip after the conv: scalar bounds cannot be rescaled per channel"
            continue
        if reader is None or reader.op_type != "Conv":
            continue
        if not _is_plain_conv(reader, index) or reader.input[0] != tensor:
            skipped[node.name] = f"next conv {reader.name} has a non-constant weight"
            continue
        pairs.append((node.name, reader.name))
    return pairs, skipped


def _is_plain_conv(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A Conv with a float constant weight (and bias) that only it reads: rescaling touches no one else."""
    if node.op_type != "Conv" or len(node.input) < 2 or index.float_constant(node.input[1]) is None:
        return False
    if len(index.reader_nodes(node.input[1])) != 1 or node.input[1] in index.graph_inputs:
        return False
    if len(node.input) > 2 and node.input[2]:
        return index.float_constant(node.input[2]) is not None and len(index.reader_nodes(node.input[2])) == 1
    return True


def _group(node: onnx.NodeProto) -> int:
    return int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1))


def _bias(index: GraphIndex, node: onnx.NodeProto) -> np.ndarray | None:
    if len(node.input) > 2 and node.input[2]:
        return index.initializer_array(node.input[2]).astype(np.float64)
    return None


def _input_channel_ranges(weight: np.ndarray, group: int) -> np.ndarray:
    """Per input channel of a (grouped) conv: the largest |w| over the output channels that read it."""
    out_ch, per_group = weight.shape[0], weight.shape[1]
    magnitude = np.abs(weight).reshape(group, out_ch // group, per_group, -1).max(axis=(1, 3))
    return magnitude.reshape(group * per_group)


def _scale_input_channels(weight: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    out_ch, per_group = weight.shape[0], weight.shape[1]
    factors = scale.reshape(group, 1, per_group)
    shaped = weight.reshape(group, out_ch // group, per_group, -1) * factors[..., None]
    return shaped.reshape(weight.shape)


def _equalize_pair(weights: dict, biases: dict, first: str, second: str, group: int) -> None:
    w1, w2 = weights[first], weights[second]
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = _input_channel_ranges(w2, group)
    if r2.shape != r1.shape:
        return
    scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(np.maximum(r1, 1e-30) / np.maximum(r2, 1e-30)), 1.0)
    scale = np.clip(scale, _MIN_SCALE, _MAX_SCALE)
    weights[first] = w1 / scale.reshape(-1, *([1] * (w1.ndim - 1)))
    if biases[first] is not None:
        biases[first] = biases[first] / scale
    weights[second] = _scale_input_channels(w2, scale, group)
