"""The Engine: runs ONNX models on a dataset with ONNX Runtime and scores them, caching everything.

Almost all of aaq's time is spent here, so the hot path is: a cached session, a
batch sliced out of the dataset (a view when the indices are consecutive), one
``session.run``, vectorised metric scoring. Nothing is inferred twice for the same
model and sample in one engine's life: metric entries are cached per (model digest,
sample index), and the float model's raw outputs are kept for the samples whose
outputs something reads (a metric that compares with the float model, an output
distance), not for every sample the float model is scored on: on a model with large
outputs that store would be the biggest thing in memory.

A batched dataset (``datasets.is_batched``: every sample a complete feed) is run one sample
per session run, as given: ``run`` yields one index and that run's outputs, a metric scores
one run at a time, ``outputs`` gives one entry per sample (object arrays: shapes may differ).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from aaq.engine.augment import AugmentedModels
from aaq.engine.configure import engine_arguments
from aaq.engine.datasets import Dataset, is_batched
from aaq.engine.executor_choice import as_executor
from aaq.engine.executors import Executor
from aaq.engine.evaluation import (Evaluation, EvaluationRecord, OutputStore, ScoreCache, check_finite,
                                    object_entries, put_entries, score_batch)
from aaq.engine.feeds import check_dataset_fits, checked_indices, stacked_feeds, unique_in_order, whole_feeds
from aaq.engine.holdout import Split, seeded_subset
from aaq.engine.metrics import Metric
from aaq.engine.session import SessionCache, SessionEntry, model_bytes, session_options
from aaq.errors import BadInputError, DataError

logger = logging.getLogger(__name__)

StopHook = Callable[[Evaluation], bool]


class Engine:
    """ONNX Runtime inference over a map-style dataset, with per-sample metrics and caches.

    ``dataset`` is what models are evaluated on; ``calibration_dataset`` (default: the
    dataset) is what statistics are collected on. Sessions are cached by model
    digest in an LRU of ``session_cache_size``. ``executor`` is where independent
    candidate evaluations go (``engine.executors``: an Executor, an ``executor`` spec
    entry, a ``distributed.Client``; default: this process).
    """

    def __init__(self, dataset: Dataset, metrics: Sequence[Metric], *, calibration_dataset: Dataset | None = None,
                 batch_size: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0, graph_optimization_level: str = "all", allow_spinning: bool = False,
                 progress: bool = True, session_cache_size: int = 8, holdout: float | int | None = None,
                 executor: Any = None) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise BadInputError(f"metric names must be unique, got {names}")
        unavailable = [p for p in providers if p not in ort.get_available_providers()]
        if unavailable:
            raise BadInputError(f"execution provider(s) {unavailable} are not available in this onnxruntime "
                                f"(available: {', '.join(ort.get_available_providers())})")
        self.dataset = dataset
        self.calibration_dataset = calibration_dataset
        self.metrics = list(metrics)
        self.batch_size = batch_size
        self.progress = progress
        self.executor: Executor = as_executor(executor)
        self.history: list[EvaluationRecord] = []
        self.session_runs = 0
        self.inferred_by_model: Counter[str] = Counter()
        """Samples of ``dataset`` run through each model (by digest), by evaluations and raw runs alike."""
        self._size = len(dataset)
        self.split = Split.make(self._size, holdout, getattr(dataset, "labels", None))
        self._sessions = SessionCache(session_options(intra_op_threads, graph_optimization_level, allow_spinning),
                                      providers, session_cache_size)
        self._scores: dict[str, ScoreCache] = {}
        self._float: tuple[bytes, str] | None = None
        self._whole = is_batched(dataset)
        self._reference = OutputStore(self._size, whole=self._whole)
        self._augmented = AugmentedModels(session_cache_size)

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options every session of this engine is built with (threads, optimization level)."""
        return self._sessions.options

    @property
    def providers(self) -> list[str]:
        return list(self._sessions.providers)

    @classmethod
    def from_spec(cls, engine_spec: dict, base_dir: Path, *, progress: bool = True) -> "Engine":
        """An engine for the validated, default-filled ``engine`` section of a spec."""
        return cls(**engine_arguments(engine_spec, base_dir), progress=progress)

    # ------------------------------------------------------------------ sizes and subsets

    @property
    def num_samples(self) -> int:
        return self._size

    @property
    def num_calibration_samples(self) -> int:
        return len(self._calibration())

    @property
    def search_indices(self) -> np.ndarray:
        """The samples algorithms search on: all but the held-out ones."""
        return self.split.search

    @property
    def holdout_indices(self) -> np.ndarray:
        """The held-out samples (none without ``holdout``)."""
        return self.split.held_out

    def calibration_indices(self, num_samples: int) -> np.ndarray:
        """The first ``min(num_samples, len)`` calibration samples (POT's default); never a held-out one."""
        pool = self.split.search if self.calibration_dataset is None else np.arange(len(self.calibration_dataset))
        return pool[:max(num_samples, 0)].astype(np.int64)

    def subset(self, size: int, seed: int, *, among: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """``size`` sorted distinct indices drawn with ``np.random.default_rng(seed)``; all when too few."""
        pool = np.arange(self._size, dtype=np.int64) if among is None else np.unique(
            checked_indices(among, self._size, "dataset"))
        return seeded_subset(pool, size, seed)

    # ------------------------------------------------------------------ the float model

    def set_float_model(self, model: onnx.ModelProto | bytes) -> None:
        """The reference of agreement metrics and output distances; checks the data fits it.

        The check (input names, rank, dtype, fixed dims) runs before any inference, on
        the dataset and the calibration dataset.
        """
        data, digest = model_bytes(model)
        entry = self._sessions.get(data, digest)
        check_dataset_fits(entry, self.dataset, "dataset")
        if self.calibration_dataset is not None:
            check_dataset_fits(entry, self.calibration_dataset, "calibration dataset")
        if self._float is None or self._float[1] != digest:
            self._float = (data, digest)
            self._reference = OutputStore(self._size, whole=self._whole)

    # ------------------------------------------------------------------ raw inference

    def run(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray, *,
            outputs: Sequence[str] | None = None, calibration: bool = False,
            progress_desc: str | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(batch_indices, {tensor name: batched array})`` over ``indices``, in order.

        ``outputs`` may name any tensor of the model (intermediate ones are added as
        graph outputs of a copy). ``calibration=True`` reads the calibration dataset.
        Errors in the arguments are raised here, before the first batch is asked for.
        On a batched dataset every item is one sample's index and its run's tensors as given.
        """
        dataset, what = (self._calibration(), "calibration dataset") if calibration else (self.dataset, "dataset")
        idx = checked_indices(indices, len(dataset), what)
        data, digest = model_bytes(model)
        source_digest = digest  # the model asked for, not its copy with more outputs
        if outputs is None:
            entry = self._session(data, digest, dataset, what)
            names: Sequence[str] = entry.output_names
            finite: Sequence[str] = names
        else:
            names = tuple(outputs)
            data, digest, graph_outputs = self._augmented.get(data, digest, names)
            entry = self._session(data, digest, dataset, what)
            finite = [n for n in names if n in graph_outputs]

        def batches() -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
            with self._bar(len(idx), progress_desc or "inference") as bar:
                for bidx, out, _ in self._infer(entry, dataset, idx, names, finite):
                    if not calibration:
                        self.inferred_by_model[source_digest] += len(bidx)
                    bar.update(len(bidx))
                    yield bidx, out
                    del out  # see _infer: keep at most one batch of outputs alive

        return batches()

    def outputs(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The graph outputs of ``model`` on ``indices``, stacked; the float model's come from its cache.

        On a batched dataset: one entry per sample, each that sample's run's output (object arrays).
        """
        idx = checked_indices(indices, self._size, "dataset")
        data, digest = model_bytes(model)
        if self._float is not None and digest == self._float[1]:
            self._fill_reference(idx)
            return self._reference.get(idx)
        parts = [out for _, out in self.run(data, idx, progress_desc="outputs")]
        if not parts:
            entry = self._sessions.get(data, digest)
            return {n: np.empty((0,), dtype=object if self._whole else np.float32) for n in entry.output_names}
        if self._whole:
            return {n: object_entries([p[n] for p in parts]) for n in parts[0]}
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def session(self, model: onnx.ModelProto | bytes) -> ort.InferenceSession:
        """The engine's ONNX Runtime session for ``model``: the cached one when it was run before."""
        return self._sessions.get(*model_bytes(model)).session

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: onnx.ModelProto | bytes, indices: Sequence[int] | np.ndarray | None = None, *,
                 stop: StopHook | None = None, progress_desc: str | None = None) -> Evaluation:
        """Every metric of ``model`` on ``indices`` (default: the whole dataset), served from cache when possible.

        ``stop(partial)`` is called after each batch (and once before the first one when cached samples
        already count) with an ``Evaluation`` over the samples done so far; when it returns True the
        evaluation ends there, with ``complete=False`` and ``stopped_early=True``.
        """
        started = time.perf_counter()
        data, digest = model_bytes(model)
        idx = np.arange(self._size, dtype=np.int64) if indices is None else checked_indices(
            indices, self._size, "dataset")
        cache = self._cache(digest)
        missing = unique_in_order(idx[~cache.have[idx]])
        inferred, stopped = 0, False
        if missing.size and stop is not None and cache.have[idx].any():
            stopped = bool(stop(self._partial(cache, digest, idx, 0, started)))
        if missing.size and not stopped:
            entry = self._session(data, digest, self.dataset, "dataset")
            self._prepare_reference(digest, missing)
            with self._bar(len(missing), progress_desc or "evaluating") as bar:
                for n in self._score_batches(entry, digest, cache, missing):
                    inferred += n
                    bar.update(n)
                    if stop is not None and inferred < len(missing) and stop(
                            self._partial(cache, digest, idx, inferred, started)):
                        stopped = True
                        break
        done = idx[cache.have[idx]] if stopped else idx
        return self._finish(cache, digest, idx, done, inferred, time.perf_counter() - started, stopped)

    def absorb(self, digest: str, indices: Sequence[int] | np.ndarray, entries: dict[str, np.ndarray],
               seconds: float, *, requested: int | None = None) -> Evaluation:
        """An evaluation an executor's worker made (``entries[metric]`` aligned with ``indices``, as
        ``metric.score`` returned them), merged as ``evaluate`` would have made it here: only the samples
        not cached count as inferred and are stored, and the float outputs a reference metric reads are
        filled, so that caches, history and counts do not depend on the executor. ``requested``: the
        worker's evaluation was stopped early after ``indices`` of that many samples."""
        idx = checked_indices(indices, self._size, "dataset")
        cache = self._cache(digest)
        missing = unique_in_order(idx[~cache.have[idx]])
        if missing.size:
            self._prepare_reference(digest, missing)
            put_entries(cache, self.metrics, idx, missing, entries)
            self.inferred_by_model[digest] += len(missing)
        stopped = requested is not None and requested > len(idx)
        return self._finish(cache, digest, idx, idx, int(missing.size), seconds, stopped, requested)

    def cached(self, digest: str, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Those of ``indices`` cached for the model ``digest`` and their entries (what ``absorb`` takes)."""
        idx = checked_indices(indices, self._size, "dataset")
        have = idx[self._cache(digest).have[idx]]
        return have, self.entries(digest, have)

    def _finish(self, cache: ScoreCache, digest: str, idx: np.ndarray, done: np.ndarray, inferred: int,
                seconds: float, stopped: bool, requested: int | None = None) -> Evaluation:
        """The evaluation over ``done`` from the cache, recorded in ``history``."""
        values, per_sample = cache.evaluation_values(self.metrics, done)
        result = Evaluation(values, per_sample, done, inferred, seconds, complete=not stopped,
                            stopped_early=stopped, model_digest=digest, requested=requested or len(idx))
        full = not stopped and np.unique(idx).size == self._size
        self.history.append(EvaluationRecord(digest, bool(full), len(done), inferred, result.seconds,
                                             not stopped, dict(values)))
        logger.debug("evaluated %s on %d samples (%d inferred%s) in %.2f s: %s", digest[:12], len(done),
                     inferred, ", stopped early" if stopped else "", result.seconds, values)
        return result

    def entries(self, digest: str, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The cached metric entries of the model with ``digest`` on ``indices``, by metric; no inference.

        Float scores for a per-sample metric, an object array of partial entries
        otherwise. Every sample must have been evaluated for that model.
        """
        idx = checked_indices(indices, self._size, "dataset")
        cache = self._scores.get(digest)
        if cache is None or not cache.have[idx].all():
            raise BadInputError(f"model {digest[:12]} has not been evaluated on all of these samples")
        return {m.name: cache.entries[m.name][idx] for m in self.metrics}

    # ------------------------------------------------------------------ internals

    def _calibration(self) -> Dataset:
        return self.calibration_dataset if self.calibration_dataset is not None else self.dataset

    def _is_float(self, digest: str) -> bool:
        return self._float is not None and digest == self._float[1]

    def _cache(self, digest: str) -> ScoreCache:
        cache = self._scores.get(digest)
        if cache is None:
            cache = self._scores[digest] = ScoreCache(self._size, self.metrics)
        return cache

    def _session(self, data: bytes, digest: str, dataset: Dataset, what: str) -> SessionEntry:
        entry = self._sessions.get(data, digest)
        check_dataset_fits(entry, dataset, what)
        return entry

    def _reference_check(self) -> None:
        if self._float is None and any(m.reference for m in self.metrics):
            names = [m.name for m in self.metrics if m.reference]
            raise BadInputError(f"metric(s) {names} compare with the float model: call "
                                f"Engine.set_float_model first")

    def _prepare_reference(self, digest: str, missing: np.ndarray) -> None:
        """Before scoring ``missing`` samples of a model: the float outputs its reference metrics read."""
        if self._is_float(digest):
            self._reference_check()
        elif any(m.reference for m in self.metrics):
            self._fill_reference(missing)

    def _fill_reference(self, indices: np.ndarray) -> None:
        """Run the float model where its outputs are not kept yet (scoring it on the way)."""
        self._reference_check()
        if self._float is None:
            return
        need = unique_in_order(indices[~self._reference.have[indices]])
        if need.size:
            data, digest = self._float
            entry = self._session(data, digest, self.dataset, "dataset")
            with self._bar(len(need), "float model") as bar:
                for n in self._score_batches(entry, digest, self._cache(digest), need, keep_reference=True):
                    bar.update(n)

    def _score_batches(self, entry: SessionEntry, digest: str, cache: ScoreCache, indices: np.ndarray, *,
                       keep_reference: bool = False) -> Iterator[int]:
        """Infer and score ``indices`` batch by batch into ``cache``; yields each batch's size.

        The float model's outputs are stored when ``keep_reference`` or a metric compares with them.
        """
        is_float = self._is_float(digest)
        compares = any(m.reference for m in self.metrics)
        names = entry.output_names
        for bidx, out, labels in self._infer(entry, self.dataset, indices, names, names):
            if is_float:
                if keep_reference or compares:
                    self._reference.put(bidx, out)
                reference = out
            elif compares:
                reference = self._reference.row(int(bidx[0])) if self._whole else self._reference.get(bidx)
            else:
                reference = None
            score_batch(cache, self.metrics, bidx, out, reference, labels, self._whole)
            self.inferred_by_model[digest] += len(bidx)
            yield len(bidx)

    def _infer(self, entry: SessionEntry, dataset: Dataset, indices: np.ndarray, names: Sequence[str],
               finite: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], Any]]:
        """The hot loop: slice, run, check. Batches of ``batch_size`` unless the model fixes it;
        one run per sample, as given, on a batched dataset."""
        if is_batched(dataset):
            feeds = whole_feeds(entry, dataset, indices, "dataset" if dataset is self.dataset else
                                "calibration dataset")
        else:
            feeds = stacked_feeds(entry, dataset, indices, entry.fixed_batch or self.batch_size)
        names = list(names)
        run = entry.session.run
        for bidx, feed, labels, pad in feeds:
            try:
                arrays = run(names, feed)
            except Exception as exc:  # ORT's own exception types; the message says what it refused
                where = f"sample {int(bidx[0])}" if len(bidx) == 1 else f"samples {int(bidx[0])}..{int(bidx[-1])}"
                raise DataError(f"ONNX Runtime failed on {where}: {exc}", int(bidx[0])) from None
            self.session_runs += 1
            out = dict(zip(names, arrays))
            if pad:
                out = {n: a[:len(bidx)] for n, a in out.items()}
            for name in finite:
                check_finite(out[name], bidx, name)
            yield bidx, out, labels
            del arrays, out, feed  # drop this batch before the next runs: one batch in memory, not two

    def _partial(self, cache: ScoreCache, digest: str, idx: np.ndarray, inferred: int,
                 started: float) -> Evaluation:
        done = idx[cache.have[idx]]
        values, per_sample = cache.evaluation_values(self.metrics, done)
        return Evaluation(values, per_sample, done, inferred, time.perf_counter() - started,
                          complete=False, model_digest=digest, requested=len(idx))

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="sample", leave=False, dynamic_ncols=True,
                    disable=not self.progress or total == 0)

