"""How a dataset's samples become a model's feed, and whether they can: indices, stacking, names, dtypes, dims.

``fetch`` turns sample indices into stacked input arrays and labels (through the
dataset's ``batch`` when it has one); every fault names the dataset and the sample.
Whether the data fits the model is checked once per (session, dataset), on the
first sample, before any batch is run: a ``DataError`` names the input, what the
model expects and what the data gives.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from aaq.engine.datasets import Dataset, Labels, Sample
from aaq.engine.session import SessionEntry
from aaq.errors import BadInputError, DataError


def check_dataset_fits(entry: SessionEntry, dataset: Dataset, what: str) -> None:
    """Names, rank, dtype and fixed dims of the data against the model, once per (session, dataset)."""
    if id(dataset) in entry.checked:
        return
    if len(dataset) == 0:
        raise DataError(f"the {what} is empty")
    inputs, _ = fetch(dataset, np.zeros(1, dtype=np.int64))
    for info in entry.inputs:
        if info.name not in inputs:
            raise DataError(f"the {what} has no array for model input {info.name!r} (expected "
                            f"{info.describe()}); it has: {', '.join(inputs) or 'nothing'}")
        given = inputs[info.name]
        expected = info.shape[1:]
        fits = len(given.shape) - 1 == len(expected) and all(
            e is None or e == g for e, g in zip(expected, given.shape[1:]))
        if not fits or (info.dtype is not None and given.dtype != info.dtype):
            per_sample = [("?" if d is None else d) for d in expected]
            raise DataError(
                f"the {what} does not fit model input {info.name!r}: the model expects "
                f"{info.describe()} ({per_sample} per sample), the {what} gives "
                f"{list(given.shape[1:])} {given.dtype.name} per sample")
    entry.checked.add(id(dataset))


def checked_indices(indices: Any, size: int, what: str) -> np.ndarray:
    """``indices`` as int64, refused when not 1-D integers or out of ``range(size)`` (naming the first bad one)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise BadInputError(f"indices must be a 1-D sequence of integers, got {idx.dtype} of "
                            f"shape {list(idx.shape)}")
    idx = idx.astype(np.int64, copy=False)
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        first = int(idx[np.argmax(bad)])
        raise DataError(f"index {first} is out of range: the {what} has {size} samples", first)
    return idx


def unique_in_order(indices: np.ndarray) -> np.ndarray:
    """``indices`` without repeats, first occurrences in their order."""
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)] if len(first) != len(indices) else indices


def fetch(dataset: Dataset, indices: np.ndarray) -> tuple[dict[str, np.ndarray], Labels]:
    """The stacked inputs and labels of ``indices``, by the fast path when the dataset has one.

    Everything a dataset hands over is checked here, where the dataset and the sample
    are known: user code that raises or returns something else than a ``Sample``, inputs
    that do not stack, NaN or Inf in float inputs. Each is a DataError naming the dataset
    (its file or factory) and the first bad sample.
    """
    fast = getattr(dataset, "batch", None)
    if fast is not None:
        try:
            got = fast(indices)
        except BadInputError:
            raise
        except Exception as exc:
            raise DataError(f"{describe_dataset(dataset)} failed to give samples {_span(indices)}: "
                            f"{type(exc).__name__}: {exc}", _first(indices)) from None
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
            raise DataError(f"{describe_dataset(dataset)}: batch() must return (dict of input arrays, labels), got "
                            f"{type(got).__name__}", _first(indices))
        inputs, labels = got
        inputs = {name: _as_array(dataset, name, a, indices) for name, a in inputs.items()}
    else:
        samples = [_sample(dataset, int(i)) for i in indices]
        inputs = {name: _stack(dataset, name, samples, indices) for name in samples[0].inputs} if samples else {}
        labels = [s.label for s in samples]
        labels = None if all(lab is None for lab in labels) else labels
    for name, array in inputs.items():
        _check_finite_input(dataset, name, array, indices)
    return inputs, labels


def describe_dataset(dataset: Any) -> str:
    """How errors name a dataset: its file or factory when known, else its type."""
    source = getattr(dataset, "source", None)
    return f"dataset {source!r}" if isinstance(source, str) else f"dataset {type(dataset).__name__}"


def _sample(dataset: Dataset, index: int) -> Sample:
    try:
        sample = dataset[index]
    except BadInputError:
        raise
    except Exception as exc:
        raise DataError(f"{describe_dataset(dataset)} raised {type(exc).__name__}: {exc}", index) from None
    inputs = getattr(sample, "inputs", None)
    if not isinstance(inputs, dict) or not inputs:
        raise DataError(f"{describe_dataset(dataset)} returned {type(sample).__name__} (expected an aaq Sample "
                        f"with a dict of input arrays)", index)
    return sample


def _stack(dataset: Dataset, name: str, samples: list, indices: np.ndarray) -> np.ndarray:
    rows = []
    for sample, index in zip(samples, indices):
        if name not in sample.inputs:
            raise DataError(f"{describe_dataset(dataset)}: the sample has no input {name!r} (sample "
                            f"{int(indices[0])} has)", int(index))
        rows.append(_as_array(dataset, name, sample.inputs[name], np.asarray([index])))
    shapes = {row.shape for row in rows}
    if len(shapes) > 1 or len({row.dtype for row in rows}) > 1:
        j = next(j for j, row in enumerate(rows) if row.shape != rows[0].shape or row.dtype != rows[0].dtype)
        raise DataError(f"{describe_dataset(dataset)}: input {name!r} is {list(rows[j].shape)} "
                        f"{rows[j].dtype.name}, sample {int(indices[0])}'s is {list(rows[0].shape)} "
                        f"{rows[0].dtype.name}: samples must agree", int(indices[j]))
    return np.stack(rows)


def _as_array(dataset: Dataset, name: str, value: Any, indices: np.ndarray) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise DataError(f"{describe_dataset(dataset)}: input {name!r} is not an array: {exc}", _first(indices)) \
            from None
    if array.dtype.kind not in "biufc":
        raise DataError(f"{describe_dataset(dataset)}: input {name!r} holds {array.dtype.name} values, not "
                        f"numbers", _first(indices))
    return array


def _check_finite_input(dataset: Dataset, name: str, array: np.ndarray, indices: np.ndarray) -> None:
    """NaN or Inf in a float input names the dataset and the sample (one float64 sum when all is well)."""
    if array.dtype.kind not in "fc" or array.size == 0 or np.isfinite(array.sum(dtype=np.complex128 if
                                                                                 array.dtype.kind == "c"
                                                                                 else np.float64)):
        return
    rows = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1) if array.ndim else np.array([True])
    if not rows.any():  # the sum itself overflowed: every value is finite
        return
    j = int(np.argmax(rows))
    index = int(indices[j]) if j < len(indices) else _first(indices)
    raise DataError(f"{describe_dataset(dataset)}: input {name!r} holds NaN or Inf", index)


def _first(indices: np.ndarray) -> int | None:
    return int(indices[0]) if len(indices) else None


def _span(indices: np.ndarray) -> str:
    return f"{int(indices[0])}..{int(indices[-1])}" if len(indices) else "(none)"
