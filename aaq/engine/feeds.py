"""Whether data can feed a model, and the feeds themselves: stacked batches or whole-feed samples.

Stacked datasets are checked once per (session, dataset), on the first sample, before
any batch is run: a dataset that does not fit is a ``DataError`` naming the input,
what the model expects and what the data gives. A batched dataset (every sample a
complete feed, ``"batched": true``) may give other shapes in every sample, so each
sample's feed is checked as it is read, and an error names the sample and the input.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from aaq.engine.datasets import Dataset, Labels, fetch, is_batched
from aaq.engine.session import SessionEntry
from aaq.errors import BadInputError, DataError, ModelError

Feed = dict[str, np.ndarray]


def check_dataset_fits(entry: SessionEntry, dataset: Dataset, what: str) -> None:
    """Names, rank, dtype and fixed dims of the data against the model, once per (session, dataset)."""
    if id(dataset) in entry.checked:
        return
    if len(dataset) == 0:
        raise DataError(f"the {what} is empty")
    if is_batched(dataset):
        check_feed(entry, dataset[0].inputs, 0, what)
        entry.checked.add(id(dataset))
        return
    if entry.batch_problem:
        raise ModelError(f"{entry.batch_problem}; a dataset whose samples are whole feeds (\"batched\": true) "
                         f"can feed this model")
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
            whole = len(given.shape) - 1 == len(info.shape)
            hint = (f"; if each sample is a whole feed of the model (its first axis is not a batch of samples), "
                    f"give the {what} \"batched\": true" if whole else "")
            raise DataError(
                f"the {what} does not fit model input {info.name!r}: the model expects "
                f"{info.describe()} ({per_sample} per sample), the {what} gives "
                f"{list(given.shape[1:])} {given.dtype.name} per sample{hint}")
    entry.checked.add(id(dataset))


def check_feed(entry: SessionEntry, inputs: Mapping[str, Any], index: int, what: str) -> Feed:
    """One whole-feed sample's arrays for the model's inputs, each checked: rank, dtype, fixed dims.

    A mismatch is a ``DataError`` naming the sample ``index`` and the input.
    """
    feed: Feed = {}
    for info in entry.inputs:
        if info.name not in inputs:
            raise DataError(f"the {what}'s feed has no array for model input {info.name!r} (expected "
                            f"{info.describe(batched=True)}); it has: {', '.join(inputs) or 'nothing'}", index)
        given = inputs[info.name]
        if not isinstance(given, np.ndarray):
            given = np.asarray(given)
        fits = given.ndim == len(info.shape) and all(e is None or e == g for e, g in zip(info.shape, given.shape))
        if not fits or (info.dtype is not None and given.dtype != info.dtype):
            raise DataError(f"the {what}'s feed does not fit model input {info.name!r}: the model expects "
                            f"{info.describe(batched=True)}, the sample gives {list(given.shape)} "
                            f"{given.dtype.name} (a batched dataset's sample is the whole feed, run as "
                            f"given)", index)
        feed[info.name] = given
    return feed


def stacked_feeds(entry: SessionEntry, dataset: Dataset, indices: np.ndarray, size: int
                  ) -> Iterator[tuple[np.ndarray, Feed, Labels, int]]:
    """``(batch indices, feed, labels, padding)``: ``size`` samples stacked per run.

    A model fixed at a batch of ``size`` gets its last batch padded by repeating the
    last sample; ``padding`` says how many rows of its outputs to drop.
    """
    input_names = [i.name for i in entry.inputs]
    for start in range(0, len(indices), size):
        bidx = indices[start:start + size]
        inputs, labels = fetch(dataset, bidx)
        feed = {n: inputs[n] for n in input_names}
        pad = size - len(bidx) if entry.fixed_batch else 0
        if pad:
            feed = {n: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for n, a in feed.items()}
        yield bidx, feed, labels, pad


def whole_feeds(entry: SessionEntry, dataset: Dataset, indices: np.ndarray, what: str
                ) -> Iterator[tuple[np.ndarray, Feed, Labels, int]]:
    """``(one index, feed, one-element labels or None, 0)``: each sample of a batched dataset as given."""
    for k in range(len(indices)):
        index = int(indices[k])
        sample = dataset[index]
        feed = check_feed(entry, sample.inputs, index, what)
        yield indices[k:k + 1], feed, (None if sample.label is None else [sample.label]), 0


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
