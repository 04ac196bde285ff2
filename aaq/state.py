"""The state that algorithms hand to each other along the pipeline."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from aaq.quantization.plan import Plan
from aaq.statistics.requests import StatisticsCache


def model_digest(model: onnx.ModelProto) -> str:
    """A digest of the serialized model: the key of every per-model cache."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


@dataclass
class AlgorithmRecord:
    """What one algorithm did, as it goes into report.json."""

    name: str
    params: dict[str, Any]
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineState:
    """Everything an algorithm may read or replace.

    ``float_model`` is the user's model and is never modified (the pipeline checks
    its digest after every algorithm). ``model`` is the current model and ``plan`` the
    quantization description it was built from (``None`` until a quantization
    algorithm sets one). ``statistics`` holds every statistic collected so far, so
    none is collected twice. ``targets`` maps each accuracy target an algorithm
    checked to whether it was met; ``metrics`` the values it measured, by model
    (``"float"`` and the algorithm's name), with ``references`` saying what each
    drop was measured against (``"measured"`` or ``"baseline_value"``); ``notes``
    why a target is not met when its drop alone does not say (a held-out check).
    """

    float_model: onnx.ModelProto
    model: onnx.ModelProto
    plan: Plan | None = None
    statistics: StatisticsCache = field(default_factory=StatisticsCache)
    records: list[AlgorithmRecord] = field(default_factory=list)
    targets: dict[str, bool] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_dir: Path | None = None
    """Where the run's files go, when the caller says (the CLI does; ``Pipeline.run(output_dir=...)``):
    an algorithm may write progress files there as it goes (Tuning's ``tuning_history.jsonl``).
    ``None`` (the Python API without an output directory): no file is written."""
    resume_from: Path | None = None
    """The folder of the earlier run a resumed run continues (``aaq run --resume``): Tuning answers the
    trials that finished there from its ``tuning_history.jsonl`` instead of evaluating them again."""
    notes: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per metric, the drop intervals of ``model`` (by digest): ``{"model", "search", "held_out"}``."""
    executors: list[dict[str, Any]] = field(default_factory=list)
    """What each executor an algorithm started for itself cost (``Executor.describe``); the engine's is added last."""
    evaluate: bool = True
    """False in a quantize-only run (``aaq run --no-evaluate``): an algorithm that may skip the evaluation data
    (DefaultQuantization's ``auto`` ranges) infers nothing beyond calibration."""

    @property
    def targets_met(self) -> bool:
        return all(self.targets.values())
