"""aaq: accuracy-aware post-training quantization for ONNX models."""
from __future__ import annotations


from aaq.version import __version__  # noqa: E402
from aaq.algorithms.base import Algorithm, register_algorithm  # noqa: E402
from aaq.engine.datasets import Dataset, Sample, register_dataset  # noqa: E402
from aaq.engine.engine import Engine  # noqa: E402
from aaq.engine.metrics import Metric, register_metric  # noqa: E402
from aaq.errors import AaqError, BadInputError, DataError, ModelError, PluginError, SpecError  # noqa: E402
from aaq.pipeline import Pipeline  # noqa: E402
from aaq.report import Result  # noqa: E402
from aaq.state import PipelineState  # noqa: E402
from aaq.tuning.objectives import Objective, register_objective  # noqa: E402
from aaq.tuning.strategies import Strategy, register_strategy  # noqa: E402
from aaq.autotune import Evaluator, TuningConfig, autotune  # noqa: E402

__all__ = [
    "AaqError", "Algorithm", "BadInputError", "DataError", "Dataset", "Engine", "Evaluator", "Metric", "ModelError",
    "Objective", "Pipeline", "PipelineState", "PluginError", "Result", "Sample", "SpecError", "Strategy",
    "TuningConfig", "autotune", "register_algorithm", "register_dataset", "register_metric", "register_objective",
    "register_strategy", "__version__",
]
