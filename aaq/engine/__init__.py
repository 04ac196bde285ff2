"""The engine: ONNX Runtime inference over datasets, metrics, and the caches that make both cheap."""
from aaq.engine.datasets import (ArrayDataset, BatchedDataset, Dataset, NpzDataset, Sample, SampleList,
                                 dataset_from_spec, datasets, is_batched, register_dataset)
from aaq.engine.python_datasets import PythonDataset
from aaq.engine.engine import Engine
from aaq.engine.evaluation import Evaluation, EvaluationRecord
from aaq.engine.metrics import (Accuracy, Agreement, MeanSquaredError, Metric, metric_from_spec, metrics,
                                register_metric)

__all__ = [
    "Accuracy", "Agreement", "ArrayDataset", "BatchedDataset", "Dataset", "Engine", "Evaluation",
    "EvaluationRecord", "MeanSquaredError", "Metric", "NpzDataset", "PythonDataset", "Sample", "SampleList",
    "dataset_from_spec", "datasets", "is_batched", "metric_from_spec", "metrics", "register_dataset",
    "register_metric",
]
