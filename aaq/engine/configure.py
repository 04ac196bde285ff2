"""The ``engine`` section of a spec turned into the Engine's arguments: datasets, metrics, options.

Kept apart from the Engine so that what a spec can say (and the JSON path each
fault names) is read in one place, and the Engine stays about running models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from aaq.engine.datasets import dataset_from_spec
from aaq.engine.executor_choice import executor_from_spec
from aaq.engine.holdout import checked_holdout
from aaq.engine.metrics import metric_from_spec
from aaq.errors import SpecError


def engine_arguments(engine_spec: dict, base_dir: Path) -> dict[str, Any]:
    """``Engine(**engine_arguments(...))`` for the validated, default-filled ``engine`` section."""
    if engine_spec.get("type", "onnxruntime") != "onnxruntime":
        raise SpecError([("engine.type", f"must be 'onnxruntime', got {engine_spec['type']!r}")])
    base_dir = Path(base_dir)
    entry = {k: v for k, v in engine_spec["dataset"].items() if k != "holdout"}
    dataset = dataset_from_spec(entry, base_dir, "engine.dataset")
    calibration = engine_spec.get("calibration_dataset")
    if calibration is not None:
        calibration = dataset_from_spec(calibration, base_dir, "engine.calibration_dataset")
    metric_list = [metric_from_spec(entry, base_dir, f"engine.metrics[{i}]")
                   for i, entry in enumerate(engine_spec.get("metrics", []))]
    return dict(dataset=dataset, metrics=metric_list, calibration_dataset=calibration,
                batch_size=engine_spec.get("batch_size", 1),
                providers=tuple(engine_spec.get("providers", ("CPUExecutionProvider",))),
                intra_op_threads=engine_spec.get("intra_op_threads", 0),
                graph_optimization_level=engine_spec.get("graph_optimization_level", "all"),
                allow_spinning=engine_spec.get("allow_spinning", False),
                holdout=checked_holdout(len(dataset), engine_spec["dataset"].get("holdout"), "engine.dataset"),
                executor=executor_from_spec(engine_spec.get("executor"), "engine.executor"))
