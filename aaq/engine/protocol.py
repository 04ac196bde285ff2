"""What an algorithm may use of an engine: the ``Engine`` implements it, and so may a test's or a user's own.

Written down so that algorithm plugins know what they can rely on, and so that the
statistics pass and the searches can be driven by a small fake in tests.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from aaq.engine.datasets import Dataset
from aaq.engine.evaluation import Evaluation
from aaq.engine.metrics import Metric

class EngineLike(Protocol):
    """Inference, evaluation and the data, as the algorithms see them."""

    dataset: Dataset
    metrics: list[Metric]
    batch_size: int
    progress: bool

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime execution providers the sessions use (the kernels a model is measured on)."""

    @property
    def num_samples(self) -> int:
        """Samples in ``dataset``."""

    @property
    def search_indices(self) -> np.ndarray:
        """The samples to search on: all but the held-out ones (``engine.dataset.holdout``)."""

    @property
    def holdout_indices(self) -> np.ndarray:
        """The held-out samples, for a final check only (empty without a holdout)."""

    def entries(self, digest: str, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The cached per-sample metric entries of an evaluated model (by digest), without inference."""

    def calibration_indices(self, num_samples: int) -> np.ndarray:
        """The calibration samples a statistics pass over ``num_samples`` reads."""

    def subset(self, size: int, seed: int, *, among: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """A seeded subset of the dataset's indices."""

    def run(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray, *,
            outputs: Sequence[str] | None = None, calibration: bool = False,
            progress_desc: str | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Batches of ``(indices, {tensor: array})``; ``outputs`` may name intermediate tensors."""

    def outputs(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The graph outputs on ``indices``, stacked."""

    def evaluate(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray | None = None, *,
                 stop: Callable[[Evaluation], bool] | None = None,
                 progress_desc: str | None = None) -> Evaluation:
        """Every metric on ``indices`` (default all), cached per sample, stopped early by ``stop``."""

    def session(self, model: onnx.ModelProto | bytes) -> ort.InferenceSession:
        """The (cached) session of ``model``, for timing it."""

    def absorb(self, digest: str, indices: Sequence[int] | np.ndarray, entries: dict[str, np.ndarray],
               seconds: float) -> Evaluation:
        """Optional: an evaluation made by an executor's worker (per-sample entries by metric), merged into
        the caches as ``evaluate`` would have made it; without it, ranking scores in this process."""
