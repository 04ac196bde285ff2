"""Which kinds of layers stay float for speed, measured on this machine and this ONNX Runtime.

ONNX Runtime's int8 kernels are not faster than float everywhere, and where they are
not depends on the CPU (VNNI or not), the thread count and the version: rules
measured on one machine (``quantization.latency_kinds.slower_in_int8``) are wrong on
another. So ``latency_aware: "measure"`` times the whole model here, one kind of
layer at a time (``latency_kinds.KINDS``): the model with every kind accepted so far
in float, against the same with this kind in float too, on one batch of the
calibration data, in interleaved rounds (``latency.compare_latency``), within a time
budget. A kind goes float only when it is measured faster beyond the noise: the
median ratio below ``1 - TIE_MARGIN`` and three rounds in four faster. Otherwise, a
tie or a kind the budget left unmeasured, it stays int8: the decision is the same
whenever the timing cannot tell, and the result is never slower than the model with
every layer in int8 by more than the noise.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from aaq.engine.datasets import is_batched
from aaq.engine.feeds import fetch
from aaq.engine.latency import compare_latency
from aaq.engine.protocol import EngineLike
from aaq.engine.session import model_bytes, session_options

logger = logging.getLogger(__name__)

TIE_MARGIN = 0.03
"""A kind in float must be at least this much faster (median ratio) to stay float."""
MAX_RUNS = 40


@dataclass(frozen=True)
class KindDecision:
    """One kind's measurement: int8 against float in the whole model, and what was kept."""

    kind: str
    layers: tuple[str, ...]
    kept_float: bool
    why: str
    int8_ms: float | None = None
    float_ms: float | None = None
    ratio: float | None = None
    """float_ms / int8_ms: below 1 the kind is faster in float."""
    ratio_quartiles: tuple[float, float] | None = None
    runs: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def timing_feed(engine: EngineLike, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], int]:
    """One batch of calibration data (the engine's batch size, the model's fixed batch, or one whole
    feed of a batched dataset) and how many samples it holds."""
    dataset = getattr(engine, "calibration_dataset", None)
    dataset = engine.dataset if dataset is None else dataset
    if is_batched(dataset):
        return dict(dataset[0].inputs), 1
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 0
    size = min(fixed or engine.batch_size, len(dataset))
    inputs, _ = fetch(dataset, np.arange(size))
    if fixed and size < fixed:
        inputs = {n: np.concatenate([a, np.repeat(a[-1:], fixed - size, axis=0)]) for n, a in inputs.items()}
    return dict(inputs), size


def measure_float_kinds(engine: EngineLike, build: Callable[[frozenset[str]], onnx.ModelProto],
                        kinds: Mapping[str, Sequence[str]], budget_seconds: float) -> tuple[list[KindDecision], dict]:
    """Decide, kind by kind in order, which ``kinds`` (kind -> layer names) run faster in float.

    ``build(kinds)`` is the quantized model with those kinds in float. Returns the
    decisions and what was timed (the batch, seconds spent, the budget).
    """
    started = time.perf_counter()
    decisions: list[KindDecision] = []
    info: dict[str, Any] = {"budget_seconds": budget_seconds, "batch_samples": 0, "seconds": 0.0}
    if not kinds:
        return decisions, info
    options = getattr(engine, "session_options", None) or session_options()
    providers = list(engine.providers)

    def session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model_bytes(model)[0], options, providers=providers)

    accepted: frozenset[str] = frozenset()
    current_model = build(accepted)
    feed, samples = timing_feed(engine, current_model)
    info["batch_samples"] = samples
    current = session(current_model)
    names = list(kinds)
    for i, kind in enumerate(names):
        layers = tuple(kinds[kind])
        left = budget_seconds - (time.perf_counter() - started)
        if left <= 0:
            decisions.append(KindDecision(kind, layers, False, "not measured (the time budget was spent): int8"))
            continue
        candidate = session(build(accepted | {kind}))
        timed = compare_latency(current, candidate, feed, runs=MAX_RUNS, warmup=1,
                                budget_seconds=left / (len(names) - i), samples=samples)
        low, high = timed.spread
        faster = timed.ratio < 1.0 - TIE_MARGIN and high < 1.0
        if faster:
            why = f"faster in float: x{timed.ratio:.2f} (per-round x{low:.2f}-x{high:.2f})"
            accepted, current = accepted | {kind}, candidate
        elif timed.ratio > 1.0 and low > 1.0:
            why = f"faster in int8: float x{timed.ratio:.2f} (per-round x{low:.2f}-x{high:.2f})"
        else:
            why = f"within the noise: float x{timed.ratio:.2f} (per-round x{low:.2f}-x{high:.2f}): int8"
        decisions.append(KindDecision(kind, layers, faster, why, timed.reference_ms, timed.candidate_ms,
                                      timed.ratio, (low, high), timed.runs))
        logger.info("latency-aware: %s (%d layers): %s", kind, len(layers), why)
    info["seconds"] = time.perf_counter() - started
    return decisions, info
