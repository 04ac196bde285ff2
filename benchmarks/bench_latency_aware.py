"""DefaultQuantization's ``latency_aware`` (off / rules / measure) against ONNX Runtime's own full-INT8 model.

For each real case (``ppocr_cls``, ``ppocr_rec``; ``realcases.py`` prepares them):

* aaq: DefaultQuantization alone (preset performance, 200 calibration samples, the
  engine's batch = the latency batch below, so ``measure`` times the batch that is
  benchmarked) with ``latency_aware`` "off", "rules" and "measure" (its default
  ``latency_budget``): the nothing-reverted models.
* ORT: ``quantize_static`` (QDQ, MinMax, per-channel, uint8 activations, int8
  weights) after opset-13 conversion and ``quant_pre_process``, as in
  ``bench_default_quantization.py`` (its ``child_main``, run in this process).
* Batch latency of the five models (float, aaq off / rules / measure, ORT) on one
  fixed batch (16 lines for cls, 8 for rec), sessions with 2 intra-op threads and
  ORT_ENABLE_ALL: after warm-up, every round runs each model once, in an order that
  rotates every round; medians over the rounds, and the median of the per-round
  ratios against ORT (both models timed within the same round, so load on the
  machine weighs on both alike).

* The case's own metric (``realcases_eval.evaluate_full``: cls top-1, rec character
  accuracy) of every model on every evaluation sample (``--no-metrics`` skips it), so
  that a faster model is not bought with accuracy unseen.

Targets: measure <= 1.0x ORT's model, and measure <= off (the per-round ratio's
median), on both cases. ``measure``'s own contest (each layout's ratio to all-int8
on this machine, which it kept, the seconds it spent) is printed beside it, from the
DefaultQuantization summary (report.json's ``latency_aware``).

Usage:  python benchmarks/bench_latency_aware.py [--cases ppocr_cls ppocr_rec] [--rounds N] [--no-metrics]
Writes benchmarks/out/bench_latency_aware.json and the models under benchmarks/out/bench_latency_aware/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

OUT = HERE / "out"
MODELS_OUT = OUT / "bench_latency_aware"
BATCH = {"ppocr_cls": 16, "ppocr_rec": 8}
ROUNDS = {"ppocr_cls": 40, "ppocr_rec": 15}
MODES = ("off", "rules", "measure")
SHARED = REPO.parent / "shared" / "realcases"


def quantize_aaq(case: str, info: dict, calib: np.ndarray, mode: str) -> tuple[object, dict]:
    import onnx

    from aaq.algorithms.base import run_algorithm
    from aaq.algorithms.default import DefaultQuantization
    from aaq.engine import Agreement, ArrayDataset, Engine
    from aaq.state import PipelineState

    model = onnx.load(str(info["model"]))
    engine = Engine(ArrayDataset({"x": calib}), [Agreement()], batch_size=BATCH[case], progress=False)
    engine.set_float_model(model)
    algorithm = DefaultQuantization(DefaultQuantization.Params(stat_subset_size=len(calib), latency_aware=mode))
    started = time.perf_counter()
    state = run_algorithm(algorithm, PipelineState(float_model=model, model=model), engine, progress=False)
    seconds = time.perf_counter() - started
    summary = algorithm.summary
    return state.model, {"seconds": seconds, "layers_quantized": summary["layers_quantized"],
                         "latency_aware": summary["latency_aware"], "measure_seconds":
                         summary["latency_aware"].get("seconds")}


def quantize_ort(case: str, info: dict, target: Path) -> None:
    import bench_default_quantization as dq

    dq.child_main({"tool": "ort", "n": int(info["n_calib"]), "model": str(info["model"]),
                   "calib_npz": str(info["data"]), "calib_key": "calib__x", "input": "x",
                   "batch": dq.CALIB_BATCH[case], "out_model": str(target), "data_bytes": 0})


def time_models(paths: dict[str, str], feed: dict, rounds: int) -> dict:
    import onnxruntime as ort

    def session(path: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    sessions = {k: session(p) for k, p in paths.items()}
    for _ in range(3):
        for s in sessions.values():
            s.run(None, feed)
    order = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        for k in order[r % len(order):] + order[:r % len(order)]:
            started = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append(time.perf_counter() - started)
    t = {k: np.asarray(v) for k, v in times.items()}
    return {"rounds": rounds,
            "median_ms": {k: float(np.median(v) * 1e3) for k, v in t.items()},
            "over_ort": {k: float(np.median(v / t["ort"])) for k, v in t.items()},
            "over_off": {k: float(np.median(v / t["aaq_off"])) for k, v in t.items()},
            "over_ort_quartiles": {k: [float(np.quantile(v / t["ort"], q)) for q in (0.25, 0.75)]
                                   for k, v in t.items()}}


def evaluate(paths: dict[str, str], data_path: Path) -> dict[str, float]:
    """Each model's metric on the whole evaluation set (realcases_eval's, the one every benchmark uses)."""
    sys.path.insert(0, str(SHARED))
    import realcases_eval

    data = realcases_eval.load(str(data_path))
    return {k: float(realcases_eval.evaluate_full(p, data)["metric"]) for k, p in paths.items()}


def print_table(report: dict) -> None:
    print("| case | batch | model | median ms | x float | x ORT (per-round median, quartiles) | x off | metric |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case, r in report["cases"].items():
        lat = r["latency"]
        for k in ("float", "ort", "aaq_off", "aaq_rules", "aaq_measure"):
            q = lat["over_ort_quartiles"][k]
            metric = r.get("metrics", {}).get(k)
            print(f"| {case} | {r['batch']} | {k} | {lat['median_ms'][k]:.1f} | "
                  f"{lat['median_ms'][k] / lat['median_ms']['float']:.2f} | {lat['over_ort'][k]:.3f} "
                  f"({q[0]:.2f}-{q[1]:.2f}) | {lat['over_off'][k]:.3f} | "
                  f"{'-' if metric is None else f'{metric:.4f}'} |")
    print()
    print("| case | latency_aware | DQ seconds | measure's timing s | layers int8 | float for speed | "
          "measure's contest (x all-int8, kept) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, r in report["cases"].items():
        for mode in MODES:
            a = r["aaq"][mode]
            la = a["latency_aware"]
            contest = "; ".join(f"{name}{' [kept]' if name == la.get('kept') else ''}: x{t['over_off']:.2f}"
                                for name, t in la.get("layouts", {}).items())
            timing = f"{la['seconds']:.1f}" if "seconds" in la else "-"
            print(f"| {case} | {mode} | {a['seconds']:.1f} | {timing} | {a['layers_quantized']} | "
                  f"{len(la.get('float_layers', {}))} | {contest or '-'} |")
    print()
    for case, r in report["cases"].items():
        print(f"{case}: measure <= 1.0x ORT: {r['targets']['measure_le_ort']}; measure <= off: "
              f"{r['targets']['measure_le_off']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["ppocr_cls", "ppocr_rec"], choices=["ppocr_cls", "ppocr_rec"])
    ap.add_argument("--rounds", type=int, default=None, help="latency rounds (default 40 cls / 15 rec)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--no-metrics", action="store_true", help="time only: no evaluation of the models")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort

    import realcases

    started = time.perf_counter()
    MODELS_OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"cases": {}, "onnxruntime": ort.__version__, "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()}
    for case in args.cases:
        print(f"== {case}", flush=True)
        info = realcases.prepare(case, args.data_dir or realcases.DEFAULT_OUT)
        with np.load(info["data"], allow_pickle=False) as z:
            calib = np.ascontiguousarray(z["calib__x"])
            feed = {"x": np.ascontiguousarray(z["x__x"][:BATCH[case]])}
        paths = {"float": str(info["model"]), "ort": str(MODELS_OUT / f"{case}.ort.onnx")}
        quantize_ort(case, info, Path(paths["ort"]))
        r: dict = {"batch": BATCH[case], "aaq": {}}
        for mode in MODES:
            model, r["aaq"][mode] = quantize_aaq(case, info, calib, mode)
            paths[f"aaq_{mode}"] = str(MODELS_OUT / f"{case}.aaq_{mode}.onnx")
            onnx.save(model, paths[f"aaq_{mode}"])
            print(f"  aaq {mode}: {r['aaq'][mode]['seconds']:.1f} s", flush=True)
        r["latency"] = time_models(paths, feed, args.rounds or ROUNDS[case])
        if not args.no_metrics:
            r["metrics"] = evaluate(paths, info["data"])
            print(f"  metrics: {r['metrics']}", flush=True)
        r["targets"] = {"measure_le_ort": r["latency"]["over_ort"]["aaq_measure"] <= 1.0,
                        "measure_le_off": r["latency"]["over_off"]["aaq_measure"] <= 1.0}
        report["cases"][case] = r
    report["seconds"] = time.perf_counter() - started
    report["load_average_after"] = os.getloadavg()
    (OUT / "bench_latency_aware.json").write_text(json.dumps(report, indent=2, default=str))
    print()
    print_table(report)
    print(f"\ntotal {report['seconds']:.0f} s; wrote {OUT / 'bench_latency_aware.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
