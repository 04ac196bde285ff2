"""The Intel Neural Compressor side of ``bench_tuning.py``: INC's ``basic``, ``mse``, ``bayesian`` or ``tpe`` on one case.

Runs inside the benchmark's INC virtual environment (``benchmarks/out/venv-inc``:
neural-compressor 3.7.1 with ``onnx<=1.18``, ``numpy<2``, ``six`` and the benchmark's
onnxruntime); it never imports aaq. INC 3.7 still ships the 2.x API for ONNX
Runtime, which is what its ONNX examples use:

    neural_compressor.quantization.fit(model, PostTrainingQuantConfig(
        backend="default", approach="static", quant_format=args.quant_format, quant_level=1,
        calibration_sampling_size=[N],
        accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=0.01),
        tuning_criterion=TuningCriterion(strategy="basic" | "mse" | "bayesian" | "tpe",
                                         objective="performance", timeout=0 | T, max_trials=100 | 30)),
        calib_dataloader=..., eval_func=...)

``quant_level=1`` is what makes INC run the named strategy (``"auto"``, the default,
replaces it with its ``auto`` strategy); ``quant_format="QDQ"`` gives a QDQ model as
aaq writes, so both are counted and timed alike. The calibration loader yields the
case's calibration samples (``calib__x``) in batches; ``eval_func`` scores the whole
evaluation set with the metric both tools use (``nncf_side.Scorer``, numpy and
``realcases_eval`` only) and counts its calls: each is one full evaluation (the
first is INC's float baseline). SIGINT (the benchmark's hard limit) is INC's own
way out: ``fit`` catches the KeyboardInterrupt and returns its best model so far
(one that met the criterion, or None); the JSON then says ``interrupted`` and what
the trials reached (best trial's metric, met or not). It runs batches through one ONNX Runtime session
per model object, with the session options of aaq's engine (spinning off).

Usage (the benchmark calls it):
  python inc_side.py --case ppocr_cls --model M.onnx --data D.npz --strategy basic --out-model OUT.onnx
                     --out-json OUT.json --batch-size 64 [--steps 40] [--max-drop 0.01] [--max-trials 100]
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nncf_side import LABELS, Scorer, realcases_eval  # noqa: E402  (numpy + onnxruntime only)


class CalibrationLoader:
    """What INC's ONNX Runtime adaptor reads for calibration: ``__iter__`` of ``(inputs, label)``, ``batch_size``."""

    def __init__(self, x: np.ndarray, batch_size: int) -> None:
        self.x = x
        self.batch_size = batch_size

    def batch(self, batch_size: int) -> None:  # INC resets it so that batches divide the sampling size
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start:start + self.batch_size], None


class ErrorLog(logging.Handler):
    """The messages INC logs at ERROR level or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=sorted(LABELS))
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--strategy", required=True, choices=["basic", "mse", "bayesian", "tpe"])
    ap.add_argument("--out-model", required=True, type=Path)
    ap.add_argument("--out-json", required=True, type=Path)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--calib-batch-size", type=int, default=10)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--max-trials", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=0,
                    help="INC's TuningCriterion timeout: 0 stops at the first config meeting the criterion; INC "
                         "3.7.1 never compares any other value with the clock (its check is commented out in "
                         "strategy/strategy.py), so it only keeps the tuning going up to max_trials")
    ap.add_argument("--sampling-sizes", type=int, nargs="+", help="calibration sampling sizes (default: all)")
    ap.add_argument("--quant-format", choices=["QDQ", "default"], default="QDQ",
                    help="INC's quant_format: QDQ (as aaq writes) or INC's default for ONNX (QOperator)")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    import onnx
    import onnxruntime as ort

    import neural_compressor
    from neural_compressor import PostTrainingQuantConfig
    from neural_compressor.config import AccuracyCriterion, TuningCriterion
    from neural_compressor.quantization import fit

    if args.log:
        handler = logging.FileHandler(args.log, mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("neural_compressor").addHandler(handler)
    errors = ErrorLog()  # fit catches exceptions and only logs them: keep what it logged
    logging.getLogger("neural_compressor").addHandler(errors)
    imported = time.perf_counter()

    t0 = time.perf_counter()
    stopped: dict = {}

    def on_sigint(signum, frame) -> None:  # the benchmark's hard limit: fit catches it and returns its best so far
        stopped.setdefault("at_seconds", time.perf_counter() - t0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    data = realcases_eval.load(args.data)
    name = str(data["input_names"][0])
    x, calib = data[f"x__{name}"], data[f"calib__{name}"]
    labels = data[LABELS[args.case]]
    scorer = Scorer(args.case, data, args.steps)
    model = onnx.load(str(args.model))

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as aaq's engine
    calls: list[dict] = []
    last: dict = {"model": None, "session": None}

    def eval_func(m) -> float:
        t = time.perf_counter()
        if last["model"] is not m:
            payload = m if isinstance(m, (str, Path)) else m.SerializeToString()
            last["session"] = ort.InferenceSession(payload if isinstance(payload, bytes) else str(payload), options,
                                                   providers=["CPUExecutionProvider"])
            last["model"] = m
        scores = []
        for s in range(0, len(x), args.batch_size):
            logits = last["session"].run(None, {name: x[s:s + args.batch_size]})[0]
            scores.append(scorer.scores(logits, labels[s:s + args.batch_size]))
        value = float(np.mean(np.concatenate(scores)))
        calls.append({"value": value, "seconds": time.perf_counter() - t, "samples": int(len(x)),
                      "ended_at": time.perf_counter() - t0})
        return value

    conf = PostTrainingQuantConfig(
        backend="default", approach="static", quant_format=args.quant_format, quant_level=1,
        calibration_sampling_size=args.sampling_sizes or [len(calib)],
        accuracy_criterion=AccuracyCriterion(higher_is_better=True, criterion="absolute",
                                             tolerable_loss=args.max_drop),
        tuning_criterion=TuningCriterion(strategy=args.strategy, objective="performance", timeout=args.timeout,
                                         max_trials=args.max_trials))
    sizes = args.sampling_sizes or [len(calib)]
    batch = max(b for b in range(1, args.calib_batch_size + 1) if all(n % b == 0 for n in [len(calib), *sizes]))
    t1 = time.perf_counter()
    quantized = fit(model, conf, calib_dataloader=CalibrationLoader(calib, batch), eval_func=eval_func)
    t2 = time.perf_counter()
    found = quantized is not None
    if found:
        onnx.save(quantized.model, str(args.out_model))
    tried = [c["value"] for c in calls[1:]]  # every call after the float baseline scores a trial's model
    best = max(tried) if tried else None

    result = {
        "tool": f"inc-{args.strategy}", "inc_version": neural_compressor.__version__, "onnxruntime": ort.__version__,
        "onnx": onnx.__version__, "numpy": np.__version__, "case": args.case,
        "model": str(args.out_model) if found else None, "found": found,
        # wall: data + model loading and the fit call (as aaq's Pipeline.run, which loads both)
        "wall_seconds": t2 - t0, "fit_seconds": t2 - t1, "import_seconds": imported - started,
        "evaluations": {"full": len(calls), "full_seconds": sum(c["seconds"] for c in calls),
                        "full_samples": sum(c["samples"] for c in calls)},
        "eval_values": [c["value"] for c in calls],
        "baseline": calls[0]["value"] if calls else None,
        "calib_batch_size": batch, "quant_format": args.quant_format, "timeout": args.timeout,
        "max_trials": args.max_trials, "sampling_sizes": sizes,
        "errors": errors.messages,
        # what INC reached when the benchmark's hard limit stopped it (SIGINT, which fit turns into "return the
        # best model so far"): its best trial's metric on this evaluation set and whether that met the criterion
        "interrupted": bool(stopped), "interrupted_at_seconds": stopped.get("at_seconds"),
        "best_trial_metric": best,
        "best_trial_met": None if best is None or not calls else calls[0]["value"] - best <= args.max_drop + 1e-12,
        "eval_ended_at": [c["ended_at"] for c in calls],
    }
    args.out_json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "eval_values"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
