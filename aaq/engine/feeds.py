"""Whether data can feed a model: sample indices in range, and arrays whose names, ranks, dtypes and dims fit.

Checked once per (session, dataset), on the first sample, before any batch is run:
a dataset that does not fit is a ``DataError`` naming the input, what the model
expects and what the data gives.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from aaq.engine.datasets import Dataset, fetch
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
