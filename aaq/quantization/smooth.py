"""SmoothQuant (Xiao et al. 2023): move outlier activation channels' range into the weights of MatMul / Gemm.

A few input channels of a transformer's MatMul can be 10-100x larger than the rest;
one per-tensor activation grid then spends its levels on them and rounds every other
channel to a handful of values. With ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``
(``W_j`` the weights reading input channel ``j``), ``X W = (X / s) (diag(s) W)``: the
activation's channels get even ranges, the weights (per output channel, so they
absorb it better) take the rest. ``alpha`` 0.5 splits the difficulty evenly.

Where ``1 / s`` goes: into a ``LayerNormalization``'s scale and bias when it produces
``X`` and only smoothed layers read ``X`` (free); else an explicit ``Mul`` by the
constant ``1 / s`` before the smoothed layers (it runs in float in ONNX Runtime: it is
only inserted where the activation has outlier channels, ``max / median`` of the
per-channel maxima at least ``OUTLIER_RATIO``). Layers reading one tensor share one
``s`` (the max over all their weights).

The per-channel maxima are a ``StatisticRequest`` (``abs_max`` per channel, max over
samples) collected by the one statistics pass; nothing here infers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import helper

from aaq.quantization.graph import GraphEditor, GraphIndex, drop_unused_initializers
from aaq.statistics.requests import StatisticRequest

logger = logging.getLogger(__name__)

OUTLIER_RATIO = 4.0
_MIN_SCALE, _MAX_SCALE = 1e-5, 1e5


@dataclass(frozen=True)
class SmoothTarget:
    """The layers reading one activation tensor that SmoothQuant can rescale (weights along input channels)."""

    tensor: str
    layers: tuple[str, ...]

    @property
    def request(self) -> StatisticRequest:
        return StatisticRequest(self.tensor, "abs_max", "max", axis=-1)


@dataclass
class Smoothing:
    """The smoothed model and what was done, per activation tensor."""

    model: onnx.ModelProto
    smoothed: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"smoothed": dict(self.smoothed), "skipped": dict(self.skipped)}


def smooth_targets(model: onnx.ModelProto, layer_names: set[str] | None = None) -> list[SmoothTarget]:
    """The activation tensors read by MatMul / Gemm with a constant 2-D weight (among ``layer_names``)."""
    index = GraphIndex(model.graph)
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if layer_names is not None and node.name not in layer_names:
            continue
        if _weight_rows(node, index) is not None and node.input[0] not in index.initializers:
            found.setdefault(node.input[0], []).append(node.name)
    return [SmoothTarget(tensor, tuple(names)) for tensor, names in found.items()]


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _weight_rows(node: onnx.NodeProto, index: GraphIndex) -> np.ndarray | None:
    """The weight with input channels along axis 0 (``None``: not a smoothable layer)."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    weight = index.float_constant(node.input[1])
    if weight is None or weight.ndim != 2 or len(index.reader_nodes(node.input[1])) != 1:
        return None
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            return None
        return weight.T if _attr(node, "transB", 0) else weight
    return weight


def smooth(model: onnx.ModelProto, targets: list[SmoothTarget], maxima: Mapping[StatisticRequest, np.ndarray],
           alpha: float) -> Smoothing:
    """A copy of ``model`` with each target's scale moved from its activation into its layers' weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    editor = GraphEditor(out.graph)
    result = Smoothing(out)
    inserted: dict[str, list[onnx.NodeProto]] = {}
    for target in targets:
        amax = np.asarray(maxima[target.request], dtype=np.float64).reshape(-1)
        rows = {name: _weight_rows(editor.nodes[name], editor) for name in target.layers}
        if any(r is None or r.shape[0] != amax.size for r in rows.values()):
            result.skipped[target.tensor] = "the activation's channels do not match the weights' input channels"
            continue
        wmax = np.max([np.abs(r).max(axis=1) for r in rows.values()], axis=0).astype(np.float64)
        ratio = float(amax.max() / max(np.median(amax), 1e-12))
        scale = np.where((amax > 0) & (wmax > 0),
                         np.power(np.maximum(amax, 1e-12), alpha) / np.power(np.maximum(wmax, 1e-12), 1 - alpha),
                         1.0)
        scale = np.clip(scale, _MIN_SCALE, _MAX_SCALE)
        where = _fold_into_layernorm(editor, target, scale)
        if where is None:
            if ratio < OUTLIER_RATIO:
                result.skipped[target.tensor] = (f"no outlier channel (max/median {ratio:.1f} < {OUTLIER_RATIO}): "
                                                 f"an explicit Mul would cost more than it gains")
                continue
            where = _insert_mul(editor, target, scale, inserted)
        for name, r in rows.items():
            node = editor.nodes[name]
            scaled = r * scale[:, None]
            transposed = node.op_type == "Gemm" and _attr(node, "transB", 0)
            node.input[1] = editor.add_initializer((scaled.T if transposed else scaled).astype(np.float32),
                                                   f"{name}.weight_smooth")
        result.smoothed[target.tensor] = {"layers": list(target.layers), "into": where,
                                          "outlier_ratio": round(ratio, 2), "alpha": alpha,
                                          "scale_range": [float(scale.min()), float(scale.max())]}
    editor.commit(inserted)
    drop_unused_initializers(out.graph)
    if result.smoothed:
        logger.info("SmoothQuant (alpha %.2f): %d activation(s) smoothed", alpha, len(result.smoothed))
    return result


def _fold_into_layernorm(editor: GraphEditor, target: SmoothTarget, scale: np.ndarray) -> str | None:
    producer = editor.producer.get(target.tensor)
    if producer is None or producer.op_type != "LayerNormalization" or target.tensor in editor.protected:
        return None
    if {n.name for n in editor.reader_nodes(target.tensor)} != set(target.layers) or len(producer.input) < 2:
        return None
    if _attr(producer, "axis", -1) != -1:
        return None
    params = [name for name in producer.input[1:3] if name]
    values = [editor.float_constant(name) for name in params]
    if any(v is None or v.shape != scale.shape or len(editor.reader_nodes(n)) != 1 for v, n in zip(values, params)):
        return None
    for position, (name, value) in enumerate(zip(params, values), start=1):
        producer.input[position] = editor.add_initializer((value / scale).astype(np.float32), f"{name}_smooth")
    return f"LayerNormalization {producer.name}"


def _insert_mul(editor: GraphEditor, target: SmoothTarget, scale: np.ndarray,
                inserted: dict[str, list[onnx.NodeProto]]) -> str:
    factor = editor.add_initializer((1.0 / scale).astype(np.float32), f"{target.tensor}_smooth_scale")
    out = editor.new_name(f"{target.tensor}_smoothed")
    name = editor.new_node_name(f"{target.tensor}_smooth")
    mul = helper.make_node("Mul", [target.tensor, factor], [out], name=name)
    first = min(target.layers, key=lambda n: editor.order[n])
    inserted[first] = [mul, editor.nodes[first]]
    for layer in target.layers:
        editor.nodes[layer].input[0] = out
    return f"Mul {name}"
