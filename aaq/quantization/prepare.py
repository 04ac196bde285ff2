"""Make a float model ready for quantization, on a copy, without changing what it computes.

What it does, in order, and why:

1. ``onnx.checker`` - a model that does not check is refused with the checker's reason.
2. an opset below ``min_opset`` is converted (``onnx.version_converter``): per-channel
   ``DequantizeLinear(axis=...)`` only exists from opset 13 (ORT's own quantizer writes
   an invalid model for such inputs), per-tensor Q/DQ from opset 10. A model with a
   decomposed hard-swish goes to opset 14 instead of 13 (when the converter can), for
   the ``HardSwish`` op of step 6; per-tensor weights never force a conversion.
3. ``Constant`` nodes become initializers and ``Identity`` of an initializer is
   bypassed, so weights exported that way are seen as weights.
4. Every node gets a unique name (layers, groups and ``ignored.scope`` use names).
5. ``BatchNormalization`` right after a ``Conv`` is folded into the conv's weights and
   bias, so the conv is quantized with the weights that really run.
6. Algebraic simplifications that ONNX Runtime does not make on its own and that
   decide what a quantized model can fuse (``simplify``): shape ops on constants are
   evaluated; a per-channel ``Mul``/``Add``/``Sub``/``Div`` by a constant right after a
   ``Conv`` is folded into it (the conv then keeps ``Relu``/``Clip`` fusions and its
   output quantizer sits where ORT needs it); the decomposed hard-swish
   ``x * Clip(x + 3, 0, 6) / 6`` becomes ``HardSwish`` (below opset 14,
   ``x * HardSigmoid(x)``, alpha 1/6, beta 0.5);
   a per-channel affine ``x * s + b`` feeding a ``Conv`` is folded into its weights
   (and bias, when the conv has no padding, so that the border is exact).
7. Shape inference, for tensor element types and shapes (the latency rules of
   ``layers`` read spatial sizes); when it fails (it does on real models)
   quantization goes on without it, assuming float tensors of unknown shapes.

Why 6, measured with ONNX Runtime 1.32 on PP-OCR cls/rec: ORT's float optimizer fuses
``HardSwish`` (or ``HardSigmoid + Mul``) into the NCHWc conv before it, but not the
decomposed form, so the float model itself spends 40 % of its time in
``Add/Clip/Mul/Div`` (one thread, batch 16: cls 3.9 of 9.6 ms, rec 121 of 283 ms). In
a QDQ model every such op runs in float between a DequantizeLinear and a
QuantizeLinear, and the decomposed hard-swish reads its input twice (ORT gives each
reader its own DequantizeLinear): 4 float passes and 2 dequantizations where
``HardSwish`` needs 2 and 1. The learnable affine ops of PP-LCNet (a scalar ``Mul`` and
``Add`` after every conv and activation) are up to 4 more float passes per block.
The simplified float models alone take 0.75-0.8x (cls) and 0.6-0.75x (rec) of the
original latency.

Tensor names are kept: a folded conv takes over its BatchNormalization's (or last
folded op's) output name, and a fused hard-swish its last op's, so every activation
the prepared model computes has the same name and the same values (up to float
rounding) in the original model, except the ``HardSigmoid`` output of a hard-swish
fused below opset 14. That is what lets the pipeline collect statistics on the user's float
model for tensors of the prepared one; a tensor only the prepared model has is
collected on the prepared model (see ``algorithms.default``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from aaq.errors import ModelError
from aaq.quantization.graph import GraphIndex, constant_value, drop_unused_initializers, unique_name
from aaq.quantization.simplify import has_hardswish, simplify
from aaq.state import model_digest

logger = logging.getLogger(__name__)

PER_CHANNEL_OPSET = 13
PER_TENSOR_OPSET = 10
HARDSWISH_OPSET = 14


@dataclass
class PreparedModel:
    """The prepared float model and what preparation did, for the log and the report."""

    model: onnx.ModelProto
    source_digest: str
    opset_from: int
    folded_batchnorms: list[str] = field(default_factory=list)
    shape_inference: bool = True
    elem_types: dict[str, int] = field(default_factory=dict)
    simplified: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)
    bn_moments: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Conv name -> (beta, |gamma|) of the BatchNormalization folded into it: the mean and standard deviation
    of the conv's output per channel as training saw it (what high-bias absorption reads)."""

    @property
    def removed_nodes(self) -> dict[str, str]:
        """Nodes of the user's model that preparation removed, name -> op type."""
        removed = {name: "BatchNormalization" for name in self.folded_batchnorms}
        removed.update(self.simplified)
        return removed

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for op in self.simplified.values():
            counts[op] = counts.get(op, 0) + 1
        return {"opset_from": self.opset_from, "opset": _opset(self.model),
                "folded_batchnorms": list(self.folded_batchnorms), "simplified": dict(sorted(counts.items())),
                "shape_inference": self.shape_inference}


def prepare_model(model: onnx.ModelProto, min_opset: int = PER_CHANNEL_OPSET) -> PreparedModel:
    """A prepared copy of ``model`` (which is not modified), at opset ``min_opset`` or above."""
    digest = model_digest(model)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    _check(prepared)
    opset_from = _opset(prepared)
    target = min_opset
    if min_opset >= PER_CHANNEL_OPSET and opset_from < HARDSWISH_OPSET:
        if has_hardswish(prepared.graph):
            target = HARDSWISH_OPSET
    if opset_from < target:
        try:
            prepared = _convert_opset(prepared, opset_from, target)
        except ModelError:
            if target == min_opset:
                raise
            logger.info("opset %d unreachable: hard-swish stays as x * HardSigmoid(x)", target)
            prepared = _convert_opset(prepared, opset_from, min_opset)
    _constants_to_initializers(prepared.graph)
    _bypass_initializer_identities(prepared.graph)
    _name_nodes(prepared.graph)
    moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    folded = fold_batchnorms(prepared.graph, moments)
    simplified = simplify(prepared.graph, _opset(prepared))
    elem_types, shapes, inferred = _infer_types(prepared)
    if folded:
        logger.info("folded %d BatchNormalization node(s) into the convolutions before them", len(folded))
    if simplified:
        logger.info("simplified the graph: %d node(s) folded or fused away", len(simplified))
    return PreparedModel(prepared, digest, opset_from, folded, inferred, elem_types, simplified, shapes, moments)


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no default-domain (ai.onnx) opset")


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(f"the model does not pass the ONNX checker: {first}") from None
    except ValueError as exc:  # larger than 2 GB: the in-memory checker cannot run
        logger.debug("ONNX checker skipped: %s", exc)


def _convert_opset(model: onnx.ModelProto, opset_from: int, opset_to: int) -> onnx.ModelProto:
    from onnx import version_converter

    logger.info("converting the model from opset %d to %d (the Q/DQ nodes need it)", opset_from, opset_to)
    try:
        converted = version_converter.convert_version(model, opset_to)
    except Exception as exc:  # the converter raises bare RuntimeErrors naming the failing op
        hint = ""
        if opset_to > PER_TENSOR_OPSET:
            hint = (f"; per-tensor weights (weights.granularity \"pertensor\") need only opset "
                    f"{PER_TENSOR_OPSET}")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(f"cannot convert the model from opset {opset_from} to {opset_to}: "
                         f"{reason}{hint}") from None
    return converted


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        value = constant_value(node) if node.output[0] not in outputs else None
        if value is None:
            kept.append(node)
        else:
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _bypass_initializer_identities(graph: onnx.GraphProto) -> None:
    index = GraphIndex(graph)
    alias = {}
    kept = []
    for node in graph.node:
        if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in index.initializers
                and node.output[0] not in index.protected):
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    if not alias:
        return
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for position, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = unique_name(node.name or f"{node.op_type}_{position}", seen)
        else:
            seen.add(node.name)


def fold_batchnorms(graph: onnx.GraphProto,
                    moments: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> list[str]:
    """Fold every inference-mode ``BatchNormalization`` fed only by a ``Conv`` into it, in place.

    Returns the names of the folded BatchNormalization nodes; ``moments`` (when given)
    gets each folded conv's (beta, |gamma|). New weight and bias
    initializers are added (shared initializers are never rewritten); the conv takes
    over the BatchNormalization's output name.
    """
    index = GraphIndex(graph)
    inits, names = index.initializers, index.tensor_names
    folded: list[str] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        conv = index.producer.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or index.sole_reader(bn.input[0]) is None
                or not all(name in inits for name in list(bn.input[1:]) + [i for i in conv.input[1:] if i])):
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:])
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if weight.dtype != np.float32:
            continue
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2
                and conv.input[2] else np.zeros(weight.shape[0]))
        factor = scale / np.sqrt(var + eps)
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_name = unique_name(f"{conv.name}.weight_bnfold", names)
        b_name = unique_name(f"{conv.name}.bias_bnfold", names)
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        if moments is not None:
            moments[conv.name] = (beta, np.abs(scale))
        folded.append(bn.name)  # node names are unique here (_name_nodes ran first)
    if folded:
        gone = set(folded)
        kept = [n for n in graph.node if not (n.op_type == "BatchNormalization" and n.name in gone)]
        del graph.node[:]
        graph.node.extend(kept)
        drop_unused_initializers(graph)
    return folded


def _infer_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple], bool]:
    """Element type and shape (``None`` for an unknown dim) of every tensor shape inference can tell.

    ``({}, {}, False)`` beyond the graph's inputs and initializers when it fails.
    """
    types = {i.name: i.data_type for i in model.graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    shapes = {v.name: _dims(v) for v in model.graph.input}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # any failure: quantize without it
        logger.warning("shape inference failed (%s); going on without tensor types", str(exc).splitlines()[0])
        return types, {k: v for k, v in shapes.items() if v is not None}, False
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
            shapes[value.name] = _dims(value)
    return types, {k: v for k, v in shapes.items() if v is not None}, True


def _dims(value: onnx.ValueInfoProto) -> tuple | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
