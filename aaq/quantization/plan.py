"""The quantization plan: what is quantized, how, with which ranges - as data, edited not mutated.

A plan is built once from the prepared float model, its layout and the collected
statistics; ``qdq.apply_plan(float_model, plan)`` turns it into a QDQ model.
Reverting layers to float (AccuracyAwareQuantization) is ``plan.with_reverted(ids)``:
a new plan, the float model untouched, no surgery on a quantized graph.

The unit of reverting is a **group**: the layers that share an activation
quantizer (one tensor read by several layers, possibly through Reshape-like ops),
with all the quantizers they own. Reverting a group removes its weight
quantizers, its activation quantizers and its bias corrections (the original bias
is kept in the plan), and nothing else: every subset of groups gives a valid model.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from aaq.quantization.graph import GraphIndex
from aaq.quantization.hardswish import Int8HardSwish, output_grid, shift_levels
from aaq.quantization.layers import BiasSlot, Layer, Layout, QuantizerSite
from aaq.quantization.presets import QuantConfig
from aaq.quantization.ranges import QuantizedWeight, activation_params, quantize_weight
from aaq.quantization.thresholds import histogram_range
from aaq.statistics.requests import StatisticRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationQuantizer:
    """A uint8 QuantizeLinear/DequantizeLinear pair on ``site.tensor``; ``[low, high]`` is its grid."""

    site: QuantizerSite
    scale: float
    zero_point: int
    low: float
    high: float
    symmetric: bool = True

    @property
    def tensor(self) -> str:
        return self.site.tensor


@dataclass(frozen=True, eq=False)
class BiasCorrection:
    """A corrected bias; ``original`` is the float bias (``None``: the layer had none)."""

    slot: BiasSlot
    original: np.ndarray | None
    corrected: np.ndarray


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """One layer: its weight quantizer (if it has a weight), its activation quantizers, its bias correction."""

    layer: Layer
    weight: QuantizedWeight | None
    quantizers: tuple[str, ...]
    bias: BiasCorrection | None = None

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass(frozen=True)
class Group:
    """Layers reverted together and the activation quantizers they own; ``id`` is stable across edits."""

    id: int
    layers: tuple[str, ...]
    quantizers: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Plan:
    """Per-layer quantization records over ``model``, the prepared float model they apply to.

    ``source_digests`` are the digests of the models ``apply_plan`` accepts as the
    float model: the user's model the prepared one was made from, and the prepared
    one. ``reverted`` holds the ids of groups left in float; ``skipped`` the nodes of
    the quantized op types that are no layer at all, with the reason (ignored,
    latency, not float32...), so that the report can say why any node is float.
    """

    model: onnx.ModelProto
    source_digests: frozenset[str]
    layers: tuple[LayerPlan, ...]
    quantizers: Mapping[str, ActivationQuantizer]
    groups: tuple[Group, ...]
    reverted: frozenset[int] = frozenset()
    skipped: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hardswish: tuple[Int8HardSwish, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantizers", MappingProxyType(dict(self.quantizers)))
        object.__setattr__(self, "skipped", MappingProxyType(dict(self.skipped)))

    def __reduce__(self) -> tuple:
        """Pickled by its fields (an executor's worker rebuilds candidates from it); the read-only maps anew."""
        return Plan, (self.model, self.source_digests, self.layers, dict(self.quantizers), self.groups,
                      self.reverted, dict(self.skipped), self.hardswish)

    @cached_property
    def _layers_by_name(self) -> dict[str, LayerPlan]:
        return {layer.name: layer for layer in self.layers}

    @cached_property
    def _group_by_layer(self) -> dict[str, Group]:
        return {name: group for group in self.groups for name in group.layers}

    @property
    def quantized_groups(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.id not in self.reverted)

    @property
    def int8_hardswish(self) -> tuple[Int8HardSwish, ...]:
        """The hard-swishes in int8 in this plan's model: both their quantizers' groups are quantized, and a
        shift is still whole steps of the output quantizer (an edit of its scale, such as a shared concat
        grid, leaves the activation float)."""
        active = {tensor for group in self.quantized_groups for tensor in group.quantizers}
        return tuple(u for u in self.hardswish if u.input in active and u.output in active
                     and (not u.shift or np.isclose(u.levels * self.quantizers[u.output].scale, u.shift, rtol=1e-5)))

    def layer(self, name: str) -> LayerPlan:
        try:
            return self._layers_by_name[name]
        except KeyError:
            raise KeyError(f"no layer {name!r} in the plan") from None

    def group_of(self, layer: str) -> Group:
        """The group ``layer`` is reverted with."""
        try:
            return self._group_by_layer[layer]
        except KeyError:
            raise KeyError(f"no layer {layer!r} in the plan") from None

    def with_reverted(self, group_ids: Iterable[int]) -> "Plan":
        """A new plan with these groups (also) left in float."""
        ids = self._known(group_ids)
        return dataclasses.replace(self, reverted=self.reverted | ids)

    def with_layers(self, layers: Iterable[LayerPlan]) -> "Plan":
        """A new plan with these layer records replacing the ones of the same name."""
        new = {layer.name: layer for layer in layers}
        unknown = set(new) - {layer.name for layer in self.layers}
        if unknown:
            raise KeyError(f"no layers {sorted(unknown)} in the plan")
        return dataclasses.replace(self, layers=tuple(new.get(l.name, l) for l in self.layers))

    def _known(self, group_ids: Iterable[int]) -> frozenset[int]:
        ids = frozenset(int(i) for i in group_ids)
        unknown = ids - {g.id for g in self.groups}
        if unknown:
            raise KeyError(f"no groups {sorted(unknown)} in the plan (ids 0..{len(self.groups) - 1})")
        return ids

    def describe(self, reverted_why: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The plan in JSON-able values, for report.json: what is int8 with which parameters, what is float and why.

        ``reverted_why`` gives the reason of each reverted group (default: "reverted").
        """
        why = dict(reverted_why or {})

        def weight(layer: LayerPlan) -> dict[str, Any] | None:
            if layer.weight is None:
                return None
            scales = layer.weight.scale.reshape(-1)
            return {"bits": layer.weight.bits, "axis": layer.weight.axis, "scales": int(scales.size),
                    "scale_range": [float(scales.min()), float(scales.max())]}

        float_layers, int8_hardswish = dict(self.skipped), self.int8_hardswish
        for g in self.groups:
            if g.id in self.reverted:
                float_layers.update({name: why.get(g.id, "reverted") for name in g.layers})
        return {
            "groups": [{"id": g.id, "layers": list(g.layers), "quantizers": list(g.quantizers),
                        "reverted": g.id in self.reverted} for g in self.groups],
            "layers": [{"name": l.name, "op_type": l.layer.op_type, "group": self.group_of(l.name).id,
                        "int8": self.group_of(l.name).id not in self.reverted, "weight": weight(l),
                        "bias_corrected": l.bias is not None} for l in self.layers],
            "activations": [{"tensor": q.tensor, "scale": q.scale, "zero_point": q.zero_point,
                             "symmetric": q.symmetric, "range": [q.low, q.high], "output": q.site.output,
                             "group": self._group_of_tensor(q.tensor),
                             "clamp": None if q.site.clamp is None else [_finite(v) for v in q.site.clamp]}
                            for q in self.quantizers.values()],
            "float_layers": float_layers,
            "hardswish": [{"nodes": list(u.nodes), "input": u.input, "output": u.output,
                           "int8": u in int8_hardswish} for u in self.hardswish],
        }

    def _group_of_tensor(self, tensor: str) -> int | None:
        return next((g.id for g in self.groups if tensor in g.quantizers), None)


def _finite(value: float) -> float | None:
    """JSON has no infinity: an open end of a clamp is ``None``."""
    return value if np.isfinite(value) else None


def make_groups(layout: Layout) -> tuple[Group, ...]:
    """Connected components of layers linked by shared quantizers, numbered in graph order."""
    parent = {layer.name: layer.name for layer in layout.layers}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for site in layout.sites:
        first = root(site.owners[0])
        for other in site.owners[1:]:
            parent[root(other)] = first
    members: dict[str, list[str]] = {}
    for layer in layout.layers:
        members.setdefault(root(layer.name), []).append(layer.name)
    groups = []
    for gid, names in enumerate(members.values()):
        tensors = tuple(s.tensor for s in layout.sites if s.owners[0] in names)
        groups.append(Group(gid, tuple(names), tensors))
    return tuple(groups)


def activation_requests(layout: Layout, config: QuantConfig) -> list[StatisticRequest]:
    """The statistics the activation ranges of ``layout`` need."""
    return [r for site in layout.sites for r in site_requests(site, config)]


def site_requests(site: QuantizerSite, config: QuantConfig) -> tuple[StatisticRequest, StatisticRequest]:
    """The min-side and max-side statistics of one quantizer's range.

    A clamped output quantizer (``QuantizerSite.clamp``) needs the true minimum and
    maximum (not ``abs_max``): its range is the observed one cut to the clamp.
    """
    if site.clamp is not None:
        return (StatisticRequest(site.tensor, "min", "min"), StatisticRequest(site.tensor, "max", "max"))
    return config.activations.requests(site.tensor, site.output)


def histogram_requests(layout: Layout, config: QuantConfig,
                       statistics: Mapping[StatisticRequest, np.ndarray]) -> list[StatisticRequest]:
    """The second-pass histograms a histogram estimator (``kl``, ``percentile``) needs, over first-pass ranges.

    Only the quantizers whose range may be clipped get one: not output quantizers
    (full range, see ``ActivationScheme.requests``), not clamped ones.
    """
    requests = []
    for site in layout.sites:
        request = _histogram_request(site, config, statistics)
        if request is not None:
            requests.append(request)
    return requests


def _histogram_request(site: QuantizerSite, config: QuantConfig,
                       statistics: Mapping[StatisticRequest, np.ndarray]) -> StatisticRequest | None:
    if config.activations.histogram is None or site.output or site.clamp is not None:
        return None
    lo_request, hi_request = site_requests(site, config)
    return config.activations.histogram_request(site.tensor, float(statistics[lo_request]),
                                                float(statistics[hi_request]))


def clamped_range(lo: float, hi: float, clamp: tuple[float, float]) -> tuple[float, float]:
    """The observed ``[lo, hi]`` cut to ``clamp``; a range entirely outside it collapses onto its edge."""
    low, high = clamp
    lo, hi = min(max(lo, low), high), max(min(hi, high), low)
    return lo, max(hi, lo)


def build_plan(model: onnx.ModelProto, source_digests: frozenset[str], layout: Layout, config: QuantConfig,
               statistics: Mapping[StatisticRequest, np.ndarray]) -> Plan:
    """The plan for ``layout`` with ranges from ``statistics`` (``activation_requests``, ``histogram_requests``)."""
    index = GraphIndex(model.graph)
    quantizers = {}
    for site in layout.sites:
        lo_request, hi_request = site_requests(site, config)
        lo, hi = float(statistics[lo_request]), float(statistics[hi_request])
        histogram = _histogram_request(site, config, statistics)
        if histogram is not None:
            lo, hi = histogram_range(config.activations, lo, hi, histogram, statistics[histogram])
        scheme = config.activations
        if site.clamp is not None:
            lo, hi = clamped_range(lo, hi, site.clamp)
            if lo < 0 and -lo != hi:  # a cut range is not symmetric any more: its own zero point
                scheme = dataclasses.replace(scheme, symmetric=False)
        params = activation_params(lo, hi, scheme)
        quantizers[site.tensor] = ActivationQuantizer(site, params.scale, params.zero_point, params.low,
                                                      params.high, scheme.symmetric)
    layers = []
    for layer in layout.layers:
        weight = None
        if layer.weight is not None:
            axis = layer.weight_axis if config.weights.per_channel else None
            weight = quantize_weight(index.initializer_array(layer.weight), axis, config.weights)
        layers.append(LayerPlan(layer, weight, layout.sites_of(layer.name)))
    hardswish = []
    for unit in layout.hardswish:
        quantizer = quantizers[unit.output]
        if quantizer.symmetric and quantizer.low < 0:  # the activation's own lower bound, not -high
            step, zero_point = output_grid(unit, quantizer.high)
            quantizers[unit.output] = quantizer = dataclasses.replace(
                quantizer, scale=step, zero_point=zero_point, low=-zero_point * step,
                high=(255 - zero_point) * step, symmetric=False)
        if unit.shift:  # the output's step set so that the shift is whole steps (see ``hardswish``), or float
            fit = shift_levels(unit.shift, quantizer.scale, quantizer.zero_point)
            if fit is None:
                continue
            unit, step = dataclasses.replace(unit, levels=fit[0]), fit[1]
            quantizers[unit.output] = dataclasses.replace(quantizer, scale=step, low=-quantizer.zero_point * step,
                                                          high=(255 - quantizer.zero_point) * step)
        hardswish.append(unit)
    return Plan(model, frozenset(source_digests), tuple(layers), quantizers, make_groups(layout),
                skipped=layout.skipped, hardswish=tuple(hardswish))
