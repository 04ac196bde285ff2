"""An Engine whose metrics are user functions of the whole model (INC's ``eval_fn``), for the Python API.

``FunctionEngine.evaluate(model)`` calls every function once per model (cached by
digest) and returns their values as a complete evaluation: such metrics give no
per-sample values, so nothing stops early and ranking scores whole models, or uses
output distances on the engine's dataset (the calibration data). Inference for
statistics, output distances and latency is the ``Engine``'s own, on that dataset.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from aaq.engine.datasets import Dataset
from aaq.engine.engine import Engine
from aaq.engine.evaluation import Evaluation, EvaluationRecord
from aaq.engine.metrics import Metric
from aaq.engine.session import model_bytes
from aaq.errors import DataError

EvalFunction = Callable[[onnx.ModelProto], float]


class FunctionMetric(Metric):
    """A value of the whole model, computed by a user function; not a mean of per-sample scores."""

    per_sample = False

    def __init__(self, name: str, higher_is_better: bool = True) -> None:
        self.name = name
        self.higher_is_better = higher_is_better

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        raise TypeError(f"metric {self.name!r} is a function of the whole model: FunctionEngine.evaluate calls it")


class FunctionEngine(Engine):
    """``functions``: ``(name, fn, higher_is_better)``; ``fn(model: onnx.ModelProto) -> float``."""

    def __init__(self, functions: Sequence[tuple[str, EvalFunction, bool]], dataset: Dataset, **options: Any) -> None:
        super().__init__(dataset, [FunctionMetric(n, hib) for n, _, hib in functions], **options)
        self._functions = {n: fn for n, fn, _ in functions}
        self._values: dict[str, dict[str, float]] = {}
        self.calls = 0

    def evaluate(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray | None = None, *,
                 stop: Callable[[Evaluation], bool] | None = None, progress_desc: str | None = None) -> Evaluation:
        started = time.perf_counter()
        data, digest = model_bytes(model)
        if digest not in self._values:
            proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(data)
            values = {}
            for name, fn in self._functions.items():
                try:
                    values[name] = float(fn(proto))
                except Exception as exc:  # a user function's failure must name it
                    raise DataError(f"eval function {name!r} failed: {type(exc).__name__}: {exc}") from exc
            self._values[digest] = values
            self.calls += 1
        idx = np.arange(self.num_samples, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        values = dict(self._values[digest])
        seconds = time.perf_counter() - started
        self.history.append(EvaluationRecord(digest, True, len(idx), 0, seconds, True, values))
        return Evaluation(values, {n: None for n in values}, idx, 0, seconds, model_digest=digest,
                          requested=len(idx))
