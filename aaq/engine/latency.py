"""Latency of a model against a reference: medians of interleaved runs on one fixed batch.

Runs alternate between the two models (a b, b a, a b, ...) so that clock-speed
drift, cache warmth and other processes weigh on both alike; the median ignores the
odd descheduled run. Sessions are built once, outside the timed region.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from aaq.engine.datasets import is_batched
from aaq.engine.feeds import fetch
from aaq.engine.protocol import EngineLike
from aaq.engine.session import model_bytes, session_options

logger = logging.getLogger(__name__)

MIN_RUNS = 5  # interleaved rounds always timed, whatever the budget


@dataclass(frozen=True)
class LatencyComparison:
    """Median milliseconds per batch of the reference (float) and the candidate (quantized) model."""

    reference_ms: float
    candidate_ms: float
    runs: int
    batch_size: int
    spread: tuple[float, float] = (float("nan"), float("nan"))
    """Quartiles of the per-round ratios (each round times both models back to back): how far
    the machine's noise moves the ratio, so that x1.02 within x0.95-x1.09 reads as a tie."""

    @property
    def ratio(self) -> float:
        """candidate / reference: below 1 the candidate is faster."""
        return self.candidate_ms / self.reference_ms if self.reference_ms > 0 else float("inf")

    @property
    def slower(self) -> bool:
        return self.candidate_ms > self.reference_ms

    def statement(self) -> str:
        """One plain sentence for the log and the report."""
        how = "SLOWER than" if self.slower else "faster than"
        low, high = self.spread
        within = "" if np.isnan(low) else (
            f"; per-round ratios x{low:.2f}-x{high:.2f}" + (", so within this machine's timing noise"
                                                             if low <= 1.0 <= high else ""))
        return (f"the final model is {how} the float model: {self.candidate_ms:.3f} ms vs "
                f"{self.reference_ms:.3f} ms per batch of {self.batch_size} (x{self.ratio:.2f}, "
                f"median of {self.runs} interleaved runs{within})")

    def as_dict(self) -> dict:
        return {"float_ms": self.reference_ms, "final_ms": self.candidate_ms, "ratio": self.ratio,
                "slower_than_float": self.slower, "ratio_quartiles": list(self.spread), "runs": self.runs,
                "batch_size": self.batch_size, "statement": self.statement()}


def compare_latency(reference: onnx.ModelProto | bytes | ort.InferenceSession,
                    candidate: onnx.ModelProto | bytes | ort.InferenceSession,
                    inputs: Mapping[str, np.ndarray], *, runs: int = 20, warmup: int = 3,
                    budget_seconds: float | None = None, options: ort.SessionOptions | None = None,
                    providers: Sequence[str] = ("CPUExecutionProvider",),
                    samples: int | None = None) -> LatencyComparison:
    """Time both models on ``inputs`` (one batch), interleaved, and return their medians.

    ``samples`` is how many samples the batch holds (default: the first input's first
    dim; 1 for a whole-feed sample). Sessions given are used as they are (an engine's cached ones: no build cost);
    models are loaded with ``options``. ``budget_seconds`` bounds the timed rounds
    after the first ``MIN_RUNS``: on a slow model the median of fewer rounds is still
    a median, and the check must not cost more than the search it reports on.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    options = options or session_options()
    sessions = [m if isinstance(m, ort.InferenceSession) else
                ort.InferenceSession(model_bytes(m)[0], options, providers=list(providers))
                for m in (reference, candidate)]
    feeds = [{i.name: inputs[i.name] for i in s.get_inputs()} for s in sessions]
    for _ in range(warmup):
        for s, feed in zip(sessions, feeds):
            s.run(None, feed)
    times: list[list[float]] = [[], []]
    started = time.perf_counter()
    for r in range(runs):
        if budget_seconds is not None and r >= MIN_RUNS and time.perf_counter() - started > budget_seconds:
            break
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    batch = samples if samples is not None else int(next(iter(inputs.values())).shape[0]) if inputs else 0
    ratios = np.asarray(times[1]) / np.maximum(np.asarray(times[0]), 1e-12)
    quartiles = (float(np.quantile(ratios, 0.25)), float(np.quantile(ratios, 0.75)))
    result = LatencyComparison(float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3),
                               len(times[0]), batch, quartiles)
    logger.debug("latency: %s", result.statement())
    return result


def time_interleaved(sessions: Mapping[str, ort.InferenceSession], inputs: Mapping[str, np.ndarray], *,
                     rounds: int, min_rounds: int = MIN_RUNS, warmup: int = 1,
                     budget_seconds: float | None = None) -> dict[str, list[float]]:
    """Seconds per run of each session on ``inputs``: every round runs each once, the order rotating.

    Timed together, all models share the machine's drift and other processes' load;
    rotating the order spreads any advantage of running first or after a given model.
    ``budget_seconds`` ends the rounds once spent (``min_rounds`` are always timed).
    """
    names = list(sessions)
    feeds = {n: {i.name: inputs[i.name] for i in s.get_inputs()} for n, s in sessions.items()}
    for _ in range(warmup):
        for n in names:
            sessions[n].run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter()
    for r in range(rounds):
        if budget_seconds is not None and r >= min_rounds and time.perf_counter() - started > budget_seconds:
            break
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            t = time.perf_counter()
            sessions[n].run(None, feeds[n])
            times[n].append(time.perf_counter() - t)
    return times


def latency_on_engine(engine: EngineLike, reference: onnx.ModelProto, candidate: onnx.ModelProto,
                      budget_seconds: float) -> LatencyComparison:
    """Both models on one batch of the engine's data (the model's fixed batch, else ``batch_size``;
    the first sample's feed, as given, on a batched dataset).

    The engine's cached sessions are used: they ran both models already, so they are
    warm and nothing is built again.
    """
    if is_batched(engine.dataset):
        return compare_latency(engine.session(reference), engine.session(candidate), engine.dataset[0].inputs,
                               warmup=1, budget_seconds=budget_seconds, samples=1)
    dims = reference.graph.input[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 0
    searched = engine.search_indices  # never a held-out sample
    inputs, _ = fetch(engine.dataset, searched[:min(fixed or engine.batch_size, len(searched))])
    return compare_latency(engine.session(reference), engine.session(candidate), inputs, warmup=1,
                           budget_seconds=budget_seconds)
