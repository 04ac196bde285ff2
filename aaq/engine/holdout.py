"""The held-out part of the evaluation dataset: a seeded split, stratified by class label where there are labels.

``engine.dataset.holdout`` (a fraction in (0, 1) or a count) sets samples aside
that calibration, ranking, the stop rule and every search step never see; they are
evaluated once, at the end, for the float and the final model, to check that the
search did not overfit the samples it searched on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aaq.errors import BadInputError, SpecError

MIN_SIDE = 10
"""The fewest samples either side of the split may keep."""
SEED = 0
"""The split's seed: the same dataset and holdout give the same split in every run."""


@dataclass(frozen=True)
class Split:
    """Sorted sample indices: ``search`` (what everything but the final check uses) and ``held_out``."""

    search: np.ndarray
    held_out: np.ndarray

    @classmethod
    def whole(cls, size: int) -> "Split":
        return cls(np.arange(size, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def make(cls, size: int, holdout: float | int | None, labels: Any = None, seed: int = SEED) -> "Split":
        """The split of ``size`` samples; ``labels`` (one class index per sample) stratify it when given."""
        if holdout is None:
            return cls.whole(size)
        count = holdout_count(size, holdout)
        rng = np.random.default_rng(seed)
        classes = class_labels_of(labels, size)
        if classes is None:
            held = rng.choice(size, count, replace=False)
        else:
            held = _stratified(classes, count, rng)
        mask = np.zeros(size, dtype=bool)
        mask[held] = True
        return cls(np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64))


def seeded_subset(pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` sorted distinct indices of ``pool`` drawn with ``np.random.default_rng(seed)``; all when too few."""
    if size < 0:
        raise BadInputError(f"a subset size must be >= 0, got {size}")
    if size >= len(pool):
        return pool.copy()
    return np.sort(np.random.default_rng(seed).choice(pool, size, replace=False))


def checked_holdout(size: int, holdout: float | int | None, json_path: str) -> float | int | None:
    """``holdout`` when it fits ``size`` samples, else a SpecError at ``json_path.holdout``."""
    if holdout is not None:
        try:
            holdout_count(size, holdout)
        except BadInputError as exc:
            raise SpecError([(f"{json_path}.holdout", str(exc))]) from None
    return holdout


def holdout_count(size: int, holdout: float | int) -> int:
    """How many samples ``holdout`` sets aside (a fraction of ``size`` or a count); each side keeps ``MIN_SIDE``."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        raise BadInputError(f"holdout must be a fraction in (0, 1) or a count >= 1, got {holdout!r}")
    if float(holdout).is_integer() and holdout >= 1:
        count = int(holdout)
    elif 0 < holdout < 1:
        count = int(round(holdout * size))
    else:
        raise BadInputError(f"holdout must be a fraction in (0, 1) or a count >= 1, got {holdout!r}")
    if count < MIN_SIDE or size - count < MIN_SIDE:
        raise BadInputError(f"holdout {holdout!r} of {size} samples keeps {count} held out and {size - count} to "
                            f"search on: each side needs at least {MIN_SIDE}")
    return count


def class_labels_of(labels: Any, size: int) -> np.ndarray | None:
    """``labels`` as one integer class per sample, or None when they are not class labels (no stratification)."""
    if labels is None:
        return None
    try:
        array = np.asarray(labels)
    except Exception:  # labels of any shape or type: then no stratification
        return None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (size,) or array.dtype.kind not in "iub":
        return None
    return array.astype(np.int64)


def _stratified(classes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices, each class in proportion to its size (largest remainders), seeded within each class."""
    values, inverse = np.unique(classes, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(values))
    exact = sizes * count / len(classes)
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:count - int(take.sum())]] += 1
    picked = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)]
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
