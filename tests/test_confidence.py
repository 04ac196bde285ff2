"""Confidence on every drop: the paired bootstrap (more tests come with the rules that use it)."""
from __future__ import annotations

import numpy as np
import pytest

from aaq.accuracy.confidence import Confidence, drop_interval


def planted(n: int, p: float = 0.9, flip: float = 0.03, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = (rng.random(n) < p).astype(float)
    cand = ref.copy()
    cand[rng.random(n) < flip] = 0.0
    return cand, ref


def test_a_mean_metric_interval_matches_the_normal_approximation() -> None:
    cand, ref = planted(20000)
    iv = drop_interval(cand, ref, higher_is_better=True, resamples=4000)
    diff = ref - cand
    half = 1.959964 * diff.std(ddof=1) / np.sqrt(len(diff))
    assert iv.point == pytest.approx(diff.mean())
    assert iv.low == pytest.approx(diff.mean() - half, abs=0.1 * half)
    assert iv.high == pytest.approx(diff.mean() + half, abs=0.1 * half)
    # continuous scores take the index-matrix path: the same agreement
    rng = np.random.default_rng(1)
    c = rng.random(5000)
    r = c + rng.normal(0.01, 0.05, 5000)
    iv = drop_interval(c, r, higher_is_better=True, resamples=2000)
    half = 1.959964 * (r - c).std(ddof=1) / np.sqrt(5000)
    assert iv.high - iv.low == pytest.approx(2 * half, rel=0.1)


def test_the_seeded_interval_is_identical_run_to_run_and_an_aggregating_metric_agrees() -> None:
    cand, ref = planted(500)
    a = drop_interval(cand, ref, higher_is_better=True, seed=7)
    assert a == drop_interval(cand, ref, higher_is_better=True, seed=7)
    assert a != drop_interval(cand, ref, higher_is_better=True, seed=8)
    # a ratio of summed counts, folded by the metric's own aggregate, resampled from its per-sample parts
    ratio = lambda entries: sum(c for c, _ in entries) / sum(t for _, t in entries)  # noqa: E731
    parts = lambda scores: [(s, 1.0) for s in scores]  # noqa: E731
    b = drop_interval(parts(cand), parts(ref), higher_is_better=True, seed=7, aggregate=ratio, resamples=1000)
    assert b == drop_interval(parts(cand), parts(ref), higher_is_better=True, seed=7, aggregate=ratio,
                              resamples=1000)
    assert b.point == pytest.approx(a.point)
    assert b.low == pytest.approx(a.low, abs=0.006) and b.high == pytest.approx(a.high, abs=0.006)


def test_relative_drops_lower_is_better_and_a_given_baseline() -> None:
    cand, ref = planted(2000)
    absolute = drop_interval(cand, ref, higher_is_better=True)
    relative = drop_interval(cand, ref, higher_is_better=True, relative=True)
    assert relative.drop_type == "relative" and relative.point == pytest.approx(absolute.point / ref.mean())
    assert relative.low < relative.point < relative.high
    errors = drop_interval(1 - cand, 1 - ref, higher_is_better=False)
    assert errors.point == pytest.approx(absolute.point)
    given = drop_interval(cand, 0.9, higher_is_better=True)  # only the candidate is resampled: a wider interval
    assert given.point == pytest.approx(0.9 - cand.mean()) and given.high - given.low > absolute.high - absolute.low


def test_the_too_few_samples_sentence() -> None:
    cand, ref = planted(300, flip=0.01, seed=3)
    iv = drop_interval(cand, ref, higher_is_better=True)
    assert iv.straddles(0.01)
    line = iv.statement(0.01, "top1")
    assert line.startswith(f"top1: drop {iv.point:.4f}, 95% interval [{iv.low:.4f}, {iv.high:.4f}] on 300 samples")
    assert "too few samples to tell; about" in line and "would be needed" in line
    assert iv.samples_needed(0.01) > 300
    assert iv.statement(0.5) is None
    with pytest.raises(ValueError):
        Confidence(level=1.0)
    with pytest.raises(ValueError):
        Confidence(require="lower")
