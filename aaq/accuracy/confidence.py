"""How sure a drop is: a paired bootstrap over samples, and the rule that says whether a target needs it.

Pure numpy; nothing here runs a model. The drop of a candidate against the float
model is measured on one set of samples. Resampling those sample indices with
replacement and recomputing *both* models' metric on the same resample (paired: a
sample both models get right or wrong moves neither) gives the drop's sampling
distribution; its percentiles are the interval.

- A metric whose value is the mean of per-sample scores is resampled from the
  scores, vectorised: ``(rows, n)`` int32 index matrices, in chunks of at most
  ``CHUNK`` indices so memory stays bounded whatever the sample count; when the
  scores take few distinct values (accuracy), each resample's count of every
  distinct (reference, candidate) pair is drawn multinomially instead, the same
  distribution at a cost independent of the sample count.
- A metric that aggregates (F1, H-mean, recall at k) is recomputed from its
  per-sample entries through its own ``aggregate``, once per resample (a Python
  loop: its cost is ``resamples`` calls of ``aggregate``).
- The reference is the float model's entries on the same samples, or a constant
  (the user's ``baseline_value``): then only the candidate is resampled.
- Scores that are each one end of the metric's ``bounds`` (accuracy's 0/1): each
  corner of the bounds box gets a pseudo-count of ``PSEUDO`` before the multinomial
  draw (Agresti and Min's adjustment for matched proportions). Without it, a set on
  which the two models never disagree resamples to the interval [0, 0] however small
  it is; with it the interval keeps the width those few samples cannot rule out. Its
  weight vanishes as samples grow. Graded scores (a per-line character accuracy) do
  not collapse that way and are resampled as they are.
- ``relative``: the interval of ``drop / |reference|`` (each resample's own reference
  when it is resampled).

Resamples come from ``np.random.default_rng(seed)``: the same seed gives the same
interval run to run, and the same resample indices for both models of a pair.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

CHUNK = 1 << 20
"""The most resample indices held at once (int32: 4 MB)."""
DISTINCT = 64
"""Up to this many distinct per-sample score rows, resample counts are drawn multinomially."""
PSEUDO = 0.5
"""The pseudo-count each corner of a bounded metric's score box adds to the multinomial draw."""

REQUIRES = ("point", "upper")


@dataclass(frozen=True)
class Confidence:
    """The confidence rule of a target: the interval's ``level`` and what "met" requires.

    ``require="point"``: the point drop within the allowed drop (POT's semantics; the
    interval is reported, not used). ``require="upper"``: the interval's upper bound
    within it. Shared by AccuracyAwareQuantization and Tuning's ``accuracy_criterion``.
    """

    level: float = 0.95
    require: str = "point"
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.level < 1:
            raise ValueError(f"confidence level must be in (0.5, 1), got {self.level}")
        if self.require not in REQUIRES:
            raise ValueError(f"confidence require must be one of {', '.join(REQUIRES)}, got {self.require!r}")
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")

    @property
    def upper(self) -> bool:
        """Whether a target counts as met only when the interval's upper bound is within it."""
        return self.require == "upper"

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, seed: int = 0) -> "Confidence | None":
        """The rule of a params object ``{"level", "require", "resamples"}``; None stays None (no intervals)."""
        if params is None:
            return None
        return cls(float(params.get("level", 0.95)), str(params.get("require", "point")),
                   int(params.get("resamples", 2000)), int(seed))


@dataclass(frozen=True)
class DropInterval:
    """A drop, its bootstrap interval and how it was made; ``set`` is ``search`` or ``held-out``."""

    point: float
    low: float
    high: float
    level: float
    samples: int
    resamples: int
    seed: int
    set: str = "search"
    drop_type: str = "absolute"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def straddles(self, limit: float) -> bool:
        """``limit`` lies in the interval (below its upper end): these samples cannot tell on which side the drop is."""
        return self.low <= limit < self.high

    def samples_needed(self, limit: float) -> int | None:
        """About how many samples would put ``limit`` outside the interval (None: the point is on it).

        An estimate: the half-width facing ``limit`` shrinks as 1/sqrt(n), so
        ``n * (half-width / distance)^2``.
        """
        distance = abs(limit - self.point)
        if distance == 0:
            return None
        half = (self.high - self.point) if self.point <= limit else (self.point - self.low)
        return int(math.ceil(self.samples * (half / distance) ** 2))

    def statement(self, limit: float, name: str = "") -> str | None:
        """One sentence when the interval straddles ``limit``, with the numbers; None otherwise."""
        if not self.straddles(limit):
            return None
        needed = self.samples_needed(limit)
        more = "far more would be needed (the drop is on the target)" if needed is None else \
            f"about {needed} would be needed (an estimate)"
        what = "relative drop" if self.drop_type == "relative" else "drop"
        where = " held-out" if self.set == "held-out" else ""
        return (f"{name + ': ' if name else ''}{what} {self.point:.4f}, {self.level:.0%} interval "
                f"[{self.low:.4f}, {self.high:.4f}] on {self.samples}{where} samples against {limit:g}: "
                f"too few samples to tell; {more}")


def resample_indices(n: int, resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Chunks of ``(rows, n)`` int32 resample indices, ``resamples`` rows in all, at most ``CHUNK`` indices each."""
    rows = max(1, CHUNK // max(n, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n), dtype=np.int32)


def resampled_means(columns: Sequence[np.ndarray], resamples: int, seed: int,
                    corners: np.ndarray | None = None) -> np.ndarray:
    """``(resamples, len(columns))``: the mean of each column of per-sample scores on each resample (rows paired).

    When the samples take few distinct score rows (accuracy: 0 or 1 per model), the
    counts of each distinct row in a resample are drawn directly, multinomially: the
    same distribution as resampling indices, at a cost that does not grow with n;
    ``corners`` (rows of extreme scores) then add ``PSEUDO`` each to the frequencies.
    Otherwise ``(rows, n)`` int32 index matrices are gathered, chunk by chunk.
    """
    stack = np.column_stack([np.asarray(c, np.float64) for c in columns])
    n = len(stack)
    rng = np.random.default_rng(seed)
    rows, inverse = np.unique(stack, axis=0, return_inverse=True)
    if len(rows) <= DISTINCT:
        weights = np.bincount(np.ravel(inverse), minlength=len(rows)).astype(np.float64)
        if corners is not None:
            rows = np.concatenate([rows, corners])
            weights = np.concatenate([weights, np.full(len(corners), PSEUDO)])
        counts = rng.multinomial(n, weights / weights.sum(), size=resamples)
        return counts @ rows / n
    out = np.empty((resamples, stack.shape[1]), dtype=np.float64)
    pos = 0
    for idx in resample_indices(n, resamples, rng):
        for j in range(stack.shape[1]):
            out[pos:pos + len(idx), j] = stack[idx, j].mean(axis=1)
        pos += len(idx)
    return out


def resampled_aggregates(entries: Sequence[Any], resamples: int, seed: int,
                         aggregate: Callable[[Any], float]) -> np.ndarray:
    """``aggregate`` of the entries on each resample (one call per resample)."""
    n = len(entries)
    objects = np.empty(n, dtype=object)
    objects[:] = list(entries)
    out = np.empty(resamples, dtype=np.float64)
    pos = 0
    for idx in resample_indices(n, resamples, np.random.default_rng(seed)):
        for row in idx:
            out[pos] = float(aggregate(list(objects[row])))
            pos += 1
    return out


def drop_interval(candidate: Sequence[Any] | np.ndarray, reference: Sequence[Any] | np.ndarray | float, *,
                  higher_is_better: bool, level: float = 0.95, resamples: int = 2000, seed: int = 0,
                  relative: bool = False, aggregate: Callable[[Any], float] | None = None,
                  which: str = "search", bounds: tuple[float, float] | None = None) -> DropInterval:
    """The paired bootstrap interval of the drop of ``candidate`` against ``reference`` on the same samples.

    ``candidate`` and ``reference`` are per-sample entries aligned sample by sample
    (float scores, or a metric's partial entries with its ``aggregate``); ``reference``
    may be a number instead (a given baseline: only the candidate is resampled).
    ``bounds``: the range every per-sample score lies in (the metric's ``bounds``),
    which smooths the draw of scores that are all at its ends (see the module's docstring).
    """
    n = len(candidate)
    if n == 0:
        raise ValueError("a drop interval needs at least one sample")
    constant = np.isscalar(reference) or isinstance(reference, (int, float))
    if not constant and len(reference) != n:  # type: ignore[arg-type]
        raise ValueError(f"candidate and reference entries differ in length ({n} vs {len(reference)})")
    value = (lambda e: float(np.mean(np.asarray(e, np.float64)))) if aggregate is None else aggregate
    sign = 1.0 if higher_is_better else -1.0
    ref_point = float(reference) if constant else float(value(reference))  # type: ignore[arg-type]
    point = sign * (ref_point - float(value(candidate)))
    extremes = bounds is not None and aggregate is None and all(
        np.isin(np.asarray(e, np.float64), bounds).all() for e in ([candidate] if constant else [candidate, reference]))
    box = np.array([[lo, hi] for lo in bounds for hi in bounds], np.float64) if extremes else None
    if aggregate is None and not constant and not relative:  # the drop of means is the mean of differences
        diff = np.asarray(reference, np.float64) - np.asarray(candidate, np.float64)
        corners = None if box is None else (box[:, 1] - box[:, 0])[:, None]
        drops = sign * resampled_means([diff], resamples, seed, corners)[:, 0]
    else:
        if aggregate is None:
            corners = None if box is None else (np.array(bounds, np.float64)[:, None] if constant else box)
            means = resampled_means([candidate] if constant else [candidate, reference],  # type: ignore[list-item]
                                    resamples, seed, corners)
            cand = means[:, 0]
            ref = np.full(resamples, ref_point) if constant else means[:, 1]
        else:
            cand = resampled_aggregates(candidate, resamples, seed, aggregate)
            ref = np.full(resamples, ref_point) if constant else resampled_aggregates(
                reference, resamples, seed, aggregate)  # type: ignore[arg-type]
        drops = sign * (ref - cand)
        if relative:
            drops = drops / np.where(ref != 0, np.abs(ref), 1.0)
    if relative:
        point = point / (abs(ref_point) if ref_point else 1.0)
    alpha = 1.0 - level
    low, high = (float(q) for q in np.nanquantile(drops, [alpha / 2, 1 - alpha / 2]))
    return DropInterval(point, low, high, level, n, resamples, seed, which, "relative" if relative else "absolute")
