"""Run one peer quantizer in its own virtual environment (AMD Quark 0.13 or AIMET-ONNX 2.42); JSON out.

Called by ``bench_toolbox.py`` with the venv's python (``benchmarks/out/venv-quark``,
``venv-aimet``, made from ``../shared/peers/requirements-*.txt``). The calls are the
ones ``/work/shared/peers/README.md`` lists as measured. Modes:

* ``quark_oneshot``: ``INT8_CNN_DEFAULT`` (MinMax, QDQ, u8 activations / s8 weights, CLE), per-channel weights.
* ``quark_adaround``, ``quark_adaquant``: that one-shot with Quark's fast fine-tuning (AdaRound or AdaQuant at
  the parameters of its own ADAROUND / ADAQUANT presets: 1000 iterations a layer, batch 2, early stop);
  ``quark_adaround_percentile``: the same AdaRound after Percentile calibration (AdaRound on clipped ranges).
* ``quark_autosearch``: v1 ``AutoSearch``, grid over include_cle x calibrate_method (MinMax, Percentile,
  LayerWisePercentile) x include_fast_ft x include_auto_mp (24 configs, first key slowest; include_fast_ft moved
  first so the 12 configs without AdaRound fine-tuning come first), stop at the first config within ``max_drop``
  of the float metric by the user's evaluator (the eval set's metric, below); 1200 s time limit.
* ``aimet_cle_seqmse``: ``equalize_model``, QuantSim int8/int8 min_max, ``compute_encodings``,
  ``apply_seq_mse(num_candidates=20)``, ``compute_encodings``, ``to_onnx_qdq``.
* ``aimet_amp``: that QuantSim (CLE, no SeqMSE), then ``choose_mixed_precision`` over int8 / int16 / fp16
  candidates (binary search), phase 1 (first 200 samples) and 2 scored by the eval set's metric.

The metric is top-1 agreement with the labels in the eval npz (``x``, ``y``), or for an npz
with ``x``, ``text``, ``charset`` (and ``mean_len``; ppocr_rec) the bench's character accuracy (``_Labels``); every
full-set evaluation the tool asks for is counted, and each is a line on stderr as it
ends (``[peers_side] full evaluation N: metric``), so a run stopped at its time limit
still says how far it got.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


class _Labels:
    """The eval npz's labels and each sample's score: top-1 against ``y``, or, when the npz has ``text`` and
    ``charset`` (ppocr_rec), ``nncf_side.Scorer``'s character accuracy of CTC greedy decoding: the same
    per-sample score bench_toolbox gives every tool's model, so a peer searches on the bench's own metric."""

    def __init__(self, z) -> None:
        self.scorer = None
        if "text" in z.files:
            import nncf_side  # numpy + realcases_eval only: importable in the peers' venvs

            self.values = z["text"]
            # mean_len: the bench's, when its eval set was cut (--quick)
            self.scorer = nncf_side.Scorer("ppocr_rec", {"charset": z["charset"], "text": self.values},
                                           mean_len=float(z["mean_len"]) if "mean_len" in z.files else None)
        else:
            self.values = z["y"]

    def __len__(self) -> int:
        return len(self.values)

    def scores(self, out: np.ndarray, start: int, stop: int) -> np.ndarray:
        part = self.values[start:stop]
        return out.argmax(axis=-1) == part if self.scorer is None else self.scorer.scores(out, part)


def _metric(model_path_or_session, x: np.ndarray, y: _Labels, name: str, n: int | None = None,
            batch: int = 64) -> float:
    """The mean score of the first ``n`` (all) eval samples."""
    import onnxruntime as ort

    session = model_path_or_session
    if isinstance(session, (str, Path)):
        session = ort.InferenceSession(str(session), providers=["CPUExecutionProvider"])
    n = len(x) if n is None else n
    hits = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        out = session.run(None, {name: x[start:stop]})[0]
        hits.append(y.scores(out, start, stop))
    return float(np.mean(np.concatenate(hits)))


def _counted(count: dict, kind: str, value: float) -> float:
    """Count one evaluation and say so on stderr at once (bench_toolbox reads it if the run is stopped)."""
    key = "subset_evaluations" if kind == "subset" else "evaluations"
    count[key] += 1
    print(f"[peers_side] {kind} evaluation {count[key]}: {value:.4f}", file=sys.stderr, flush=True)
    return value


class _Reader:
    """Quark's CalibrationDataReader: one sample dict at a time."""

    def __init__(self, name: str, calib: np.ndarray, batch: int = 1) -> None:
        self.items = [{name: calib[i:i + batch]} for i in range(0, len(calib), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def rewind(self) -> None:
        self.i = 0

    def reset(self) -> None:
        self.i = 0


def _quark_int8(args, calib, finetune: str | None = None, percentile: bool = False) -> dict:
    """``INT8_CNN_DEFAULT`` per-channel; with ``percentile``, Percentile calibration instead of MinMax; with
    ``finetune`` ("adaround" / "adaquant"), Quark's fast fine-tuning at its preset's own parameters
    (``DEFAULT_ADAROUND_PARAMS`` / ``DEFAULT_ADAQUANT_PARAMS``: 1000 iterations a layer, batch 2, early stop)."""
    from quark.onnx import CalibrationMethod, ModelQuantizer, QConfig
    from quark.onnx.quantization.config import custom_config

    cfg = QConfig.get_default_config("INT8_CNN_DEFAULT")
    cfg.global_quant_config.per_channel = True
    if percentile:
        cfg.global_quant_config.calibrate_method = CalibrationMethod.Percentile
    record: dict = {"evaluations": 0}
    if finetune is not None:
        params = {"adaround": custom_config.DEFAULT_ADAROUND_PARAMS,
                  "adaquant": custom_config.DEFAULT_ADAQUANT_PARAMS}[finetune]
        cfg.global_quant_config.include_fast_ft = True
        cfg.global_quant_config.extra_options["FastFinetune"] = dict(params)
        record["fast_finetune"] = dict(params)
    ModelQuantizer(cfg).quantize_model(args.model, args.out_model, _Reader(args.input, calib))
    return record


def quark_oneshot(args, calib, x, y) -> dict:
    return _quark_int8(args, calib)


def quark_adaround(args, calib, x, y) -> dict:
    return _quark_int8(args, calib, "adaround")


def quark_adaquant(args, calib, x, y) -> dict:
    return _quark_int8(args, calib, "adaquant")


def quark_adaround_percentile(args, calib, x, y) -> dict:
    return _quark_int8(args, calib, "adaround", percentile=True)


def quark_autosearch(args, calib, x, y) -> dict:
    from quark.onnx import AutoSearch, CalibrationMethod, LayerWiseMethod, QConfig
    from quark.onnx.quantization.auto_search.auto_search_v1 import AutoSearchConfig

    count = {"evaluations": 0}

    def evaluator(path: str) -> float:
        return _counted(count, "full", _metric(path, x, y, args.input))

    cfg = QConfig.get_default_config("INT8_CNN_DEFAULT")
    cfg.global_quant_config.per_channel = True
    asc = AutoSearchConfig()
    # the measured grid, with include_fast_ft moved first (slowest-varying): with include_cle first, configs 2
    # and 3 are AdaRound fine-tuning, 737 s each on the 8-layer outlier CNN here, before any cheap
    # calibration method is tried; this order tries the 12 configs without fine-tuning first
    asc.search_space = {"include_fast_ft": [False, True], "include_cle": [True, False],
                        "calibrate_method": [CalibrationMethod.MinMax, CalibrationMethod.Percentile,
                                             LayerWiseMethod.LayerWisePercentile],
                        "include_auto_mp": [False, True]}
    asc.search_algo = "grid_search"
    asc.search_evaluator = evaluator
    asc.search_metric_tolerance = args.max_drop
    asc.search_stop_condition = {"find_n_candidates": 1, "find_best_candidate": -1, "iteration_limit": 1e5,
                                 "time_limit": 1200}
    work = tempfile.mkdtemp(prefix="quark_as_")
    asc.search_cache_dir, asc.search_output_dir = work, work
    asc.search_log_path = os.path.join(work, "auto_search.log")
    candidates = AutoSearch(args.model, cfg, auto_search_config=asc,
                            calibration_data_reader=_Reader(args.input, calib)).search_model()
    if not candidates:
        return {**count, "met": False, "note": "no config within the tolerance"}
    best = candidates[0]
    onnx.save(onnx.load(best["model_path"]), args.out_model)
    return {**count, "met": True, "config_index": best["config_index"]}


def _symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and (dims[0].dim_value <= 0):
            dims[0].dim_param = "N"
    return model


def _sim(args, calib, cle: bool):
    from aimet_onnx.cross_layer_equalization import equalize_model
    from aimet_onnx.quantsim import QuantizationSimModel

    model = _symbolic_batch(onnx.load(args.model))
    if cle:
        equalize_model(model)
    sim = QuantizationSimModel(model, param_type="int8", activation_type="int8", quant_scheme="min_max",
                               config_file="default", dummy_input={args.input: calib[:1]})
    batches = [{args.input: calib[i:i + 16]} for i in range(0, len(calib), 16)]

    def forward(session, _=None):
        for feed in batches:
            session.run(None, feed)

    sim.compute_encodings(forward)
    return sim, batches, forward


def aimet_cle_seqmse(args, calib, x, y) -> dict:
    from aimet_onnx.sequential_mse.seq_mse import apply_seq_mse

    sim, batches, forward = _sim(args, calib, cle=True)
    apply_seq_mse(sim, batches, num_candidates=20)
    sim.compute_encodings(forward)
    onnx.save(sim.to_onnx_qdq(), args.out_model)
    return {"evaluations": 0}


def aimet_amp(args, calib, x, y) -> dict:
    from aimet_onnx.common.amp.utils import AMPSearchAlgo
    from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
    from aimet_onnx.mixed_precision import choose_mixed_precision

    sim, batches, forward = _sim(args, calib, cle=True)
    count = {"evaluations": 0, "subset_evaluations": 0}
    sub = min(len(x), 200)

    def phase1(session, _=None) -> float:
        return _counted(count, "subset", _metric(session, x, y, args.input, sub))

    def phase2(session, _=None) -> float:
        return _counted(count, "full", _metric(session, x, y, args.input))

    integer, floating = QuantizationDataType.int, QuantizationDataType.float
    candidates = [((8, integer), (8, integer)), ((16, integer), (8, integer)), ((16, floating), (16, floating))]
    work = tempfile.mkdtemp(prefix="aimet_amp_")
    choose_mixed_precision(sim, candidates, CallbackFunc(phase1), CallbackFunc(phase2),
                           allowed_accuracy_drop=args.max_drop, results_dir=work, clean_start=True,
                           forward_pass_callback=CallbackFunc(forward), amp_search_algo=AMPSearchAlgo.Binary)
    onnx.save(sim.to_onnx_qdq(), args.out_model)
    return count


MODES = {"quark_oneshot": quark_oneshot, "quark_adaround": quark_adaround, "quark_adaquant": quark_adaquant,
         "quark_adaround_percentile": quark_adaround_percentile,
         "quark_autosearch": quark_autosearch,
         "aimet_cle_seqmse": aimet_cle_seqmse, "aimet_amp": aimet_amp}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=list(MODES))
    for flag in ("--model", "--calib", "--eval", "--input", "--out-model", "--out-json"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--max-drop", type=float, default=0.01)
    args = ap.parse_args()
    with np.load(args.calib) as z:
        calib = z[args.input]
    with np.load(args.eval) as z:
        x, y = z["x"], _Labels(z)
    started = time.perf_counter()
    record = MODES[args.mode](args, calib, x, y)
    record["seconds"] = time.perf_counter() - started
    Path(args.out_json).write_text(json.dumps(record, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
