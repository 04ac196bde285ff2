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
what the model computes.

High-bias absorption (the paper's section 4.3), where ``f`` is ``Relu`` or nothing,
A's BatchNormalization was folded (``PreparedModel.bn_moments``: its beta and |gamma|,
the pre-activation mean and spread per channel, divided by the equalization scale)
and B has no padding: ``c = max(0, beta - 3 gamma)`` moves from A's bias into B's
(``b_B += W_B c``, summed over B's kernel). The outputs stay the same wherever A's
pre-activation is at least ``c`` (the ReLU is not crossed: about 99.9 % of a normal
channel's values); what it buys is a narrower range of the tensor between A and B.
Without a folded BatchNormalization nothing is absorbed: the observed statistics
would come from the one statistics pass, after which the tensor's ranges would have
to be read again.

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
    absorbed: dict[str, int] = field(default_factory=dict)
    """First conv of a pair -> how many of its channels had a high bias absorbed into the second."""

    def summary(self) -> dict:
        note = None if self.pairs else ("no equalizable Conv -> (Relu/LeakyRelu/PRelu/none) -> Conv pair: "
                                        "cross-layer equalization changed nothing")
        return {"pairs": [list(p) for p in self.pairs], "skipped": dict(self.skipped),
                "high_bias_absorbed": dict(self.absorbed), "note": note}


def equalize(model: onnx.ModelProto, moments: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
             absorb_high_bias: bool = True) -> Equalization:
    """A copy of ``model`` with every equalizable Conv pair rescaled (``model`` is not modified).

    ``moments``: conv name -> (beta, |gamma|) of its folded BatchNormalization, for
    high-bias absorption (``absorb_high_bias``).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out.graph)
    pairs, skipped, between = _find_pairs(index)
    if not pairs:
        return Equalization(out, [], skipped)
    editor = GraphEditor(out.graph)
    weights = {name: editor.initializer_array(editor.nodes[name].input[1]).astype(np.float64)
               for pair in pairs for name in pair}
    biases = {name: _bias(editor, editor.nodes[name]) for pair in pairs for name in pair}
    scales = {first: np.ones(weights[first].shape[0]) for first, _ in pairs}
    for _ in range(_SWEEPS):
        for first, second in pairs:
            scales[first] = scales[first] * _equalize_pair(weights, biases, first, second,
                                                           _group(editor.nodes[second]))
    absorbed = {}
    if absorb_high_bias:
        for first, second in pairs:
            count = _absorb_high_bias(weights, biases, first, second, editor.nodes[second], between[first],
                                      (moments or {}).get(first), scales[first])
            if count:
                absorbed[first] = count
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
    logger.info("cross-layer equalization: %d conv pair(s) rescaled, high biases absorbed after %d",
                len(pairs), len(absorbed))
    return Equalization(out, pairs, skipped, absorbed)


def _find_pairs(index: GraphIndex) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str | None]]:
    """The pairs, the chains skipped with the reason, and each pair's activation (first conv -> op or None)."""
    pairs, skipped, between = [], {}, {}
    for node in index.graph.node:
        if not _is_plain_conv(node, index):
            continue
        tensor = node.output[0]
        reader = index.sole_reader(tensor)
        if reader is None:
            continue
        activation = reader.op_type if reader.op_type in HOMOGENEOUS_OPS else None
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
        between[node.name] = activation
    return pairs, skipped, between


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


def _equalize_pair(weights: dict, biases: dict, first: str, second: str, group: int) -> np.ndarray:
    """Rescale one pair in place; the scale the first conv's output channels were divided by."""
    w1, w2 = weights[first], weights[second]
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = _input_channel_ranges(w2, group)
    if r2.shape != r1.shape:
        return np.ones(w1.shape[0])
    scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(np.maximum(r1, 1e-30) / np.maximum(r2, 1e-30)), 1.0)
    scale = np.clip(scale, _MIN_SCALE, _MAX_SCALE)
    weights[first] = w1 / scale.reshape(-1, *([1] * (w1.ndim - 1)))
    if biases[first] is not None:
        biases[first] = biases[first] / scale
    weights[second] = _scale_input_channels(w2, scale, group)
    return scale


def _absorb_high_bias(weights: dict, biases: dict, first: str, second: str, node: onnx.NodeProto,
                      activation: str | None, moments: tuple[np.ndarray, np.ndarray] | None,
                      scale: np.ndarray) -> int:
    """Move ``c = max(0, beta - 3 gamma)`` (equalized) from ``first``'s bias into ``second``'s; channels moved."""
    if activation not in (None, "Relu") or moments is None or biases[first] is None or _padded(node):
        return 0
    beta, gamma = (np.asarray(m, np.float64) / scale for m in moments)
    c = np.maximum(0.0, beta - 3.0 * gamma)
    if c.shape != biases[first].shape or not np.any(c > 0):
        return 0
    w2 = weights[second]
    group = _group(node)
    out_ch, per_group = w2.shape[0], w2.shape[1]
    shift = c.reshape(group, 1, per_group, 1)
    moved = (w2.reshape(group, out_ch // group, per_group, -1) * shift).sum(axis=(2, 3)).reshape(out_ch)
    biases[first] = biases[first] - c
    biases[second] = (np.zeros(out_ch) if biases[second] is None else biases[second]) + moved
    return int(np.count_nonzero(c))


def _padded(node: onnx.NodeProto) -> bool:
    """Zero padding would read the shifted tensor's zeros as ``-c``: absorption is exact only without it."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto not in ("NOTSET", "VALID") or any(int(p) != 0 for p in attrs.get("pads", []))
