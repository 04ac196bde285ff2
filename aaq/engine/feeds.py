"""How a dataset's samples become a model's feed, and whether they can: stacked batches or whole-feed samples.

``fetch`` turns sample indices into stacked input arrays and labels (through the
dataset's ``batch`` when it has one); every fault names the dataset and the sample.

Stacked datasets are checked once per (session, dataset), on the first sample, before
any batch is run: a dataset that does not fit is a ``DataError`` naming the input,
what the model expects and what the data gives. A batched dataset (every sample a
complete feed, ``"batched": true``) may give other shapes in every sample, so each
sample's feed is checked as it is read, and an error names the sample and the input.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from aaq.engine.datasets import Dataset, Labels, Sample, is_batched
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
