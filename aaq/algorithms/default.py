"""DefaultQuantization: statistics, ranges, QDQ insertion and bias correction, as POT's algorithm did.

``statistics_needs`` prepares the float model (opset >= 13, BatchNorm folded,
simplified; see ``quantization.prepare``), finds the layers and quantizer sites on
the *prepared* model and caches all of it on the instance, keyed by the float
model's digest; the statistics it declares are read on the prepared model, which
computes every tensor of the layout. ``run`` builds the plan from them, corrects
biases (measured correction declares a second pass, on a twin of the plan, through
the same collector) and applies the plan. The histogram range estimators (``kl``,
``percentile``) declare the observed ranges and ask, in ``run``, for one more pass: a
histogram of every quantizer's tensor over its range, all tensors at once.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import onnx

from aaq.algorithms.base import Algorithm, register_algorithm
from aaq.engine.kernels import u8s8_saturates
from aaq.engine.protocol import EngineLike
from aaq.errors import ModelError, SpecError
from aaq.quantization.bias import bias_twin, fast_corrections, fast_requests, measured_corrections
from aaq.quantization.ignored import resolve_ignored
from aaq.quantization.layers import Layout, find_layout
from aaq.quantization.plan import Plan, activation_requests, build_plan, histogram_requests
from aaq.quantization.prepare import PER_CHANNEL_OPSET, PER_TENSOR_OPSET, PreparedModel, prepare_model
from aaq.quantization.presets import HISTOGRAM_ESTIMATORS, QuantConfig, fixed_statistics, resolve_config
from aaq.quantization.qdq import apply_plan
from aaq.schemas import load_schema
from aaq.state import PipelineState, model_digest
from aaq.statistics.collector import fill_statistics
from aaq.statistics.requests import StatisticsNeeds

logger = logging.getLogger(__name__)

_SCHEMA = load_schema("DefaultQuantization")

LATENCY_AWARE = True
"""Leave in float the layers ONNX Runtime runs slower in int8 (``layers.slower_in_int8``).

Measured with ORT 1.32 on 2 cores, latency / the user's float model at batch 1/16/32
(preparation's simplifications in both cases; medians of interleaved runs). PP-OCR
cls, everything quantized: 1.38/1.26/1.25 on two threads beside another process (int8
depthwise convs with 8-200 channels are 2.5-9x slower than float). Latency-aware:
0.90/0.80/0.83 on one thread, 0.93/0.87/0.87 on two threads beside another process,
0.80-0.90/1.0-1.07/1.0-1.07 on two idle threads: ORT's uint8 NCHW->NHWC Transpose, one
per float island, is up to 18x slower on two threads than on one (and DequantizeLinear
does not scale). Top-1 0.988-0.992 (float 0.991). PP-OCR rec: 0.51/0.65 (batch 1/16,
two threads) either way. Not a param yet: a schema property must also be listed by
every template holding DefaultQuantization's params
(``algorithms_specs/AccuracyAwareQuantization.json``).
"""


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
        "range_estimator": {"preset": "default",
                            "min": {"type": None, "aggregator": None, "outlier_prob": 0.0001},
                            "max": {"type": None, "aggregator": None, "outlier_prob": 0.0001},
                            "percentile": 99.999, "histogram_bins": 2048}})
    bias_correction: bool = True
    use_fast_bias: bool = True


@dataclass
class _Setup:
    """What the float model and the params decide before any statistic is known."""

    prepared: PreparedModel
    ignored: dict[str, str]
    layout: Layout
    config: QuantConfig
    needs: StatisticsNeeds


@register_algorithm("DefaultQuantization")
class DefaultQuantization(Algorithm):
    """Quantize every Conv/Gemm/MatMul (or ``quantize_ops``) to QDQ: int8 weights, uint8 activations."""

    Params = DefaultQuantizationParams
    schema = _SCHEMA
    makes_plan = True

    def __init__(self, params: DefaultQuantizationParams) -> None:
        super().__init__(params)
        self._setup_cache: tuple[str, _Setup] | None = None

    @classmethod
    def check_spec(cls, params: dict[str, Any], spec: Any) -> list[tuple[str, str]]:
        """A histogram estimator takes no min / max statistics; ``ignored`` names and op types must exist."""
        estimator = (params.get("activations") or {}).get("range_estimator") or {}
        if estimator.get("preset") in HISTOGRAM_ESTIMATORS:
            problems = [(f"activations.range_estimator.{entry}",
                         f"must be null with preset {estimator['preset']!r}: it reads the observed range, "
                         f"then a histogram") for entry in fixed_statistics(estimator)]
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
        prepared = setup.prepared
        digests = frozenset({prepared.source_digest, model_digest(prepared.model)})
        config = self._config_for(engine, setup)
        statistics.update(self._histograms(setup, config, statistics, state, engine))
        plan = build_plan(prepared.model, digests, setup.layout, config, statistics)
        plan = self._correct_biases(plan, statistics, state, engine)
        model = apply_plan(state.float_model, plan)
        self.summary = self._summary(setup, plan, config)
        self.summary["calibration_samples"] = int(len(engine.calibration_indices(self.params.stat_subset_size)))
        self.summary["headline"] = (f"{len(plan.layers)} layers quantized in {len(plan.groups)} groups "
                                    f"(preset {self.params.preset}); {len(setup.ignored)} ignored; "
                                    f"{self.summary['bias_corrections']} biases corrected"
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
        ignored = resolve_ignored(prepared.model, p.ignored, prepared.removed_nodes)
        layout = find_layout(prepared.model, p.quantize_ops, activation_matmul=p.quantize_activation_matmul,
                             ignored=ignored, elem_types=prepared.elem_types, latency_aware=LATENCY_AWARE,
                             shapes=prepared.shapes)
        if not layout.layers:
            why = "; ".join(f"{name}: {reason}" for name, reason in list(layout.skipped.items())[:5])
            raise ModelError(f"nothing to quantize: the model has no {'/'.join(p.quantize_ops)} node that can "
                             f"be quantized" + (f" ({why})" if why else ""))
        config = resolve_config(p.preset, p.weights, p.activations)
        requests = activation_requests(layout, config)
        if p.bias_correction and p.use_fast_bias:
            requests += fast_requests(layout, prepared.model)
        needs = StatisticsNeeds(prepared.model, model_digest(prepared.model), tuple(dict.fromkeys(requests)),
                                p.stat_subset_size)
        setup = _Setup(prepared, ignored, layout, config, needs)
        self._setup_cache = (digest, setup)
        return setup

    def _config_for(self, engine: EngineLike, setup: _Setup) -> QuantConfig:
        """The config with ``weights.reduce_range: "auto"`` decided by measuring this machine's kernels."""
        p = self.params
        saturating = p.weights.get("reduce_range", "auto") == "auto" and u8s8_saturates(tuple(engine.providers))
        return resolve_config(p.preset, p.weights, p.activations, saturating_kernels=saturating)

    def _histograms(self, setup: _Setup, config: QuantConfig, statistics: dict, state: PipelineState,
                    engine: EngineLike) -> dict:
        """The second pass of a histogram estimator: every quantizer's histogram over its observed range."""
        requests = histogram_requests(setup.layout, config, statistics)
        if not requests:
            return {}
        needs = StatisticsNeeds(setup.needs.model, setup.needs.model_digest, tuple(dict.fromkeys(requests)),
                                self.params.stat_subset_size)
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

    def _summary(self, setup: _Setup, plan: Plan, config: QuantConfig) -> dict[str, Any]:
        corrected = [layer.name for layer in plan.layers if layer.bias is not None]
        return {
            "preset": self.params.preset,
            "range_estimator": self.params.activations.get("range_estimator", {}).get("preset", "default"),
            "layers_quantized": len(plan.layers),
            "layers": [layer.name for layer in plan.layers],
            "groups": len(plan.groups),
            "activation_quantizers": len(plan.quantizers),
            "output_quantizers": sum(q.site.output for q in plan.quantizers.values()),
            "ignored": dict(setup.ignored),
            "not_quantized": {name: reason for name, reason in setup.layout.skipped.items()
                              if name not in setup.ignored},
            "weights_reduce_range": config.weights.reduce_range,
            "bias_corrections": len(corrected),
            "bias_corrected_layers": corrected,
            "preparation": setup.prepared.summary(),
        }
