"""The NNCF side of ``bench_accuracy_aware.py``: ``nncf.quantize_with_accuracy_control`` on one real case.

Runs inside the benchmark's NNCF virtual environment (``benchmarks/out/venv-nncf``,
nncf==3.4.0, ONNX backend); it never imports aaq. It also holds the per-sample
metric both tools use (``Scorer``), written with numpy and ``realcases_eval``'s own
CTC decoding and edit distance only, so the benchmark process imports it from
here and the two sides score every sample identically:

* ppocr_cls: 1 when argmax(output) == y, else 0 (mean = top-1 accuracy).
* ppocr_rec: ``(len(gt) - edit(pred, gt)) / L`` with spaces removed from both, where
  ``L`` is the mean ground-truth length over the whole evaluation set. The mean of
  these scores over the whole evaluation set is exactly realcases_eval's corpus
  character accuracy ``1 - sum(edit) / sum(len)``; on a subset it is the same
  per-sample values averaged.

The validation function given to NNCF returns ``(metric, per-item values)``, so NNCF
runs in metric mode; it counts its calls: a call on every evaluation item is a full
evaluation, any other (the one-item mode check, ranking subsets) a subset one. It
builds one ONNX Runtime session per model object (the last one is kept, so the
mode check and the full run that follows share it) and runs the items in batches.

``quantize`` (``bench_default_start.py``): ``nncf.quantize`` with its defaults on
calibration inputs from an npz (one key, the model input's name), every sample used.

Usage (the benchmarks call it):
  python nncf_side.py quantize --model M.onnx --calib C.npz --input x --out-model OUT.onnx --out-json OUT.json
  python nncf_side.py --case ppocr_rec --model M.onnx --data D.npz --out-model OUT.onnx --out-json OUT.json
                      --subset-size 200 --ranking-subset-size 300 --max-drop 0.01 --batch-size 16 [--steps 60]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "realcases"
sys.path.insert(0, str(SHARED))

import realcases_eval  # noqa: E402  (numpy + onnxruntime only)

LABELS = {"ppocr_cls": "y", "ppocr_rec": "text"}


class Scorer:
    """Per-sample scores of one case; their mean over the evaluation set is the case's metric.

    ``data`` is the loaded npz (``realcases_eval.load``). ``steps`` (ppocr_rec) is the
    CTC output length, which bounds the decoded length and so the scores from below.
    ``mean_len`` (ppocr_rec) replaces the mean length of ``data["text"]`` when those are
    a cut of the set the metric is defined on (bench_toolbox ``--quick``).
    """

    def __init__(self, case: str, data: dict, steps: int | None = None, mean_len: float | None = None) -> None:
        self.case = case
        if case == "ppocr_cls":
            self.bounds = (0.0, 1.0)
            return
        self.charset = [str(c) for c in data["charset"]]
        lengths = [len(_strip(t)) for t in data["text"]]
        self.mean_len = float(np.mean(lengths)) if mean_len is None else float(mean_len)
        steps = steps or max(lengths)
        low = min(n - max(n, steps) for n in lengths)
        self.bounds = (low / self.mean_len, max(lengths) / self.mean_len)

    def details(self, logits: np.ndarray, labels) -> dict[str, np.ndarray]:
        """Per sample: ``score``, and for ppocr_rec ``edit``, ``length``, ``exact``."""
        if self.case == "ppocr_cls":
            y = np.asarray(labels).reshape(-1)
            return {"score": (np.asarray(logits).reshape(len(y), -1).argmax(axis=1) == y).astype(np.float64)}
        preds = [_strip(p) for p in realcases_eval._ctc_greedy(np.asarray(logits), self.charset)]
        gts = [_strip(t) for t in labels]
        edit = np.array([realcases_eval._edit_distance(p, g) for p, g in zip(preds, gts)], np.float64)
        length = np.array([len(g) for g in gts], np.float64)
        return {"score": (length - edit) / self.mean_len, "edit": edit, "length": length,
                "exact": np.array([float(p == g) for p, g in zip(preds, gts)])}

    def scores(self, logits: np.ndarray, labels) -> np.ndarray:
        return self.details(logits, labels)["score"]


def _strip(text) -> str:
    return str(text).replace(" ", "")


def summarize(scorer: Scorer, parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The metric (mean score) and, for ppocr_rec, realcases_eval's char / line accuracy, over all parts."""
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out = {"metric": float(np.mean(joined["score"])), "n": int(len(joined["score"]))}
    if scorer.case == "ppocr_rec":
        out["char_acc"] = float(1.0 - joined["edit"].sum() / max(1.0, joined["length"].sum()))
        out["line_acc"] = float(np.mean(joined["exact"]))
    return out


# --------------------------------------------------------------------------- the NNCF run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=sorted(LABELS))
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out-model", required=True, type=Path)
    ap.add_argument("--out-json", required=True, type=Path)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--subset-size", type=int, required=True)
    ap.add_argument("--ranking-subset-size", type=int, required=True)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    import onnx
    import onnxruntime as ort

    import nncf
    from nncf.quantization.algorithms.accuracy_control import algorithm as ac_algorithm
    from nncf.quantization.algorithms.accuracy_control import ranker as ac_ranker

    if args.log:
        handler = logging.FileHandler(args.log, mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("nncf").addHandler(handler)
    imported = time.perf_counter()

    # What NNCF only logs: the restorer's report and the number of groups it ranks.
    captured: dict = {}
    print_report = ac_algorithm.QuantizationAccuracyRestorer._print_report

    def keep_report(report, max_num_iterations):
        captured["report"] = report
        return print_report(report, max_num_iterations)

    ac_algorithm.QuantizationAccuracyRestorer._print_report = staticmethod(keep_report)
    find_groups = ac_ranker.Ranker.find_groups_of_quantizers_to_rank

    def count_groups(self, graph):
        groups = find_groups(self, graph)
        captured["groups_ranked"] = len(groups)
        return groups

    ac_ranker.Ranker.find_groups_of_quantizers_to_rank = count_groups

    t0 = time.perf_counter()
    data = realcases_eval.load(args.data)
    name = str(data["input_names"][0])
    x, calib = data[f"x__{name}"], data[f"calib__{name}"]
    labels = data[LABELS[args.case]]
    n_eval = len(x)
    scorer = Scorer(args.case, data, args.steps)
    model = onnx.load(str(args.model))

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The session options of aaq's engine (spinning off), so that both tools' evaluations run alike.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    counts = {"full": 0, "subset": 0, "full_samples": 0, "subset_samples": 0, "sessions": 0,
              "full_seconds": 0.0, "subset_seconds": 0.0}
    last: dict = {"model": None, "session": None}

    def session_for(m):
        if last["model"] is not m:
            last["session"] = ort.InferenceSession(m.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
            last["model"] = m
            counts["sessions"] += 1
        return last["session"]

    def validation_fn(m, items):
        t = time.perf_counter()
        idx = np.fromiter((int(i) for i in items), dtype=np.int64)
        session = session_for(m)
        scores = []
        for s in range(0, len(idx), args.batch_size):
            b = idx[s:s + args.batch_size]
            logits = session.run(None, {name: x[b]})[0]
            scores.append(scorer.scores(logits, labels[b]))
        values = np.concatenate(scores) if scores else np.zeros(0)
        kind = "full" if len(idx) == n_eval else "subset"
        counts[kind] += 1
        counts[f"{kind}_samples"] += len(idx)
        counts[f"{kind}_seconds"] += time.perf_counter() - t
        return float(np.mean(values)), [float(v) for v in values]

    calibration = nncf.Dataset(list(range(len(calib))), lambda i: {name: calib[i:i + 1]})
    validation = nncf.Dataset(list(range(n_eval)))
    params = nncf.AdvancedAccuracyRestorerParameters(ranking_subset_size=args.ranking_subset_size)
    t1 = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model, calibration, validation, validation_fn, max_drop=args.max_drop,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=args.subset_size,
        advanced_accuracy_restorer_parameters=params)
    t2 = time.perf_counter()
    onnx.save(quantized, str(args.out_model))

    report = captured.get("report")
    result = {
        "tool": "nncf", "nncf_version": nncf.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "numpy": np.__version__, "case": args.case, "model": str(args.out_model),
        # wall: data + model loading and quantize_with_accuracy_control (as aaq's Pipeline.run, which loads both)
        "wall_seconds": t2 - t0, "qwac_seconds": t2 - t1, "import_seconds": imported - started,
        "evaluations": dict(counts),
        "samples_inferred": counts["full_samples"] + counts["subset_samples"],
        "groups_ranked": captured.get("groups_ranked"),
        "restorer_ran": report is not None,
    }
    if report is not None:
        result.update({
            "groups_reverted": len(report.removed_groups),
            "reverted_operations": [n.node_name for n in report.reverted_operations],
            "num_quantized_operations": report.num_quantized_operations,
            "reached_required_drop": bool(report.reached_required_drop),
            "removed_all": bool(report.removed_all),
            "iterations": None if report.num_iterations is None else report.num_iterations + 1,
        })
    else:
        result.update({"groups_reverted": 0, "reverted_operations": [], "reached_required_drop": True,
                       "iterations": 0})
    args.out_json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "reverted_operations"}))
    return 0


def quantize_main(argv: list[str]) -> int:
    """``nncf.quantize`` with NNCF's defaults on every calibration sample, one sample per item."""
    ap = argparse.ArgumentParser(prog="nncf_side.py quantize")
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--calib", required=True, type=Path)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out-model", required=True, type=Path)
    ap.add_argument("--out-json", required=True, type=Path)
    args = ap.parse_args(argv)
    import onnx

    import nncf

    with np.load(args.calib, allow_pickle=False) as z:
        calib = np.ascontiguousarray(z[args.input])
    model = onnx.load(str(args.model))
    started = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(range(len(calib))), lambda i: {args.input: calib[i:i + 1]}),
                              subset_size=len(calib))
    seconds = time.perf_counter() - started
    onnx.save(quantized, str(args.out_model))
    result = {"tool": "nncf", "nncf_version": nncf.__version__, "seconds": seconds, "subset_size": len(calib)}
    args.out_json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off (it is a MagicMock then); set by the caller too
    if sys.argv[1:2] == ["quantize"]:
        raise SystemExit(quantize_main(sys.argv[2:]))
    raise SystemExit(main())
