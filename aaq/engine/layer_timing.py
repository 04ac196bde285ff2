"""Which kinds of layers stay float for speed, measured on this machine and this ONNX Runtime.

ONNX Runtime's int8 kernels are not faster than float everywhere, and where they are
not depends on the CPU (VNNI or not), the thread count and the version: rules
measured on one machine (``quantization.latency_kinds.slower_in_int8``) are wrong on
another. So ``latency_aware: "measure"`` times whole models here, side by side, in
one contest: every layer in int8 (``"off"``), then the kinds of ``latency_kinds.KINDS``
put in float one more at a time in that order (the rules' slow kinds first, so the
rules' layout is one of them), all on one batch of the calibration data, every round
running each model once in an order that rotates (``latency.time_interleaved``),
within a time budget. The fastest layout wins only if it beats all-int8 beyond the
noise: the median of its per-round ratios to all-int8 below ``1 - TIE_MARGIN`` and
three rounds in four faster. Otherwise (a tie) every layer stays int8: the decision
is the same whenever the timing cannot tell, and the kept model is never slower than
all-int8 by more than the noise.

An earlier version decided kind by kind, each against the layout before it; on
PP-OCR cls it kept a layout that ran x1.19 of float where the rules' ran x0.96, and
the layout it kept had never been timed against the rules' or all-int8 one.
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
from aaq.engine.latency import time_interleaved
from aaq.engine.protocol import EngineLike
from aaq.engine.session import model_bytes, session_options

logger = logging.getLogger(__name__)

TIE_MARGIN = 0.03
"""A layout with kinds in float must be at least this much faster (median per-round ratio) than all-int8."""
MAX_ROUNDS = 30
MIN_ROUNDS = 3


@dataclass(frozen=True)
class KindDecision:
    """One kind: int8 or float in the kept layout, and what adding it to the layout before it did."""

    kind: str
    layers: tuple[str, ...]
    kept_float: bool
    why: str
    int8_ms: float | None = None
    """The layout before this kind went float (median ms per batch)."""
    float_ms: float | None = None
    """The same layout with this kind in float too."""
    ratio: float | None = None
    """Median per-round float_ms / int8_ms: below 1 the kind is faster in float."""
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


def layouts(kinds: Sequence[str], rules: Sequence[str]) -> dict[str, frozenset[str]]:
    """The contest's layouts by name: ``off``, then one more kind in float at a time (``kinds`` order).

    The layout whose float kinds are the rules' present ones is named ``rules``.
    """
    rule_set = frozenset(k for k in rules if k in kinds)
    out: dict[str, frozenset[str]] = {"off": frozenset()}
    for i in range(1, len(kinds) + 1):
        chosen = frozenset(kinds[:i])
        out["rules" if chosen == rule_set else "float: " + " + ".join(kinds[:i])] = chosen
    return out


def measure_float_kinds(engine: EngineLike, build: Callable[[frozenset[str]], onnx.ModelProto],
                        kinds: Mapping[str, Sequence[str]], budget_seconds: float,
                        rules: Sequence[str] = ()) -> tuple[list[KindDecision], dict]:
    """Decide which ``kinds`` (kind -> layer names) stay float: the contest of the module docstring.

    ``build(kinds)`` is the quantized model with those kinds in float; ``rules`` the
    kinds the fixed rules leave float. Returns one decision per kind and what was
    timed (the batch, each layout's median and ratio to all-int8, the winner, the
    seconds spent, the budget).
    """
    started = time.perf_counter()
    info: dict[str, Any] = {"budget_seconds": budget_seconds, "batch_samples": 0, "seconds": 0.0}
    if not kinds:
        return [], info
    options = getattr(engine, "session_options", None) or session_options()
    providers = list(engine.providers)
    names = list(kinds)
    contenders = layouts(names, rules)
    sessions = {}
    for name, chosen in contenders.items():
        model = build(chosen)
        if not sessions:
            feed, info["batch_samples"] = timing_feed(engine, model)
        sessions[name] = ort.InferenceSession(model_bytes(model)[0], options, providers=providers)
    left = budget_seconds - (time.perf_counter() - started)
    times = time_interleaved(sessions, feed, rounds=MAX_ROUNDS, min_rounds=MIN_ROUNDS, warmup=1,
                             budget_seconds=max(0.0, left))
    off = np.asarray(times["off"])
    ratios = {name: np.asarray(t) / np.maximum(off, 1e-12) for name, t in times.items()}
    timed = {name: {"kinds": [k for k in names if k in contenders[name]], "median_ms": float(np.median(t) * 1e3),
                    "over_off": float(np.median(ratios[name])),
                    "over_off_quartiles": [float(np.quantile(ratios[name], q)) for q in (0.25, 0.75)]}
             for name, t in times.items()}
    beats = [name for name in contenders if name != "off" and timed[name]["over_off"] < 1.0 - TIE_MARGIN
             and timed[name]["over_off_quartiles"][1] < 1.0]
    winner = min(beats, key=lambda n: timed[n]["median_ms"]) if beats else "off"
    info.update({"rounds": len(off), "layouts": timed, "kept": winner,
                 "why": (f"{winner}: x{timed[winner]['over_off']:.2f} of all-int8" if beats else
                         "no layout with kinds in float beat all-int8 beyond the noise: every layer int8")})
    decisions = _decisions(names, kinds, contenders, times, winner)
    for d in decisions:
        logger.info("latency-aware: %s (%d layers): %s", d.kind, len(d.layers), d.why)
    logger.info("latency-aware: kept %s", info["why"])
    info["seconds"] = time.perf_counter() - started
    return decisions, info


def _decisions(names: list[str], kinds: Mapping[str, Sequence[str]], contenders: Mapping[str, frozenset[str]],
               times: Mapping[str, list[float]], winner: str) -> list[KindDecision]:
    """Per kind: kept or not (the winner's), and its step in the chain (the layout before it -> with it)."""
    order = list(contenders)
    kept = contenders[winner]
    out = []
    for i, kind in enumerate(names):
        before, after = np.asarray(times[order[i]]), np.asarray(times[order[i + 1]])
        step = after / np.maximum(before, 1e-12)
        low, high = float(np.quantile(step, 0.25)), float(np.quantile(step, 0.75))
        ratio = float(np.median(step))
        why = (f"{'float' if kind in kept else 'int8'} (kept layout: {winner}); adding it in float: x{ratio:.2f} "
               f"(per-round x{low:.2f}-x{high:.2f})")
        out.append(KindDecision(kind, tuple(kinds[kind]), kind in kept, why, float(np.median(before) * 1e3),
                                float(np.median(after) * 1e3), ratio, (low, high), len(step)))
    return out
