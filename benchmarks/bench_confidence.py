"""How good aaq's drop intervals are: coverage, held-out confirmation, and what they cost.

(a) Coverage: the fraction of 95% intervals, across ``--draws`` (200) seeded draws of an
    evaluation set of 300 samples, that contain the true drop (target 0.93-0.97).
    - ``tiny``: a two-model ONNX pair run through aaq's Engine on an unlimited synthetic
      population where the true drop is known: input ``x[:, :4]`` are class logits
      (class 0 wins), ``x[:, 4]`` a marker; the "int8" model adds 2 to class 1's logit
      where the marker is set. Labels: class 0 for 90% of samples (the float model is
      right), class 1 otherwise. The marker is planted on 3% of all samples among the
      float-right ones (int8 turns them wrong) and 1% among the float-wrong ones (int8
      turns them right): the population drop is exactly 0.02. Each draw is 300 fresh
      samples; intervals come from ``bootstrap_drops`` on the engine's cached entries.
    - ``ppocr_cls`` / ``ppocr_rec``: the float model and its full-INT8 DefaultQuantization
      model scored per sample on the whole evaluation set (the population; its drop is the
      true drop); each draw is 300 samples drawn from it with replacement (i.i.d. from that
      population; without replacement the finite population would make intervals look
      better than they are).
(b) Held-out: AccuracyAwareQuantization with ``engine.dataset.holdout`` 0.3 and
    ``maximal_drop`` 0.01 on each real case: search drop vs held-out drop with intervals,
    and whether the held-out drop stays within 2x ``maximal_drop``.
(c) Cost: seconds spent on intervals in (b) (search intervals + the held-out check's
    bootstrap) beside the run's total, and one 2000-resample interval on 10^4 samples.

Usage: python benchmarks/bench_confidence.py [--cases tiny ppocr_cls ppocr_rec] [--draws 200]
           [--data-dir DIR] [--rec-samples 300]
Writes benchmarks/out/bench_confidence.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aaq  # noqa: E402
import realcases  # noqa: E402
from aaq.accuracy.confidence import Confidence, drop_interval  # noqa: E402
from aaq.accuracy.drops import MetricTarget, Targets  # noqa: E402
from aaq.accuracy.evaluator import DropReference, bootstrap_drops  # noqa: E402
from aaq.engine.datasets import ArrayDataset  # noqa: E402
from aaq.engine.engine import Engine  # noqa: E402
from aaq.engine.metrics import Accuracy  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SET = 300
MAX_DROP = 0.01
BATCH = {"ppocr_cls": 64, "ppocr_rec": 16}
log = logging.getLogger("bench_confidence")


def tiny_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    def model(row4: list[float]) -> onnx.ModelProto:
        w = np.zeros((5, 4), np.float32)
        w[:4, :4] = np.eye(4)
        w[4] = row4
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                                  [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model([0, 0, 0, 0]), model([0, 2, 0, 0])


def tiny_population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    u = np.random.default_rng(seed).random(n)
    x = np.zeros((n, 5), np.float32)
    x[:, 0] = 1.0
    labels = np.where(u < 0.9, 0, 1)
    x[:, 4] = ((u < 0.03) | ((u >= 0.9) & (u < 0.91))).astype(np.float32)
    return x, labels


def coverage(cand: list[np.ndarray], ref: list[np.ndarray], true: float,
             bounds: tuple[float, float] | None) -> dict[str, Any]:
    """The share of intervals of the draws that hold ``true``; widths; seconds per interval."""
    hits, widths, started = 0, [], time.perf_counter()
    for c, r in zip(cand, ref):
        iv = drop_interval(c, r, higher_is_better=True, seed=0, bounds=bounds)
        hits += iv.low <= true <= iv.high
        widths.append(iv.high - iv.low)
    seconds = (time.perf_counter() - started) / len(cand)
    plain = sum(iv.low <= true <= iv.high for iv in (drop_interval(c, r, higher_is_better=True, seed=0)
                                                    for c, r in zip(cand, ref)))
    return {"true_drop": true, "draws": len(cand), "coverage": hits / len(cand), "coverage_unsmoothed": plain / len(cand),
            "mean_width": float(np.mean(widths)), "seconds_per_interval": seconds}


def tiny_coverage(draws: int) -> dict[str, Any]:
    float_model, int8_model = tiny_pair()
    x, y = tiny_population(draws * SET, seed=1)
    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], batch_size=1024, progress=False)
    engine.set_float_model(float_model)
    f, q = engine.evaluate(float_model), engine.evaluate(int8_model)
    targets = Targets([MetricTarget("top1", True, 0.9, MAX_DROP)], Confidence(0.95, "point", 2000, 0))
    hits, plain, widths, started = 0, 0, [], time.perf_counter()
    for k in range(draws):
        idx = np.arange(k * SET, (k + 1) * SET)
        iv = bootstrap_drops(engine, targets, q.model_digest, DropReference(f.model_digest), idx)["top1"]
        hits += iv.low <= 0.02 <= iv.high
        widths.append(iv.high - iv.low)
        entries = engine.entries(q.model_digest, idx)["top1"], engine.entries(f.model_digest, idx)["top1"]
        bare = drop_interval(*entries, higher_is_better=True, seed=0)
        plain += bare.low <= 0.02 <= bare.high
    return {"true_drop": 0.02, "draws": draws, "coverage": hits / draws, "coverage_unsmoothed": plain / draws,
            "mean_width": float(np.mean(widths)),
            "seconds_per_interval": (time.perf_counter() - started) / draws,
            "population_drop_measured": f.values["top1"] - q.values["top1"]}


def case_spec(case: str, info: dict, data: Path, algorithms: list[dict], holdout: float | None = None) -> dict:
    dataset = {"type": "npz", "path": str(data), "inputs": {"x": "x__x"}, "labels": info["labels"]}
    if holdout is not None:
        dataset["holdout"] = holdout
    return {"model": {"name": case, "path": str(info["model"])},
            "engine": {"dataset": dataset,
                       "calibration_dataset": {"type": "npz", "path": str(data), "inputs": {"x": "calib__x"}},
                       "metrics": [{"name": "metric", "type": "python", "factory": "bench_accuracy_aware:make_metric",
                                    "kwargs": {"case": case, "data": str(data)}}],
                       "batch_size": BATCH[case]},
            "compression": {"algorithms": algorithms}}


def case_data(case: str, info: dict, n: int | None, work: Path) -> Path:
    return realcases.cut(info, work / f"{case}.npz", n)


def real_case(case: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    info = realcases.prepare(case, args.data_dir)
    data = case_data(case, info, args.rec_samples if case == "ppocr_rec" else None, work)
    dq = [{"name": "DefaultQuantization", "params": {"stat_subset_size": 200}}]
    started = time.perf_counter()
    int8 = aaq.Pipeline(case_spec(case, info, data, dq), progress=False).run().model
    spec = case_spec(case, info, data, dq)
    engine = Engine.from_spec(aaq.Pipeline(spec, progress=False).spec.resolved["engine"], work, progress=False)
    float_model = onnx.load(str(info["model"]))
    engine.set_float_model(float_model)
    f, q = engine.evaluate(float_model), engine.evaluate(int8)
    ref, cand = f.per_sample["metric"], q.per_sample["metric"]
    true = float(np.mean(ref) - np.mean(cand))
    rng = np.random.default_rng(2024)
    draws = [rng.integers(0, len(ref), SET) for _ in range(args.draws)]
    cov = coverage([cand[d] for d in draws], [ref[d] for d in draws], true, engine.metrics[0].bounds)
    cov.update(population=len(ref), prepare_seconds=time.perf_counter() - started)
    log.info("%s coverage: %s", case, cov)
    aaq_params = {"maximal_drop": MAX_DROP, "ranking_subset_size": 100}
    algos = dq + [{"name": "AccuracyAwareQuantization", "params": aaq_params}]
    started = time.perf_counter()
    result = aaq.Pipeline(case_spec(case, info, data, algos, holdout=0.3), progress=False).run()
    total = time.perf_counter() - started
    summary = result.algorithms[-1].summary
    held = summary["confidence"]["held_out"]["metrics"]["metric"]
    search = summary["metrics"]["metric"]
    b = {"search_drop": search["drop"], "search_interval": [search["interval"]["low"], search["interval"]["high"]],
         "search_samples": search["interval"]["samples"], "held_out_drop": held["interval"]["point"],
         "held_out_interval": [held["interval"]["low"], held["interval"]["high"]],
         "held_out_samples": held["interval"]["samples"],
         "held_out_within_2x": held["interval"]["point"] <= 2 * MAX_DROP, "overfitted": held["overfitted"],
         "target_met": result.target_met, "groups_reverted": summary["groups_reverted"],
         "interval_seconds": summary["confidence"]["seconds"], "run_seconds": total}
    log.info("%s holdout: %s", case, b)
    return {"coverage": cov, "holdout": b}


def cost_10k() -> dict[str, float]:
    rng = np.random.default_rng(0)
    ref = (rng.random(10_000) < 0.9).astype(float)
    cand = np.where(rng.random(10_000) < 0.03, 0.0, ref)
    cont = rng.random(10_000)
    out = {}
    for name, c, r in (("accuracy", cand, ref), ("continuous", cont, cont + rng.normal(0.01, 0.05, 10_000))):
        started = time.perf_counter()
        drop_interval(c, r, higher_is_better=True, resamples=2000)
        out[name] = time.perf_counter() - started
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| case | true drop | coverage of 95% intervals (200 draws of 300) | without pseudo-counts | mean width | "
             "search drop [95%] | held-out drop [95%] | held-out <= 2x max | interval s / run s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case, r in results["cases"].items():
        c, h = r["coverage"], r.get("holdout")
        held = "-" if h is None else (
            f"{h['search_drop']:+.4f} [{h['search_interval'][0]:+.4f}, {h['search_interval'][1]:+.4f}] "
            f"(n={h['search_samples']}) | {h['held_out_drop']:+.4f} [{h['held_out_interval'][0]:+.4f}, "
            f"{h['held_out_interval'][1]:+.4f}] (n={h['held_out_samples']}) | "
            f"{'yes' if h['held_out_within_2x'] else 'NO'} | {h['interval_seconds']:.3f} / {h['run_seconds']:.1f}")
        lines.append(f"| {case} | {c['true_drop']:+.4f} | {c['coverage']:.3f} | {c['coverage_unsmoothed']:.3f} | "
                     f"{c['mean_width']:.4f} | "
                     + (held if h else "- | - | - | -") + " |")
    cost = results["cost_10k"]
    lines.append(f"\nOne 95% interval, 2000 resamples, 10^4 samples: {cost['accuracy']:.3f} s (0/1 scores), "
                 f"{cost['continuous']:.3f} s (continuous scores).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["tiny", *realcases.CASES], choices=["tiny", *realcases.CASES])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--data-dir", type=Path, default=realcases.DEFAULT_OUT)
    ap.add_argument("--rec-samples", type=int, default=300, help="ppocr_rec evaluation samples used (first N)")
    ap.add_argument("--json", type=Path, default=OUT / "bench_confidence.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aaq").setLevel(logging.ERROR)
    results: dict[str, Any] = {"cases": {}, "cost_10k": cost_10k()}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            if case == "tiny":
                results["cases"]["tiny"] = {"coverage": tiny_coverage(args.draws)}
                log.info("tiny: %s", results["cases"]["tiny"])
            else:
                results["cases"][case] = real_case(case, args, Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
