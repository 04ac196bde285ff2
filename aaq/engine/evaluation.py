"""What an evaluation returns, and the per-sample caches behind "no sample inferred twice"."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from aaq.engine.metrics import Metric
from aaq.errors import AaqError, DataError

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """The metrics of one model on some samples.

    ``per_sample[name]`` is aligned with ``indices`` (None for a metric that does not
    decompose). ``samples_inferred`` counts the samples really run, not served from
    the cache. An evaluation stopped by its ``stop`` hook has ``complete=False`` and
    ``stopped_early=True``; its values and indices cover the samples done so far.
    The ``partial`` evaluations handed to the hook look the same, with
    ``stopped_early=False``.
    """

    values: dict[str, float]
    per_sample: dict[str, np.ndarray | None]
    indices: np.ndarray
    samples_inferred: int
    seconds: float
    complete: bool = True
    stopped_early: bool = False
    model_digest: str = ""
    requested: int = 0
    """How many samples were asked for (``len(indices)`` when complete)."""


@dataclass
class EvaluationRecord:
    """One line of ``Engine.history``, as it goes into report.json."""

    model_digest: str
    full: bool
    samples: int
    inferred: int
    seconds: float
    complete: bool = True
    values: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScoreCache:
    """The metric entries of one model, by sample index: filled once, read by every evaluation."""

    def __init__(self, size: int, metrics: Sequence[Metric]) -> None:
        self.have = np.zeros(size, dtype=bool)
        self.entries: dict[str, np.ndarray] = {
            m.name: np.full(size, np.nan) if m.per_sample else np.empty(size, dtype=object) for m in metrics}

    def put(self, metric: Metric, indices: np.ndarray, entries: Any) -> None:
        """Store a batch's entries as ``metric.score`` returned them, once they honour the contract."""
        store = self.entries[metric.name]
        if metric.per_sample:
            store[indices] = check_entries(metric, indices, entries)
        else:  # objects (tuples, strings) must not be broadcast into the array
            for i, entry in zip(indices, entries):
                store[i] = entry

    def evaluation_values(self, metrics: Sequence[Metric], indices: np.ndarray
                          ) -> tuple[dict[str, float], dict[str, np.ndarray | None]]:
        """Values and per-sample scores over ``indices`` (all of which must be cached)."""
        values: dict[str, float] = {}
        per_sample: dict[str, np.ndarray | None] = {}
        for metric in metrics:
            entries = self.entries[metric.name][indices]
            if metric.per_sample:
                per_sample[metric.name] = entries
                values[metric.name] = check_value(metric, entries, entries)
            else:
                per_sample[metric.name] = None
                values[metric.name] = check_value(metric, list(entries), entries)
        return values, per_sample


def score_batch(cache: ScoreCache, metrics: Sequence[Metric], bidx: np.ndarray, out: dict[str, np.ndarray],
                reference: Any, labels: Any, whole: bool) -> None:
    """Every metric's entries of one batch into ``cache`` (``whole``: one run of a batched dataset).

    ``reference`` is the float model's outputs on the batch (for the metrics that compare with it).
    """
    for metric in metrics:
        given = reference if metric.reference else labels
        seen = out
        if whole and metric.stack_runs:  # one run = one sample: give it its sample axis
            seen = {n: a[None] for n, a in out.items()}
            given = {n: a[None] for n, a in given.items()} if metric.reference else given
        try:
            entries = metric.score(seen, given)
        except Exception as exc:  # any failure of user code must name the metric and sample
            raise metric_error(metric, exc, bidx, seen, given) from exc
        count = len(entries) if hasattr(entries, "__len__") else type(entries).__name__
        if count != len(bidx):
            what = ("one run of a batched dataset (one entry per run expected)" if whole else
                    f"a batch of {len(bidx)} samples (one per sample expected)")
            raise DataError(f"metric {metric.name!r} returned {count} entries for {what}", int(bidx[0]))
        cache.put(metric, bidx, entries)  # ScoreCache.put checks the metric contract
    cache.have[bidx] = True


def put_entries(cache: ScoreCache, metrics: Sequence[Metric], indices: np.ndarray, missing: np.ndarray,
                entries: dict[str, Any]) -> None:
    """Store the ``missing`` samples' entries out of ``entries[metric]`` (aligned with ``indices``): what a
    worker scored, taken in as if scored here (``ScoreCache.put`` checks the metric contract)."""
    position = {int(i): j for j, i in enumerate(indices)}
    take = np.array([position[int(i)] for i in missing], dtype=np.int64)
    for metric in metrics:
        given = entries.get(metric.name)
        if given is None or len(given) != len(indices):
            raise DataError(f"metric {metric.name!r}: a worker returned no entries for these {len(indices)} "
                            f"samples", int(indices[0]))
        cache.put(metric, missing, np.asarray(given)[take])
    cache.have[missing] = True


def object_entries(arrays: list[np.ndarray]) -> np.ndarray:
    """One object entry per array (``np.array`` would stack arrays of equal shape)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class OutputStore:
    """Rows of a model's outputs by sample index (the float model's, for output distances).

    One preallocated array per output while every row has the same shape (untouched
    pages of it cost no memory); rows of varying shape fall back to an object array.
    ``whole``: each sample's outputs are one run's whole arrays (a batched dataset),
    kept and given back as object entries.
    """

    def __init__(self, size: int, whole: bool = False) -> None:
        self.size = size
        self.whole = whole
        self.have = np.zeros(size, dtype=bool)
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, indices: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        if self.whole:
            (index,) = indices
            for name, array in outputs.items():
                self.arrays.setdefault(name, np.empty(self.size, dtype=object))[index] = array
            self.have[index] = True
            return
        for name, batch in outputs.items():
            store = self.arrays.get(name)
            if store is None:
                store = self.arrays[name] = np.empty((self.size, *batch.shape[1:]), dtype=batch.dtype)
            if store.dtype != object and store.shape[1:] != batch.shape[1:]:
                ragged = np.empty(self.size, dtype=object)
                for i in np.flatnonzero(self.have):
                    ragged[i] = store[i]
                store = self.arrays[name] = ragged
            if store.dtype == object:
                for i, row in zip(indices, batch):
                    store[i] = row
            else:
                store[indices] = batch
        self.have[indices] = True

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of ``indices`` stacked; when ``whole``, one object entry per sample."""
        out = {}
        for name, store in self.arrays.items():
            if self.whole:
                out[name] = store[indices]
            else:
                out[name] = np.stack(list(store[indices])) if store.dtype == object else store[indices]
        return out

    def row(self, index: int) -> dict[str, np.ndarray]:
        """One sample's outputs as its run gave them (``whole`` stores)."""
        return {name: store[index] for name, store in self.arrays.items()}


def check_entries(metric: Metric, indices: np.ndarray, entries: Any) -> np.ndarray:
    """A per-sample metric's entries as float64, refused unless they are what the metric declares.

    One finite number per sample, inside ``metric.bounds`` when it declares them: early
    stopping bounds the final value with those bounds, so a metric that breaks them
    would make it decide wrongly. A fault names the metric and the first bad sample.
    """
    indices = np.asarray(indices)
    first = int(indices[0]) if len(indices) else None
    try:
        given = np.asarray(entries)
    except Exception as exc:
        raise DataError(f"metric {metric.name!r} returned entries that are not numbers: {exc}", first) from None
    if given.dtype.kind not in "biuf":
        flat = list(given.reshape(-1)) if given.ndim else [given.item()]
        j = next((j for j, e in enumerate(flat) if not _is_number(e)), 0)
        example = flat[j].item() if isinstance(flat[j], np.generic) else flat[j]
        kind = {"U": "str", "S": "bytes", "O": "object"}.get(given.dtype.kind, given.dtype.name)
        where = int(indices[j]) if j < len(indices) else first
        raise DataError(f"metric {metric.name!r} returned {kind} entries (here {example!r}); a per-sample "
                        f"metric returns one number per sample", where)
    if given.size != len(indices):
        raise DataError(f"metric {metric.name!r} returned entries of shape {list(given.shape)} for a batch of "
                        f"{len(indices)} samples (one number per sample expected)", first)
    values = given.astype(np.float64, copy=False).reshape(-1)
    finite = np.isfinite(values)
    if not finite.all():
        j = int(np.argmax(~finite))
        raise DataError(f"metric {metric.name!r} returned {float(values[j])} (a per-sample score must be a "
                        f"finite number)", int(indices[j]))
    if metric.bounds is not None:
        low, high = (float(b) for b in metric.bounds)
        slack = 1e-9 * max(1.0, high - low)
        outside = (values < low - slack) | (values > high + slack)
        if outside.any():
            j = int(np.argmax(outside))
            raise DataError(f"metric {metric.name!r} returned {float(values[j])!r}, outside the bounds "
                            f"{tuple(metric.bounds)} it declares", int(indices[j]))
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating))


def check_value(metric: Metric, entries: Any, raw: np.ndarray) -> float:
    """``metric.aggregate(entries)`` as a float; a failure, a non-number or NaN over samples is a DataError."""
    try:
        value = metric.aggregate(entries)
        number = float(value)
    except AaqError:
        raise
    except Exception as exc:
        raise DataError(f"metric {metric.name!r}: aggregate failed: {type(exc).__name__}: {exc}") from None
    if isinstance(value, (str, bytes)):
        raise DataError(f"metric {metric.name!r}: aggregate returned the string {value!r}, not a number")
    if len(raw) and not np.isfinite(number):
        raise DataError(f"metric {metric.name!r}: aggregate returned {number} over {len(raw)} samples (a metric "
                        f"value must be a finite number)")
    return number


def check_finite(array: np.ndarray, indices: np.ndarray, name: str) -> None:
    """A NaN or Inf output is a DataError naming the first bad sample (one float64 sum when all is well)."""
    if array.dtype.kind != "f" or np.isfinite(array.sum(dtype=np.float64)):
        return
    if array.ndim == 0 or len(indices) == 1:
        if not np.isfinite(array).all():
            raise DataError(f"the model output {name!r} holds NaN or Inf", int(indices[0]))
        return
    rows = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if not rows.any():  # the float64 sum itself overflowed: every value is finite
        return
    j = int(np.argmax(rows))
    raise DataError(f"the model output {name!r} holds NaN or Inf", int(indices[min(j, len(indices) - 1)]))


def metric_error(metric: Metric, exc: Exception, indices: np.ndarray, outputs: dict[str, np.ndarray],
                 labels: Any) -> DataError:
    """A DataError naming the metric and the first sample of the batch on which it fails alone."""
    detail = str(exc) if isinstance(exc, AaqError) else f"{type(exc).__name__}: {exc}"
    culprit = int(indices[0])
    for j in range(len(indices) if len(indices) > 1 else 0):
        try:
            metric.score({n: a[j:j + 1] for n, a in outputs.items()}, _row(labels, j))
        except Exception:
            culprit = int(indices[j])
            break
    return DataError(f"metric {metric.name!r} failed: {detail}", culprit)


def _row(labels: Any, j: int) -> Any:
    if labels is None:
        return None
    if isinstance(labels, dict):
        return {n: a[j:j + 1] for n, a in labels.items()}
    return labels[j:j + 1]
