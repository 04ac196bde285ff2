"""Which full-INT8 start is best: aaq's DefaultQuantization under each candidate range estimator, side by side
with ``nncf.quantize`` and ONNX Runtime's ``quantize_static``, on every case, in one run.

AccuracyAwareQuantization can only be as good as the full-INT8 model it starts from
(issue 12, part 2). For every case (``CASES``) and every row (``ROWS``), on the same
calibration samples, the quantized model is evaluated by ONE common loop here (own
ONNX Runtime session, the case's per-sample metric), so rows differ only in how
they quantized:

* aaq rows: DefaultQuantization alone (preset performance, ``stat_subset_size`` =
  every calibration sample, ``latency_aware: "off"`` so every layer is int8 as in the
  peers' models, the other params at their defaults) with one activation
  ``range_estimator`` each (``ESTIMATORS``). Statistics are shared between the aaq
  rows of a case (one collection per distinct statistic). The engine holds the case's
  evaluation data and metric (``CaseScore``) and its calibration data, as a user's
  spec would: so ``auto`` (the default row) compares its candidates by that metric on
  the evaluation set, the one this bench scores on; ``default by output`` is the same
  with ``auto_eval_samples: 0``, the choice by output error alone (no labels).
* ``nncf``: ``nncf.quantize`` with its defaults (NNCF 3.4.0, ONNX backend, in
  ``benchmarks/out/venv-nncf``, made by ``bench_accuracy_aware.ensure_nncf_venv``;
  ``nncf_side.py quantize``), ``subset_size`` = every calibration sample, on the
  model converted to opset 13 (NNCF falls back to per-tensor weights below 13).
* ``ort``: ``quantize_static`` (QDQ, MinMax, per-channel, uint8 activations, int8
  weights) after opset-13 conversion and ``quant_pre_process``
  (``bench_default_quantization.child_main``).

Cases: ``ppocr_cls`` and ``ppocr_rec`` (``realcases.py``), the samples whose data
their prepare scripts make (``text_direction``, ``text_recognition``; prepared here
when missing), the bundled ``tiny`` sample, ``outlier_cnn`` (``synthetic_cases.py``:
a planted outlier activation channel, labels from the float model), ``deep_outlier_cnn``
(``synthetic_deep_cnn.py``: eight layers, two planted channels, true labels: the network
issue 19 measured the peers on) and ``gaussian_mlp`` (the opposite of both: few values
per sample, no outliers).

Extending: a case is a function ``name -> Case`` in ``CASES``; a row is a ``Row``
in ``ROWS`` whose ``quantize(case, work_dir) -> path of the quantized model`` may
do anything (another aaq config, another tool). ``--rows`` / ``--cases`` pick some.

Usage:  python benchmarks/bench_default_start.py [--cases ...] [--rows ...] [--quick] [--json PATH]
        ``--quick``: at most 300 evaluation and 100 calibration samples per case.
Writes benchmarks/out/bench_default_start.json (or --json) and the models under
benchmarks/out/bench_default_start/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from aaq import Metric  # noqa: E402

OUT = HERE / "out"
WORK = OUT / "bench_default_start"
QUICK_EVAL, QUICK_CALIB = 300, 100
LIMITS: tuple[int, int] | None = None
"""(evaluation, calibration) samples at most (``--quick``); None: all."""


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """A float model with its calibration inputs, labeled evaluation inputs and per-sample metric.

    ``score(first_output, labels)`` gives one value per sample; the case's metric is
    their mean (higher is better).
    """

    name: str
    model: Path
    input_name: str
    calib: np.ndarray
    x: np.ndarray
    labels: Any
    score: Callable[[np.ndarray, Any], np.ndarray]
    batch: int
    metric: str
    notes: dict = field(default_factory=dict)

    def calib_npz(self, work: Path) -> Path:
        """The calibration inputs as an npz under ``input_name`` (what the subprocess tools read)."""
        path = work / f"{self.name}.calib.npz"
        if not path.exists():
            np.savez(path, **{self.input_name: self.calib})
        return path


def _top1(logits: np.ndarray, labels: Any) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    return (np.asarray(logits).reshape(len(y), -1).argmax(axis=1) == y).astype(np.float64)


def _realcase(name: str) -> Case:
    import nncf_side
    import realcases

    info = realcases.prepare(name)
    with np.load(info["data"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if LIMITS:  # the metric's mean length is over the evaluation set actually used
        arrays["x__x"], arrays[info["labels"]] = arrays["x__x"][:LIMITS[0]], arrays[info["labels"]][:LIMITS[0]]
    scorer = nncf_side.Scorer(name, arrays)
    return Case(name, Path(info["model"]), "x", arrays["calib__x"], arrays["x__x"], arrays[info["labels"]],
                scorer.scores, {"ppocr_cls": 64, "ppocr_rec": 16}[name], info["metric"])


def _sample_data(sample: str) -> Path:
    data = REPO / "samples" / sample / "data"
    if not (data / "eval.npz").exists():
        subprocess.run([sys.executable, str(REPO / "samples" / sample / "prepare.py")], check=True)
    return data


def _text_direction(name: str) -> Case:
    data = _sample_data("text_direction")
    with np.load(data / "eval.npz") as e, np.load(data / "calib.npz") as c:
        x, y, calib = e["x"], e["y"], c["x"]
    return Case(name, data / "model.onnx", "x", calib, x, y, _top1, 32, "top-1 accuracy")


def _text_recognition(name: str) -> Case:
    data = _sample_data("text_recognition")
    spec = importlib.util.spec_from_file_location("ocr_metrics", REPO / "samples/text_recognition/ocr_metrics.py")
    ocr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ocr)
    metric = ocr.CharacterAccuracy(charset=data / "charset.txt")
    with np.load(data / "eval.npz") as e, np.load(data / "calib.npz") as c:
        x, text, calib = e["x"], e["text"], c["x"]
    return Case(name, data / "model.onnx", "x", calib, x, text,
                lambda logits, labels: metric.score({"out": logits}, labels), 16,
                "character accuracy (the sample's ocr_metrics, spaces ignored)")


def _tiny(name: str) -> Case:
    folder = REPO / "samples" / "tiny"
    with np.load(folder / "data.npz") as z:
        x, y = z["x"], z["y"]
    # the sample calibrates on its first 128 samples (its spec's stat_subset_size); evaluated on all 256
    return Case(name, folder / "model.onnx", "x", x[:128], x, y, _top1, 32, "top-1 accuracy (float's own labels)")


def _synthetic(name: str) -> Case:
    """A case built in code (``synthetic_cases``, ``synthetic_deep_cnn``), saved under ``WORK``."""
    import synthetic_cases
    import synthetic_deep_cnn

    build = {"outlier_cnn": synthetic_cases.outlier_cnn, "gaussian_mlp": synthetic_cases.gaussian_mlp,
             "deep_outlier_cnn": synthetic_deep_cnn.deep_outlier_cnn}[name]
    built = build()
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}.onnx"
    onnx.save(built.model, str(path))
    return Case(name, path, built.input_name, built.calib, built.x, built.y, _top1, 64, built.metric,
                {"planted": built.planted})


CASES: dict[str, Callable[[str], Case]] = {
    "ppocr_cls": _realcase, "ppocr_rec": _realcase, "text_direction": _text_direction,
    "text_recognition": _text_recognition, "tiny": _tiny, "outlier_cnn": _synthetic,
    "deep_outlier_cnn": _synthetic, "gaussian_mlp": _synthetic,
}


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One way to make the full-INT8 model of a case; ``quantize(case, work) -> model path``."""

    name: str
    tool: str
    describe: str
    quantize: Callable[[Case, Path], Path]


_MIN = {"type": "min", "aggregator": "min"}
ESTIMATORS: dict[str, tuple[str, dict]] = {
    # name: (what it is, DefaultQuantization's activations param; explicit, whatever the defaults are)
    "default": ("DefaultQuantization's defaults as they are in this tree", {}),
    "default by output": ("the defaults, auto deciding by output error only (auto_eval_samples 0: no labels)",
                          {"range_estimator": {"auto_eval_samples": 0}}),
    "minmax": ("min of per-sample min, max of per-sample abs max (ORT's MinMax; aaq's old default)",
               {"range_estimator": {"preset": "minmax", "min": _MIN,
                                    "max": {"type": "abs_max", "aggregator": "max"}}}),
    "mean_max": ("min of per-sample min, mean of per-sample abs max (POT's default)",
                 {"range_estimator": {"preset": "minmax", "min": _MIN,
                                      "max": {"type": "abs_max", "aggregator": "mean"}}}),
    "mean_minmax": ("mean of per-sample min and of per-sample abs max (NNCF's activations)",
                    {"range_estimator": {"preset": "minmax", "min": {"type": "min", "aggregator": "mean"},
                                         "max": {"type": "abs_max", "aggregator": "mean"}}}),
    "median_max": ("min of per-sample min, median of per-sample abs max",
                   {"range_estimator": {"preset": "minmax", "min": _MIN,
                                        "max": {"type": "abs_max", "aggregator": "median"}}}),
    "quantile": ("per-sample quantiles at 1e-4, min / mean over samples (POT's quantile preset)",
                 {"range_estimator": {"preset": "quantile"}}),
    "quantile_1e-3": ("per-sample quantiles at 1e-3, min / mean over samples",
                      {"range_estimator": {"preset": "quantile", "min": {"outlier_prob": 1e-3},
                                           "max": {"outlier_prob": 1e-3}}}),
    "percentile": ("99.999th percentile of |x| over every calibration value (ORT's Percentile)",
                   {"range_estimator": {"preset": "percentile"}}),
    "kl": ("least KL divergence threshold (TensorRT / ORT Entropy)", {"range_estimator": {"preset": "kl"}}),
}
MIXED: dict[str, tuple[str, dict]] = {
    # the same at preset mixed (asymmetric activations): min / max of per-sample extremes, or their means
    "mixed minmax": ("preset mixed: min of per-sample min, max of per-sample max",
                     {"range_estimator": {"preset": "minmax", "min": _MIN,
                                          "max": {"type": "max", "aggregator": "max"}}}),
    "mixed mean_minmax": ("preset mixed: mean of per-sample min and of per-sample max (POT's and NNCF's)",
                          {"range_estimator": {"preset": "minmax", "min": {"type": "min", "aggregator": "mean"},
                                               "max": {"type": "max", "aggregator": "mean"}}}),
}

_SHARED_STATS: dict[str, Any] = {}


class CaseScore(Metric):
    """``Case.score`` as an aaq metric, what a user's spec would name: ``auto`` decides by it (not
    ``bench_accuracy_aware.CaseMetric``, which is ``nncf_side.Scorer`` on the real cases only)."""

    def __init__(self, case: Case) -> None:
        self.name, self.case = case.name, case

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        return np.asarray(self.case.score(next(iter(outputs.values())), labels), np.float64)


def aaq_row(name: str, activations: dict, describe: str, **params: Any) -> Row:
    """An aaq DefaultQuantization row: ``activations`` and any other ``params`` over the bench's base."""

    def quantize(case: Case, work: Path) -> Path:
        from aaq.algorithms.base import run_algorithm
        from aaq.algorithms.default import DefaultQuantization
        from aaq.engine import ArrayDataset, Engine
        from aaq.state import PipelineState
        from aaq.statistics.requests import StatisticsCache

        model = onnx.load(str(case.model))
        engine = Engine(ArrayDataset({case.input_name: case.x}, case.labels), [CaseScore(case)],
                        calibration_dataset=ArrayDataset({case.input_name: case.calib}), batch_size=case.batch,
                        progress=False)
        engine.set_float_model(model)
        base = {"stat_subset_size": len(case.calib), "latency_aware": "off"}
        if activations:
            base["activations"] = activations
        algorithm = DefaultQuantization(DefaultQuantization.Params(**{**base, **params}))
        stats = _SHARED_STATS.setdefault(case.name, StatisticsCache())
        state = run_algorithm(algorithm, PipelineState(float_model=model, model=model, statistics=stats),
                              engine, progress=False)
        path = work / f"{case.name}.aaq_{name.replace(' ', '_')}.onnx"
        onnx.save(state.model, str(path))
        return path

    return Row(f"aaq {name}", "aaq", describe, quantize)


def _opset13(case: Case, work: Path) -> Path:
    import bench_accuracy_aware

    if onnx.load(str(case.model), load_external_data=False).opset_import[0].version >= 13:
        return case.model
    folder = work / case.name  # the samples' models are all model.onnx: one converted copy per case
    folder.mkdir(parents=True, exist_ok=True)
    return bench_accuracy_aware.opset13(case.model, folder)


def nncf_quantize(case: Case, work: Path) -> Path:
    import bench_accuracy_aware

    python, _ = bench_accuracy_aware.ensure_nncf_venv()
    out_model, out_json = work / f"{case.name}.nncf.onnx", work / f"{case.name}.nncf.json"
    cmd = [str(python), str(HERE / "nncf_side.py"), "quantize", "--model", str(_opset13(case, work)),
           "--calib", str(case.calib_npz(work)), "--input", case.input_name, "--out-model", str(out_model),
           "--out-json", str(out_json)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NNCF_CI": "1"})
    (work / f"{case.name}.nncf.stderr.txt").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"nncf_side.py quantize failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out_model


def ort_quantize(case: Case, work: Path) -> Path:
    import bench_default_quantization as dq

    target = work / f"{case.name}.ort.onnx"
    dq.child_main({"tool": "ort", "n": len(case.calib), "model": str(case.model),
                   "calib_npz": str(case.calib_npz(work)), "calib_key": case.input_name, "input": case.input_name,
                   "batch": case.batch, "out_model": str(target), "data_bytes": 0})
    return target


ROWS: list[Row] = [aaq_row(name, act, what) for name, (what, act) in ESTIMATORS.items()] + [
    aaq_row(name, act, what, preset="mixed") for name, (what, act) in MIXED.items()] + [
    Row("nncf", "nncf", "nncf.quantize defaults (NNCF 3.4.0, ONNX backend, opset 13)", nncf_quantize),
    Row("ort", "ort", "quantize_static QDQ MinMax per-channel, U8 activations, S8 weights", ort_quantize),
]


# --------------------------------------------------------------------------- measuring


def evaluate(model: Path, case: Case) -> float:
    """The case's metric of ``model``: the one evaluation loop every row's model gets."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    scores = []
    for start in range(0, len(case.x), case.batch):
        outputs = session.run(None, {case.input_name: case.x[start:start + case.batch]})
        scores.append(case.score(outputs[0], case.labels[start:start + case.batch]))
    return float(np.mean(np.concatenate(scores)))


def run_case(case: Case, rows: list[Row], work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"metric": case.metric, "n_eval": len(case.x), "n_calib": len(case.calib),
                              "float": evaluate(case.model, case), "rows": {}, **case.notes}
    print(f"== {case.name}: float {result['float']:.4f} ({case.metric}; {len(case.x)} eval, "
          f"{len(case.calib)} calib)", flush=True)
    for row in rows:
        started = time.perf_counter()
        try:
            path = row.quantize(case, work)
            seconds = time.perf_counter() - started
            value = evaluate(path, case)
            entry = {"metric": value, "drop": result["float"] - value, "seconds": seconds, "model": str(path)}
        except Exception as exc:  # one row failing must not lose the others' numbers
            entry = {"error": f"{type(exc).__name__}: {exc}"[:2000], "seconds": time.perf_counter() - started}
        result["rows"][row.name] = entry
        shown = f"{entry['metric']:.4f} (drop {entry['drop']:+.4f})" if "metric" in entry else entry["error"][:200]
        print(f"  {row.name:<20} {shown}  [{entry['seconds']:.1f} s]", flush=True)
    ok = {k: v["metric"] for k, v in result["rows"].items() if "metric" in v}
    if "nncf" in ok:
        result["at_least_nncf"] = {k: v >= ok["nncf"] - 1e-12 for k, v in ok.items() if k.startswith("aaq")}
    return result


def print_table(report: dict) -> None:
    rows = report["rows"]
    cases = list(report["cases"])
    print("| row | " + " | ".join(cases) + " |")
    print("| --- |" + " --- |" * len(cases))
    print("| float | " + " | ".join(f"{report['cases'][c]['float']:.4f}" for c in cases) + " |")
    for row in rows:
        cells = []
        for c in cases:
            entry = report["cases"][c]["rows"].get(row, {})
            if "metric" in entry:
                mark = "" if report["cases"][c].get("at_least_nncf", {}).get(row, True) else " (< nncf)"
                cells.append(f"{entry['metric']:.4f}{mark}")
            else:
                cells.append("error" if entry else "-")
        print(f"| {row} | " + " | ".join(cells) + " |")
    print()
    for row in rows:
        print(f"  {row}: {report['row_descriptions'][row]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rows", nargs="+", default=None, help="row names (default: all): " +
                    ", ".join(r.name for r in ROWS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=OUT / "bench_default_start.json")
    args = ap.parse_args(argv)
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "rows": [r.name for r in rows], "row_descriptions": {r.name: r.describe for r in rows},
        "cases": {}, "quick": args.quick, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()}
    started = time.perf_counter()
    global LIMITS
    LIMITS = (QUICK_EVAL, QUICK_CALIB) if args.quick else None
    for name in args.cases:
        case = CASES[name](name)
        if args.quick:
            case.x, case.labels = case.x[:QUICK_EVAL], case.labels[:QUICK_EVAL]
            case.calib = case.calib[:QUICK_CALIB]
        work = WORK / ("quick" if args.quick else "full")
        work.mkdir(parents=True, exist_ok=True)
        report["cases"][name] = run_case(case, rows, work)
        report["seconds"] = time.perf_counter() - started
        args.json.write_text(json.dumps(report, indent=2, default=str))  # after each case: nothing lost
    print()
    print_table(report)
    print(f"\ntotal {report['seconds']:.0f} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
