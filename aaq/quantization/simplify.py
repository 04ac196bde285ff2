"""Exact algebraic simplifications of a float graph, made before quantization (``prepare`` step 6).

Each rewrite keeps what the graph computes (up to float rounding) and the name of
the tensor it ends in, and returns the names of the nodes it removed. They exist
because of what ONNX Runtime fuses, measured with ORT 1.32 on PP-OCR cls/rec (see
``prepare``): a folded ``Conv -> Mul/Add`` is one conv (and a QLinearConv when
quantized) instead of a conv and float passes between a DequantizeLinear and a
QuantizeLinear; ``HardSigmoid + Mul`` is fused by ORT into the conv before it (float)
and reads its input once (quantized), the decomposed hard-swish does neither.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.graph import GraphEditor, GraphIndex, drop_unused_initializers

logger = logging.getLogger(__name__)

_SHAPE_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Cast"}
_AFFINE_OPS = {"Mul", "Add", "Sub", "Div"}
_SIXTH = 1.0 / 6.0


def simplify(graph: onnx.GraphProto, opset: int) -> dict[str, str]:
    """Apply every rewrite in place, in order; the removed nodes, name -> op type."""
    removed: dict[str, str] = {}
    removed.update(fold_constant_shape_ops(graph, opset))
    removed.update(fold_conv_affine(graph))
    removed.update(fuse_hardswish(graph, opset))
    removed.update(fold_affine_into_conv(graph))
    if removed:
        drop_unused_initializers(graph)
    return removed


def _default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def fold_constant_shape_ops(graph: onnx.GraphProto, opset: int) -> dict[str, str]:
    """Evaluate shape and cast ops whose inputs are all initializers (a bias ``Reshape(b, shape)``)."""
    g = GraphEditor(graph)
    for node in graph.node:
        if (node.op_type not in _SHAPE_OPS or not _default_domain(node) or len(node.output) != 1
                or not node.input or not all(name in g.constants for name in node.input if name)
                or node.output[0] in g.protected):
            continue
        try:
            value = _evaluate(node, g, opset)
        except Exception as exc:  # an op the reference evaluator refuses: leave it to ONNX Runtime
            logger.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
            continue
        g.fold_into_initializer(node, value)
    return g.commit()


def _evaluate(node: onnx.NodeProto, g: GraphIndex, opset: int) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    sub = helper.make_graph([node], "fold", [], [helper.make_empty_tensor_value_info(node.output[0])],
                            [g.constants[name] for name in dict.fromkeys(inputs)])
    model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {})[0]


def _channel_vector(value: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """``value`` as one number per channel of a rank-``rank`` tensor broadcast against it, or ``None``.

    Accepted: a scalar, or a shape that right-aligned to ``rank`` dims is 1 everywhere
    except possibly ``channels`` on ``axis`` (so broadcasting does not change the
    tensor's shape).
    """
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,)).copy()


def _conv_parts(node: onnx.NodeProto, g: GraphIndex) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The float weight and bias (``None``: no bias) of a Conv whose weight and bias are initializers."""
    if node.op_type != "Conv" or not _default_domain(node) or len(node.input) < 2:
        return None
    weight = g.float_constant(node.input[1])
    if weight is None or weight.ndim < 3:
        return None
    if len(node.input) > 2 and node.input[2]:
        bias = g.float_constant(node.input[2])
        if bias is None or bias.shape != (weight.shape[0],):
            return None
        return weight, bias
    return weight, None


def _set_conv_parts(node: onnx.NodeProto, g: GraphEditor, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """New initializers (the old ones may be shared) for the conv's weight and bias."""
    w_name = g.add_initializer(weight.astype(np.float32), f"{node.name}.weight_folded")
    inputs = [node.input[0], w_name]
    if bias is not None:
        inputs.append(g.add_initializer(bias.astype(np.float32), f"{node.name}.bias_folded"))
    del node.input[:]
    node.input.extend(inputs)


def fold_conv_affine(graph: onnx.GraphProto) -> dict[str, str]:
    """Fold ``Conv -> Mul/Add/Sub/Div(per-channel constant)`` chains into the conv's weight and bias."""
    g = GraphEditor(graph)
    for conv in graph.node:
        parts = _conv_parts(conv, g)
        if parts is None:
            continue
        weight, bias = parts
        weight, bias = weight.astype(np.float64), None if bias is None else bias.astype(np.float64)
        channels, rank = weight.shape[0], weight.ndim
        folded = []
        while True:
            op = g.sole_reader(conv.output[0])
            if op is None or op.op_type not in _AFFINE_OPS or not _default_domain(op) or len(op.input) != 2:
                break
            position = list(op.input).index(conv.output[0])
            other = op.input[1 - position]
            value = g.float_constant(other) if other not in g.producer else None
            vector = None if value is None else _channel_vector(value, rank, channels)
            if vector is None or (op.op_type in ("Sub", "Div") and position != 0):
                break
            if op.op_type == "Div" and not np.all(vector != 0):
                break
            shape = (-1,) + (1,) * (rank - 1)
            if op.op_type in ("Mul", "Div"):
                factor = vector if op.op_type == "Mul" else 1.0 / vector
                weight = weight * factor.reshape(shape)
                bias = None if bias is None else bias * factor
            else:
                shift = vector if op.op_type == "Add" else -vector
                bias = shift if bias is None else bias + shift
            conv.output[0] = op.output[0]
            folded.append(op)
            g.remove([op])
        if folded:
            _set_conv_parts(conv, g, weight, bias)
    return g.commit()


def has_hardswish(graph: onnx.GraphProto) -> bool:
    """Whether ``graph`` holds a decomposed hard-swish ``fuse_hardswish`` would fuse."""
    g = GraphIndex(graph)
    return any(_hardswish_at(node, g) is not None for node in graph.node)


def fuse_hardswish(graph: onnx.GraphProto, opset: int) -> dict[str, str]:
    """``x * Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``, or the division first) -> ``HardSwish(x)``.

    ``HardSwish`` needs opset 14; below, ``x * HardSigmoid(x)`` (alpha 1/6, beta 0.5),
    which ORT fuses the same way in float but which, quantized, reads the
    dequantized ``x`` twice: ORT then gives each reader its own DequantizeLinear (one
    more float pass per hard-swish), while ``HardSwish`` is expanded only after that.
    """
    g = GraphEditor(graph)
    replacements: dict[str, list[onnx.NodeProto]] = {}
    for add in graph.node:
        match = _hardswish_at(add, g)
        if match is None:
            continue
        x, nodes = match
        last = nodes[-1]
        if opset >= 14:
            fused = [helper.make_node("HardSwish", [x], [last.output[0]], name=last.name)]
        else:
            gate = g.new_name(f"{last.output[0]}_hardsigmoid")
            fused = [helper.make_node("HardSigmoid", [x], [gate], name=g.new_node_name(f"{last.name}_hardsigmoid"),
                                      alpha=_SIXTH, beta=0.5),
                     helper.make_node("Mul", [x, gate], [last.output[0]], name=last.name)]
        g.remove(nodes[:-1])
        replacements[last.name] = fused
    removed = g.commit(replacements)
    return removed


def _hardswish_at(add: onnx.NodeProto, g: GraphIndex) -> tuple[str, list[onnx.NodeProto]] | None:
    """``(x, [Add, Clip, ..., last])`` when a hard-swish of ``x`` starts at ``add``."""
    if add.op_type != "Add" or not _default_domain(add) or len(add.input) != 2:
        return None
    for position in (0, 1):
        x, three = add.input[position], add.input[1 - position]
        if _close(g.scalar(three), 3.0) and g.float_constant(x) is None:
            break
    else:
        return None
    clip = g.sole_reader(add.output[0])
    if clip is None or clip.op_type != "Clip" or not _default_domain(clip) or not _clips_to(clip, g, 0.0, 6.0):
        return None
    step = g.sole_reader(clip.output[0])
    if step is None:
        return None
    if _is_times(step, x, clip.output[0]):  # x * clip, then / 6
        last = g.sole_reader(step.output[0])
        if last is None or not _is_sixth(last, step.output[0], g):
            return None
    elif _is_sixth(step, clip.output[0], g):  # clip / 6, then x *
        last = g.sole_reader(step.output[0])
        if last is None or not _is_times(last, x, step.output[0]):
            return None
    else:
        return None
    return x, [add, clip, step, last]


def _close(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * max(1.0, abs(target))


def _clips_to(clip: onnx.NodeProto, g: GraphIndex, low: float, high: float) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in clip.attribute}
    if "min" in attrs or "max" in attrs:  # Clip < 11
        return _close(attrs.get("min"), low) and _close(attrs.get("max"), high)
    if len(clip.input) != 3 or not clip.input[1] or not clip.input[2]:
        return False
    return _close(g.scalar(clip.input[1]), low) and _close(g.scalar(clip.input[2]), high)


def _is_times(node: onnx.NodeProto, x: str, other: str) -> bool:
    return (node.op_type == "Mul" and _default_domain(node) and len(node.input) == 2
            and sorted(node.input) == sorted([x, other]))


def _is_sixth(node: onnx.NodeProto, tensor: str, g: GraphIndex) -> bool:
    """``tensor / 6`` or ``tensor * (1/6)``."""
    if not _default_domain(node) or len(node.input) != 2 or tensor not in node.input:
        return False
    other = node.input[1 - list(node.input).index(tensor)]
    if node.op_type == "Div":
        return node.input[0] == tensor and _close(g.scalar(other), 6.0)
    return node.op_type == "Mul" and _close(g.scalar(other), _SIXTH)


def fold_affine_into_conv(graph: onnx.GraphProto) -> dict[str, str]:
    """Fold ``x * s + b`` (per input channel, constants) feeding only a ``Conv`` into its weight and bias.

    A scale folds exactly whatever the padding (a padded zero times ``s`` is zero), a
    shift only into a conv without padding (a padded zero plus ``b`` is not zero): into
    a padded conv only a chain of ``Mul``/``Div`` right before it is folded.
    """
    g = GraphEditor(graph)
    for conv in graph.node:
        parts = _conv_parts(conv, g)
        if parts is None:
            continue
        weight, bias = parts
        chain = _affine_chain(conv.input[0], g, weight, conv, shift_allowed=_unpadded(conv))
        if chain is None:
            continue
        source, nodes, scale, shift = chain
        weight64 = weight.astype(np.float64)
        groups = int(next((a.i for a in conv.attribute if a.name == "group"), 1))
        per_group = weight.shape[1]
        # input channel of each (output channel, weight column)
        index = (np.arange(weight.shape[0]) // (weight.shape[0] // groups))[:, None] * per_group + np.arange(per_group)
        shape = weight.shape[:2] + (1,) * (weight.ndim - 2)
        new_weight = weight64 * scale[index].reshape(shape)
        added = (weight64.reshape(weight.shape[0], per_group, -1).sum(axis=2) * shift[index]).sum(axis=1)
        new_bias = added if bias is None else bias.astype(np.float64) + added
        conv.input[0] = source
        _set_conv_parts(conv, g, new_weight, new_bias if np.any(new_bias) or bias is not None else None)
        g.remove(nodes)
    return g.commit()


def _unpadded(conv: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        kernel = attrs.get("kernel_shape")
        return kernel is not None and all(k == 1 for k in kernel)
    return not any(attrs.get("pads", []))


def _affine_chain(tensor: str, g: GraphIndex, weight: np.ndarray, conv: onnx.NodeProto,
                  shift_allowed: bool) -> tuple[str, list[onnx.NodeProto], np.ndarray, np.ndarray] | None:
    """Walk up from the conv's input through ``Mul/Add/Sub/Div`` by per-channel constants.

    Returns the tensor the chain starts from, its nodes, and ``(scale, shift)`` per
    input channel with ``input = source * scale + shift``; ``None`` when there is none.
    """
    groups = int(next((a.i for a in conv.attribute if a.name == "group"), 1))
    channels, rank = weight.shape[1] * groups, weight.ndim
    scale, shift = np.ones(channels), np.zeros(channels)
    nodes: list[onnx.NodeProto] = []
    reader = conv
    while True:
        op = g.producer.get(tensor)
        if (op is None or op.op_type not in _AFFINE_OPS or not _default_domain(op) or len(op.input) != 2
                or g.sole_reader(tensor) is not reader):
            break
        found = None
        for position in (0, 1):
            other = op.input[1 - position]
            value = g.float_constant(other) if other not in g.producer else None
            vector = None if value is None else _channel_vector(value, rank, channels)
            if vector is not None and op.input[position] not in g.constants:
                found = position, vector
                break
        if found is None:
            break
        position, vector = found
        if op.op_type in ("Sub", "Div") and position != 0:
            break
        if (op.op_type == "Div" and not np.all(vector != 0)) or (op.op_type in ("Add", "Sub") and not shift_allowed):
            break
        # input = f(op_in), with op_in = source * scale' + shift' -> compose
        if op.op_type == "Mul":
            scale, shift = scale * vector, shift
        elif op.op_type == "Div":
            scale, shift = scale / vector, shift
        elif op.op_type == "Add":
            shift = shift + scale * vector
        else:
            shift = shift - scale * vector
        nodes.append(op)
        reader, tensor = op, op.input[position]
    if not nodes:
        return None
    return tensor, nodes, scale, shift
