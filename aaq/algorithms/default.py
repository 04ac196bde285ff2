"""DefaultQuantization: statistics, ranges, QDQ insertion and bias correction, as POT's algorithm did.

``statistics_needs`` prepares the float model (opset >= 13, BatchNorm folded,
simplified; see ``quantization.prepare``), finds the layers and quantizer sites on
the *prepared* model and caches all of it on the instance, keyed by the float
model's digest; the statistics it declares are read on the prepared model, which
computes every tensor of the layout. ``run`` builds the plan from them, corrects
biases (measured correction declares a second pass, on a twin of the plan, through
the same collector) and applies the plan. The histogram range estimators (``kl``,
``percentile``, and ``auto``, the default) declare the observed ranges and ask, in ``run``,
for one more pass: a histogram of every quantizer's tensor over its range, all tensors at
once; ``auto`` then keeps ``minmax`` or ``percentile`` by measuring both full-INT8 models
(their metrics, else their outputs: ``auto_ranges``).

Which layers stay float for speed (``latency_aware``): ``"measure"`` (the default)
times, on this machine, whole models side by side: all-int8, the rules' layout and the
others with kinds of candidate layers in float (``engine.layer_timing``), and keeps
the fastest only if it beats all-int8 beyond the noise;
``"rules"`` applies ``latency_kinds.slower_in_int8``, measured on one CPU
(ORT 1.32, 2 cores: PP-OCR cls fully quantized 1.38/1.26/1.25x float at batch
1/16/32, with the rules 0.90/0.80/0.83x: int8 depthwise convs of 8-200 channels were
2.5-9x slower than float there); ``"off"`` quantizes every layer. The measured
decisions, their timings and the time spent go into the summary (report.json).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import onnx

from aaq.algorithms.auto_ranges import choose as choose_ranges, evaluation_indices
from aaq.algorithms.base import Algorithm, register_algorithm
from aaq.algorithms.preconditioning import equalized, searched_weights, smoothed
from aaq.engine.kernels import u8s8_saturates
from aaq.engine.layer_timing import layouts, measure_float_kinds
from aaq.engine.protocol import EngineLike
from aaq.errors import ModelError, SpecError
from aaq.quantization.bias import bias_twin, fast_corrections, fast_requests, measured_corrections
from aaq.quantization.ignored import resolve_ignored
from aaq.quantization.latency_kinds import HARD_SWISH, RULES_FLOAT, latency_kinds
from aaq.quantization.layers import Layout, find_layout
from aaq.quantization.plan import Plan, activation_requests, build_plan, histogram_requests
from aaq.quantization.prepare import PER_CHANNEL_OPSET, PER_TENSOR_OPSET, PreparedModel, prepare_model
from aaq.quantization.presets import (DEFAULT_AUTO_EVAL_SAMPLES, DEFAULT_AUTO_SAMPLES, DEFAULT_ESTIMATOR,
                                      OWN_STATISTICS, QuantConfig, fixed_statistics, resolve_config)
from aaq.quantization.qdq import apply_plan
from aaq.quantization.smooth import smooth_targets
from aaq.schemas import load_schema
from aaq.state import PipelineState, model_digest
from aaq.statistics.collector import fill_statistics
from aaq.statistics.requests import StatisticsNeeds

logger = logging.getLogger(__name__)

_SCHEMA = load_schema("DefaultQuantization")

@dataclass(frozen=True)
class DefaultQuantizationParams:
    """Mirrors ``DefaultQuantization.schema.json`` (names and defaults; checked at registration)."""

    preset: str = "performance"
    stat_subset_size: int = 300
    quantize_ops: list[str] = field(default_factory=lambda: ["Conv", "Gemm", "MatMul"])
    quantize_activation_matmul: bool = False
    ignored: dict[str, list[str]] = field(default_factory=lambda: {"scope": [], "patterns": [], "operations": []})
    weights: dict[str, Any] = field(default_factory=lambda: {
        "bits": 8, "reduce_range": "auto", "granularity": "perchannel",
        "range_estimator": {"max": {"type": "abs_max", "outlier_prob": 0.0001}}})
    activations: dict[str, Any] = field(default_factory=lambda: {
        "range_estimator": {"preset": DEFAULT_ESTIMATOR,
                            "min": {"type": None, "aggregator": None, "outlier_prob": 0.0001},
                            "max": {"type": None, "aggregator": None, "outlier_prob": 0.0001},
                            "percentile": 99.999, "histogram_bins": 2048, "auto_samples": DEFAULT_AUTO_SAMPLES,
                            "auto_eval_samples": DEFAULT_AUTO_EVAL_SAMPLES}})
    bias_correction: bool = True
    use_fast_bias: bool = True
    latency_aware: str = "measure"
    latency_budget: float = 5.0
    cross_layer_equalization: bool = False
    high_bias_absorption: bool = True
    smooth_quant: dict[str, Any] = field(default_factory=lambda: {"enabled": False, "alpha": 0.5})
    weight_range_search: dict[str, Any] = field(default_factory=lambda: {
        "enabled": False, "num_samples": 32, "time_budget": 60.0, "margin": 0.1})


@dataclass
class _Setup:
    """What the float model and the params decide before any statistic is known."""

    prepared: PreparedModel
    ignored: dict[str, str]
    layout: Layout
    config: QuantConfig
    needs: StatisticsNeeds
    kinds: dict[str, list[str]] = field(default_factory=dict)
    """Candidate layers of ``latency_aware: "measure"``, by kind (``latency_kinds``)."""
    rewrites: dict[str, Any] = field(default_factory=dict)
    """What cross-layer equalization / SmoothQuant did (``algorithms.preconditioning``)."""
    smooth_targets: list = field(default_factory=list)


@register_algorithm("DefaultQuantization")
class DefaultQuantization(Algorithm):
    """Quantize every Conv/Gemm/MatMul (or ``quantize_ops``) to QDQ: int8 weights, uint8 activations."""

    Params = DefaultQuantizationParams
    schema = _SCHEMA
    makes_plan = True

    def __init__(self, params: DefaultQuantizationParams) -> None:
        super().__init__(params)
        self._setup_cache: tuple[str, _Setup] | None = None
        self._speed_cache: tuple[str, dict[str, str], dict[str, Any]] | None = None
        self._smooth_cache: tuple[tuple, _Setup] | None = None
        self._adopted: tuple[str, dict[str, str], dict[str, Any]] | None = None

    def adopt_latency_decisions(self, other: "DefaultQuantization") -> None:
        """Take the float-for-speed decisions ``other`` measured, for the same prepared float model.

        Tuning builds one instance per model-wise config; which kinds of layer run faster in
        float depends on the model and the machine, not on the ranges, so the first config's
        measurement (``latency_budget`` seconds) serves every other one (per-tensor configs may
        prepare the model at another opset: the same layers, so the same decisions).
        """
        if self._speed_cache is None and other._speed_cache is not None:
            self._adopted = other._speed_cache

    @classmethod
    def check_spec(cls, params: dict[str, Any], spec: Any) -> list[tuple[str, str]]:
        """A histogram or auto estimator takes no min / max statistics; ``ignored`` names and op types must exist."""
        estimator = (params.get("activations") or {}).get("range_estimator") or {}
        if estimator.get("preset", DEFAULT_ESTIMATOR) in OWN_STATISTICS:
            problems = [(f"activations.range_estimator.{entry}",
                         f"must be null with preset {estimator['preset']!r}: it reads the observed range, "
                         f"then a histogram (set \"preset\": \"minmax\" or \"quantile\" to give min / max "
                         f"statistics)") for entry in fixed_statistics(estimator)]
            if problems:
                return problems
        ignored = params.get("ignored") or {}
        if not any(ignored.get(key) for key in ("scope", "patterns", "operations")):
            return []
        try:
            model = onnx.load(spec.resolved["model"]["path"])
            prepared = prepare_model(model, cls._min_opset(params.get("weights") or {}))
            resolve_ignored(prepared.model, ignored, prepared.removed_nodes)
        except SpecError as exc:
            return list(exc.problems)
        except Exception:  # an unreadable model is reported by the model checks, not here
            return []
        return []

    @staticmethod
    def _min_opset(weights: dict[str, Any]) -> int:
        """Per-channel DequantizeLinear needs opset 13; per-tensor Q/DQ, 10 (no conversion to risk)."""
        per_tensor = weights.get("granularity", "perchannel") == "pertensor"
        return PER_TENSOR_OPSET if per_tensor else PER_CHANNEL_OPSET

    def statistics_needs(self, state: PipelineState) -> tuple[StatisticsNeeds]:
        return (self._setup(state.float_model).needs,)

    def run(self, state: PipelineState, engine: EngineLike) -> PipelineState:
        setup = self._setup(state.float_model)
        statistics = state.statistics.values(setup.needs)
        if setup.smooth_targets:
            setup = self._smoothed_setup(setup, statistics)
            fill_statistics(state.statistics, engine, [setup.needs], progress=engine.progress, why="SmoothQuant")
            statistics = state.statistics.values(setup.needs)
        prepared = setup.prepared
        digests = frozenset({prepared.source_digest, model_digest(prepared.model)})
        config = self._config_for(engine, setup)
        layout, speed = setup.layout, self._latency_rules(setup)
        if self.params.latency_aware == "measure":
            chosen, speed = self._measured(state, engine, setup, config, statistics, digests)
            if chosen:
                layout = self._layout(setup.prepared, setup.ignored, chosen)
                needs = StatisticsNeeds(prepared.model, setup.needs.model_digest,
                                        tuple(dict.fromkeys(activation_requests(layout, config)
                                                            + list(setup.needs.requests))),
                                        self.params.stat_subset_size)
                fill_statistics(state.statistics, engine, [needs], progress=engine.progress,
                                why="latency-aware layout")
                statistics = state.statistics.values(needs)
        statistics.update(self._histograms(setup, layout, config, statistics, state, engine))
        rewrites = dict(setup.rewrites)
        if config.activations.auto is not None:
            config, rewrites["range_choice"] = self._auto_ranges(state, engine, prepared.model, digests, layout,
                                                                 config, statistics)
        plan = build_plan(prepared.model, digests, layout, config, statistics)
        if self.params.weight_range_search.get("enabled"):
            plan, rewrites["weight_range_search"] = searched_weights(plan, state, engine,
                                                                     self.params.weight_range_search)
        plan = self._correct_biases(plan, statistics, state, engine)
        model = apply_plan(state.float_model, plan)
        self.summary = self._summary(setup, layout, plan, config)
        self.summary.update(rewrites)
        self.summary["latency_aware"] = speed
        self.summary["calibration_samples"] = int(len(engine.calibration_indices(self.params.stat_subset_size)))
        self.summary["headline"] = (f"{len(plan.layers)} layers quantized in {len(plan.groups)} groups "
                                    f"(preset {self.params.preset}); {len(setup.ignored)} ignored; "
                                    f"{self.summary['bias_corrections']} biases corrected; "
                                    f"{len(speed['float_layers'])} float for speed (latency_aware "
                                    f"{self.params.latency_aware})"
                                    + (f"; {len(plan.int8_hardswish)} of {len(setup.layout.hardswish)} hard-swish "
                                       f"in int8" if setup.layout.hardswish else "")
                                    + (f"; activation ranges {rewrites['range_choice']['chosen']} (auto)"
                                       if "range_choice" in rewrites else "")
                                    + ("; 7-bit weights (this CPU's int8 kernels saturate at 8)"
                                       if config.weights.reduce_range else ""))
        logger.info("%s", self.summary["headline"])
        return dataclasses.replace(state, model=model, plan=plan)

    def _setup(self, float_model: onnx.ModelProto) -> _Setup:
        digest = model_digest(float_model)
        if self._setup_cache is not None and self._setup_cache[0] == digest:
            return self._setup_cache[1]
        p = self.params
        prepared = prepare_model(float_model, self._min_opset(p.weights))
        rewrites: dict[str, Any] = {}
        if p.cross_layer_equalization:
            prepared, rewrites["cross_layer_equalization"] = equalized(prepared, p.high_bias_absorption)
        setup = self._setup_for(prepared, rewrites)
        self._setup_cache = (digest, setup)
        return setup

    def _smoothed_setup(self, setup: _Setup, statistics: dict) -> _Setup:
        """The setup of the SmoothQuant-rewritten model (per-channel maxima from the first pass); cached."""
        alpha = float(self.params.smooth_quant.get("alpha", 0.5))
        key = (setup.needs.model_digest, alpha)
        if self._smooth_cache is not None and self._smooth_cache[0] == key:
            return self._smooth_cache[1]
        prepared, record = smoothed(setup.prepared, setup.smooth_targets, statistics, alpha)
        rewrites = {**setup.rewrites, "smooth_quant": record}
        new = dataclasses.replace(setup, rewrites=rewrites, smooth_targets=[]) if prepared is None \
            else self._setup_for(prepared, rewrites, smooth=False)
        self._smooth_cache = (key, new)
        return new

    def _setup_for(self, prepared: PreparedModel, rewrites: dict[str, Any], smooth: bool = True) -> _Setup:
        p = self.params
        ignored = resolve_ignored(prepared.model, p.ignored, prepared.removed_nodes)
        layout = self._layout(prepared, ignored, None)
        if not layout.layers:
            why = "; ".join(f"{name}: {reason}" for name, reason in list(layout.skipped.items())[:5])
            raise ModelError(f"nothing to quantize: the model has no {'/'.join(p.quantize_ops)} node that can "
                             f"be quantized" + (f" ({why})" if why else ""))
        config = resolve_config(p.preset, p.weights, p.activations)
        requests = activation_requests(layout, config)
        if p.bias_correction and p.use_fast_bias:
            requests += fast_requests(layout, prepared.model)
        kinds: dict[str, list[str]] = {}
        if p.latency_aware == "measure":
            kinds = latency_kinds(prepared.model, [layer.name for layer in layout.layers]
                                  + [unit.name for unit in layout.hardswish], prepared.shapes)
            # the sites of every layout the measurement times (all collected in the same one pass): the kept
            # model and the timed ones are built from real ranges, so they run the same kernels
            for chosen in layouts(list(kinds), RULES_FLOAT).values():
                if chosen:
                    extra = {name: f"latency: {kind}" for kind in chosen for name in kinds[kind]}
                    requests += activation_requests(self._layout(prepared, ignored, extra), config)
        targets = []
        if smooth and p.smooth_quant.get("enabled"):
            targets = smooth_targets(prepared.model, {layer.name for layer in layout.layers})
            requests += [target.request for target in targets]
        needs = StatisticsNeeds(prepared.model, model_digest(prepared.model), tuple(dict.fromkeys(requests)),
                                p.stat_subset_size)
        return _Setup(prepared, ignored, layout, config, needs, kinds, rewrites, targets)

    def _layout(self, prepared: PreparedModel, ignored: dict[str, str], chosen: dict[str, str] | None) -> Layout:
        """The layout of ``latency_aware`` "rules" or "off", or with the ``chosen`` layers in float."""
        p = self.params
        return find_layout(prepared.model, p.quantize_ops, activation_matmul=p.quantize_activation_matmul,
                           ignored=ignored, elem_types=prepared.elem_types, shapes=prepared.shapes,
                           latency_aware=p.latency_aware == "rules" and chosen is None, float_for_speed=chosen)

    def _latency_rules(self, setup: _Setup) -> dict[str, Any]:
        mode = self.params.latency_aware
        floated = {n: r for n, r in setup.layout.skipped.items() if r.startswith("latency")} if mode == "rules" else {}
        return {"mode": mode, "float_layers": floated}

    def _measured(self, state: PipelineState, engine: EngineLike, setup: _Setup, config: QuantConfig,
                  statistics: dict, digests: frozenset[str]) -> tuple[dict[str, str], dict[str, Any]]:
        """The layers measured faster in float on this machine (name -> reason), and the record of it.

        Timed once per float model: AccuracyAwareQuantization running this algorithm
        again gets the same decisions.
        """
        digest = setup.needs.model_digest
        if self._speed_cache is None and self._adopted is not None:
            candidates = {name for names in setup.kinds.values() for name in names}
            if set(self._adopted[1]) <= candidates:
                self._speed_cache = (digest, *self._adopted[1:])
        if self._speed_cache is not None and self._speed_cache[0] == digest:
            return self._speed_cache[1], self._speed_cache[2]
        ranges = _AnyRange(statistics)
        # the scales do not change the timing: first-pass ranges, no histogram pass for a model only timed
        timed = dataclasses.replace(config, activations=config.activations.candidate("minmax"))

        def build(kinds: frozenset[str]) -> onnx.ModelProto:
            chosen = {name: kind for kind in kinds for name in setup.kinds[kind]}
            layout = self._layout(setup.prepared, setup.ignored, chosen) if chosen else setup.layout
            return apply_plan(state.float_model, build_plan(setup.prepared.model, digests, layout, timed, ranges))

        decisions, info = measure_float_kinds(engine, build, setup.kinds, self.params.latency_budget, RULES_FLOAT)
        chosen = {name: f"latency (measured here): {d.kind}, {d.why}"
                  for d in decisions if d.kept_float for name in d.layers}
        record = {"mode": "measure", **info, "decisions": [d.as_dict() for d in decisions],  # layers, not activations
                  "float_layers": {n: r for n, r in chosen.items() if n not in setup.kinds.get(HARD_SWISH, ())}}
        self._speed_cache = (digest, chosen, record)
        return chosen, record

    def _auto_ranges(self, state: PipelineState, engine: EngineLike, model: onnx.ModelProto,
                     digests: frozenset[str], layout: Layout, config: QuantConfig,
                     statistics: dict) -> tuple[QuantConfig, dict[str, Any]]:
        """``auto``: the candidate whose full-INT8 model (biases corrected as configured) wins (``auto_ranges``)."""
        auto = config.activations.auto
        indices = engine.calibration_indices(min(auto.samples, self.params.stat_subset_size))
        models = {}
        for name in auto.candidates:
            candidate = dataclasses.replace(config, activations=config.activations.candidate(name))
            plan = self._correct_biases(build_plan(model, digests, layout, candidate, statistics), statistics,
                                        state, engine)
            models[name] = apply_plan(state.float_model, plan)
        chosen, record = choose_ranges(engine, state.float_model, models, indices,
                                       evaluation_indices(engine, auto.eval_samples, state.evaluate))
        return dataclasses.replace(config, activations=config.activations.candidate(chosen)), record

    def _config_for(self, engine: EngineLike, setup: _Setup) -> QuantConfig:
        """The config with ``weights.reduce_range: "auto"`` decided by measuring this machine's kernels."""
        p = self.params
        saturating = p.weights.get("reduce_range", "auto") == "auto" and u8s8_saturates(tuple(engine.providers))
        return resolve_config(p.preset, p.weights, p.activations, saturating_kernels=saturating)

    def histogram_needs(self, state: PipelineState, engine: EngineLike) -> tuple[StatisticsNeeds, ...]:
        """The histogram pass ``run`` will ask for, once the first pass is in ``state``: Tuning collects the
        histograms of every config on the same prepared model and samples in one pass."""
        setup = self._setup(state.float_model)
        if setup.smooth_targets or state.statistics.missing(setup.needs):  # SmoothQuant rewrites the model first
            return ()
        needs = self._histogram_needs(setup, setup.layout, self._config_for(engine, setup),
                                      state.statistics.values(setup.needs))
        return () if needs is None else (needs,)

    def _histogram_needs(self, setup: _Setup, layout: Layout, config: QuantConfig,
                         statistics: dict) -> StatisticsNeeds | None:
        requests = histogram_requests(layout, config, statistics)
        return None if not requests else StatisticsNeeds(setup.needs.model, setup.needs.model_digest,
                                                         tuple(dict.fromkeys(requests)), self.params.stat_subset_size)

    def _histograms(self, setup: _Setup, layout: Layout, config: QuantConfig, statistics: dict,
                    state: PipelineState, engine: EngineLike) -> dict:
        """The second pass of a histogram estimator: every quantizer's histogram over its observed range."""
        needs = self._histogram_needs(setup, layout, config, statistics)
        if needs is None:
            return {}
        fill_statistics(state.statistics, engine, [needs], progress=engine.progress,
                        why=f"{config.activations.histogram.method} histograms")
        return state.statistics.values(needs)

    def _correct_biases(self, plan: Plan, statistics: dict, state: PipelineState, engine: EngineLike) -> Plan:
        if not self.params.bias_correction:
            return plan
        if self.params.use_fast_bias:
            return fast_corrections(plan, statistics)
        twin = bias_twin(plan)
        if twin is None:
            return plan
        needs = StatisticsNeeds(twin.model, model_digest(twin.model), twin.requests, self.params.stat_subset_size)
        fill_statistics(state.statistics, engine, [needs], progress=engine.progress, why="bias correction")
        return measured_corrections(plan, twin, state.statistics.values(needs))

    def _summary(self, setup: _Setup, layout: Layout, plan: Plan, config: QuantConfig) -> dict[str, Any]:
        corrected = [layer.name for layer in plan.layers if layer.bias is not None]
        return {
            "preset": self.params.preset,
            "range_estimator": self.params.activations.get("range_estimator", {}).get("preset", DEFAULT_ESTIMATOR),
            "layers_quantized": len(plan.layers),
            "layers": [layer.name for layer in plan.layers],
            "groups": len(plan.groups),
            "activation_quantizers": len(plan.quantizers),
            "output_quantizers": sum(q.site.output for q in plan.quantizers.values()),
            "ignored": dict(setup.ignored),
            "not_quantized": {name: reason for name, reason in layout.skipped.items()
                              if name not in setup.ignored},
            "weights_reduce_range": config.weights.reduce_range,
            "bias_corrections": len(corrected),
            "bias_corrected_layers": corrected,
            "int8_hardswish": [unit.name for unit in plan.int8_hardswish],
            "preparation": setup.prepared.summary(),
        }


class _AnyRange(dict):
    """Statistics for timing-only plans: a range the run has not collected is [-1, 1] (latency does not
    depend on the scales; the model that is kept is built from collected statistics only)."""

    def __missing__(self, request: Any) -> float:
        return -1.0 if request.reducer == "min" else 1.0
