"""DefaultQuantization vs ONNX Runtime's ``quantize_static`` on the real cases, side by side in one run.

For each case (``ppocr_cls``, ``ppocr_rec``; see ``realcases.py``):

* aaq: ``aaq.Pipeline(spec).run()`` with one DefaultQuantization (preset
  performance, ``stat_subset_size`` = number of calibration samples), an npz
  ``calibration_dataset`` over ``calib__x`` and an npz ``dataset`` over ``x__x``.
* ORT, as ../shared/realcases/README.md measured it: the float model converted
  to opset 13 (``onnx.version_converter``: per-channel DequantizeLinear needs
  it), ``quant_pre_process(skip_symbolic_shape=True)`` (ONNX shape inference and
  ORT's graph optimization, which folds BatchNorm; the symbolic shape inference
  fails on these models), then ``quantize_static`` (QDQ, MinMax, per_channel=True,
  uint8 activations, int8 weights, every other option at its default) fed the
  same calibration samples in the same batches.

Measured (targets in brackets):

1. Calibration + quantization wall time, each tool in its own fresh subprocess
   on the case's 200 calibration samples: aaq = ``result.algorithms[0].seconds``
   (DefaultQuantization alone: preparation, statistics pass, plan, bias
   correction, QDQ model; not the data loading nor the Pipeline's final metric
   evaluations); ORT = the ``quantize_static`` call (augmenting, calibration
   inference, quantization, writing the model; the opset conversion and
   ``quant_pre_process`` are timed apart and not counted, which favours ORT;
   the ratio with them is shown too). [aaq <= 0.5 x ORT]
2. Peak RSS (the child's own ``getrusage(RUSAGE_SELF).ru_maxrss`` when it ends)
   of a fresh subprocess quantizing with 100 and with 1000 calibration samples.
   The cases have 200 calibration lines, so the 1000-sample calibration set is
   ``calib__x`` followed by ``x__x`` (and, for ppocr_rec, which has only 500
   evaluation lines, that 700-sample sequence again from its start until 1000:
   cycled); the 100-sample set is the first 100 of ``calib__x``. Both are
   written uncompressed to a temporary npz. aaq's npz dataset streams rows
   from it batch by batch; ORT gets a CalibrationDataReader over the array
   loaded into memory (its calibrator keeps every batch's outputs anyway), so
   the calibration array ("data MB") is part of ORT's peak only and the
   "minus data" growth subtracts it for ORT. In these memory runs aaq's ``dataset`` is the first 16
   evaluation samples, so that the Pipeline's own final evaluations add nothing.
   [aaq peak(1000) <= 1.10 x aaq peak(100)]
3. Each case's own metric (``realcases_eval.evaluate_full``) of the float model,
   aaq's model and ORT's per-channel model, on all evaluation samples.
   [aaq >= ORT per-channel]
4. Batch latency: a fixed batch (the first 16 evaluation samples for ppocr_cls,
   8 for ppocr_rec), sessions with intra_op_num_threads=2 and ORT_ENABLE_ALL;
   per round float, aaq and ORT each run once (the order rotates every round),
   after warm-up; medians over the rounds. [aaq <= 1.05 x ORT]

The ONNX Runtime-optimized graphs of the three models (``optimized_model_filepath``)
are summarised too (QLinearConv / float Conv / DequantizeLinear ... left after
optimization), which is what explains a latency difference.

Timing hygiene: nothing of this script runs concurrently with a timed step; before
each timed step it waits (up to ``--max-wait`` s) for the machine to be quiet, and
it measures the CPU time other processes (and the hypervisor's steal) took during
the step, in cores (0.0 = nobody else ran, 1.0 = a whole core). A quantization run
disturbed by more than 0.2 cores is run again (``--attempts``, the least disturbed
is kept); latency rounds run in ~0.5 s blocks and a disturbed block is discarded
and replaced (within ``--latency-budget`` s, else the least disturbed blocks
count). The peak-RSS runs do not wait: RSS does not depend on other processes.

Usage:  python benchmarks/bench_default_quantization.py [--cases ppocr_cls ppocr_rec] [--quick]
        ``--quick``: no peak-RSS subprocesses, 15 latency rounds.
Writes benchmarks/out/bench_default_quantization.json (and the quantized models
under benchmarks/out/bench_default_quantization/).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

OUT = HERE / "out"
MODELS_OUT = OUT / "bench_default_quantization"
SHARED = REPO.parent / "shared" / "realcases"

CALIB_BATCH = {"ppocr_cls": 64, "ppocr_rec": 16}   # realcases_eval's batch sizes, for both tools
LATENCY_BATCH = {"ppocr_cls": 16, "ppocr_rec": 8}
LATENCY_ROUNDS = {"ppocr_cls": 40, "ppocr_rec": 20}
MEMORY_SIZES = (100, 1000)
MEMORY_EVAL_SAMPLES = 16
OPSET = 13
QUIET_CORES = 0.2   # a timed step during which other processes used more CPU than this is run again
TARGETS = {"time_ratio": 0.5, "rss_growth": 1.10, "latency_ratio": 1.05}
# Op types worth counting in an optimized graph.
KEY_OPS = ("QLinearConv", "Conv", "FusedConv", "QLinearMatMul", "MatMulIntegerToFloat", "MatMul",
           "FusedMatMul", "Gemm", "DynamicQuantizeMatMul", "QuantizeLinear", "DequantizeLinear",
           "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearConcat",
           "QLinearAveragePool", "QLinearSoftmax")


# --------------------------------------------------------------------------- machine quietness

def _cpu_busy_seconds() -> float:
    """All CPUs' non-idle time (user, nice, system, irq, softirq), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _steal_seconds() -> float:
    """Time the hypervisor gave this VM's CPUs to someone else (/proc/stat "steal")."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return int(fields[7]) / os.sysconf("SC_CLK_TCK") if len(fields) > 7 else 0.0


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignCpu:
    """CPU time other processes used while a step ran, in cores (children count as ours once waited)."""

    def __enter__(self) -> "ForeignCpu":
        self.wall0, self.busy0, self.own0 = time.perf_counter(), _cpu_busy_seconds(), _own_cpu_seconds()
        self.steal0 = _steal_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall0
        foreign = (_cpu_busy_seconds() - self.busy0) - (_own_cpu_seconds() - self.own0)
        self.cores = max(0.0, foreign / wall) if wall > 0 else 0.0
        self.steal = max(0.0, (_steal_seconds() - self.steal0) / wall) if wall > 0 else 0.0


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait until other processes use < ``threshold`` cores over 2 s (or ``max_wait`` passes)."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        with ForeignCpu() as probe:
            time.sleep(2.0)
        if probe.cores < threshold or time.monotonic() >= deadline:
            return probe.cores
        if not warned:
            print(f"  (waiting for the machine to be quiet: other processes use {probe.cores:.2f} cores)",
                  flush=True)
            warned = True


# --------------------------------------------------------------------------- children

def _vm(key: str) -> int:
    """A /proc/self/status value in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def child_main(cfg: dict) -> dict:
    """Quantize once with one tool, in this fresh process; report times and this process's peak RSS."""
    out: dict = {"tool": cfg["tool"], "n": cfg["n"]}
    if cfg["tool"] == "aaq":
        from aaq import Pipeline
        from aaq.engine.engine import Engine

        pipe = Pipeline(cfg["spec"], progress=False)
        # What Pipeline.run would build itself; built here so the RSS before quantization is known.
        engine = Engine.from_spec(pipe.spec.resolved["engine"], pipe.spec.base_dir, progress=False)
        out["rss_before_kib"] = _vm("VmRSS")
        started = time.perf_counter()
        result = pipe.run(cfg["model"], engine)
        out["pipeline_seconds"] = time.perf_counter() - started
        out["seconds"] = result.algorithms[0].seconds
        out["evaluation_seconds"] = sum(e.seconds for e in result.evaluations)
        out["summary"] = {k: result.algorithms[0].summary.get(k) for k in
                          ("layers_quantized", "groups", "activation_quantizers", "bias_corrections")}
        out["metrics"] = {k: {"float": m.float, "quantized": m.quantized} for k, m in result.metrics.items()}
        if cfg.get("out_model"):
            Path(cfg["out_model"]).write_bytes(result.model.SerializeToString())
    else:
        import onnx
        from onnx import version_converter
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with np.load(cfg["calib_npz"], allow_pickle=False) as z:
            x = np.ascontiguousarray(z[cfg["calib_key"]][:cfg["n"]])
        batch, name = cfg["batch"], cfg["input"]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.starts = iter(range(0, len(x), batch))

            def get_next(self):
                start = next(self.starts, None)
                return None if start is None else {name: x[start:start + batch]}

        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            model13 = version_converter.convert_version(onnx.load(cfg["model"]), OPSET)
            opset_path = Path(tmp) / "opset13.onnx"
            onnx.save(model13, str(opset_path))
            out["convert_seconds"] = time.perf_counter() - started
            del model13
            started = time.perf_counter()
            prepared_path = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(opset_path), str(prepared_path), skip_symbolic_shape=True)
            out["preprocess_seconds"] = time.perf_counter() - started
            out["rss_before_kib"] = _vm("VmRSS")
            target = cfg.get("out_model") or str(Path(tmp) / "quantized.onnx")
            started = time.perf_counter()
            quantize_static(str(prepared_path), target, Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            out["seconds"] = time.perf_counter() - started
    out["data_bytes"] = int(cfg["data_bytes"])
    out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["vmhwm_kib"] = _vm("VmHWM")
    return out


def run_child(cfg: dict, rss_limit_gib: float) -> dict:
    """Run ``child_main(cfg)`` in a fresh interpreter; kill it when its RSS passes the limit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    with ForeignCpu() as cpu, tempfile.TemporaryDirectory(prefix="aaq-bench-child-") as scratch:
        # in a scratch folder: ORT's quant_pre_process leaves sym_shape_infer_temp.onnx in its working directory
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=scratch)
        killed = None
        while proc.poll() is None:
            time.sleep(0.25)
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            except OSError:
                continue
            if rss > rss_limit_gib * 2 ** 20:
                proc.kill()
                killed = rss
        stdout, stderr = proc.communicate()
    if killed is not None:
        return {"tool": cfg["tool"], "n": cfg["n"], "killed_at_rss_kib": killed, "foreign_cores": cpu.cores}
    if proc.returncode != 0:
        raise RuntimeError(f"child {cfg['tool']} n={cfg['n']} failed ({proc.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["foreign_cores"] = cpu.cores
    result["steal_cores"] = cpu.steal
    return result


def run_timed_child(cfg: dict, args) -> dict:
    """``run_child`` on a quiet machine: a run other processes disturbed is run again (``--attempts``)."""
    best = None
    for _ in range(args.attempts):
        wait_quiet(args.max_wait)
        res = run_child(cfg, args.rss_limit_gib)
        if "killed_at_rss_kib" in res:
            return res
        res["disturbed"] = res["foreign_cores"] + res["steal_cores"] > QUIET_CORES
        if best is None or res["foreign_cores"] + res["steal_cores"] < best["foreign_cores"] + best["steal_cores"]:
            best = res
        if not res["disturbed"]:
            break
        print(f"  ({cfg['tool']} run disturbed: other processes used {res['foreign_cores']:.2f} cores; again)",
              flush=True)
    return best


def aaq_spec(case: str, model: Path, eval_npz: Path, eval_key: str, eval_labels: str | None,
             calib_npz: Path, calib_key: str, n: int) -> dict:
    if eval_labels:
        metrics = [{"name": "top1", "type": "accuracy", "top_k": 1}]
    else:  # ppocr_rec's labels are strings; the real metric is measured afterwards with realcases_eval
        metrics = [{"name": "agreement", "type": "agreement", "measure": "top1"}]
    return {
        "model": {"name": case, "path": str(model)},
        "engine": {
            "type": "onnxruntime",
            "dataset": {"type": "npz", "path": str(eval_npz), "inputs": {"x": eval_key}, "labels": eval_labels},
            "calibration_dataset": {"type": "npz", "path": str(calib_npz), "inputs": {"x": calib_key}},
            "metrics": metrics,
            "batch_size": CALIB_BATCH[case],
        },
        "compression": {"algorithms": [
            {"name": "DefaultQuantization", "params": {"preset": "performance", "stat_subset_size": n}}]},
    }


# --------------------------------------------------------------------------- parent steps

def quantize_both(case: str, info: dict, data: dict, args, tmp: Path) -> dict:
    """Step 1 (and the models for steps 3-4): each tool once, in its own fresh process, on 200 samples."""
    n = int(info["n_calib"])
    labels = "y" if case == "ppocr_cls" else None
    calib_bytes = data["calib__x"].nbytes
    aaq_model, ort_model = MODELS_OUT / f"{case}.aaq.onnx", MODELS_OUT / f"{case}.ort_perchannel.onnx"
    out = {"aaq": [], "ort": []}
    for r in range(args.repeats):
        for tool in (("aaq", "ort") if r % 2 == 0 else ("ort", "aaq")):
            if tool == "aaq":
                spec = aaq_spec(case, info["model"], info["data"], "x__x", labels, info["data"], "calib__x", n)
                cfg = {"tool": "aaq", "n": n, "spec": spec, "model": str(info["model"]),
                       "out_model": str(aaq_model), "data_bytes": calib_bytes}
            else:
                cfg = {"tool": "ort", "n": n, "model": str(info["model"]), "calib_npz": str(info["data"]),
                       "calib_key": "calib__x", "input": "x", "batch": CALIB_BATCH[case],
                       "out_model": str(ort_model), "data_bytes": calib_bytes}
            res = run_timed_child(cfg, args)
            if "killed_at_rss_kib" in res:
                raise RuntimeError(f"{tool} on {case} passed --rss-limit-gib {args.rss_limit_gib} and was killed")
            out[tool].append(res)
            print(f"  quantized with {tool}: {res['seconds']:.2f} s (foreign cores {res['foreign_cores']:.2f})",
                  flush=True)
    med = {tool: statistics.median(r["seconds"] for r in runs) for tool, runs in out.items()}
    ratio = med["aaq"] / med["ort"]
    return {"n_calib": n, "aaq_seconds": med["aaq"], "ort_seconds": med["ort"],
            "ort_convert_seconds": statistics.median(r["convert_seconds"] for r in out["ort"]),
            "ort_preprocess_seconds": statistics.median(r["preprocess_seconds"] for r in out["ort"]),
            "aaq_measure": "result.algorithms[0].seconds (DefaultQuantization alone, statistics included)",
            "ort_measure": "quantize_static call (calibration included; opset conversion and "
                           "quant_pre_process not counted)",
            "ratio_with_ort_preparation": med["aaq"] / (med["ort"] + statistics.median(
                r["convert_seconds"] + r["preprocess_seconds"] for r in out["ort"])),
            "ratio": ratio, "target": TARGETS["time_ratio"], "met": ratio <= TARGETS["time_ratio"],
            "runs": out, "models": {"aaq": str(aaq_model), "ort": str(ort_model)}}


def memory_sets(case: str, data: dict, tmp: Path) -> dict[int, Path]:
    """Uncompressed calibration npz files of 100 and 1000 samples (see the module docstring)."""
    pool = np.concatenate([data["calib__x"], data["x__x"]])
    paths = {}
    for n in MEMORY_SIZES:
        idx = np.arange(n) % len(pool)
        path = tmp / f"{case}.calib{n}.npz"
        np.savez(path, x=pool[idx])
        paths[n] = path
    return paths


def memory(case: str, info: dict, data: dict, args, tmp: Path) -> dict:
    """Step 2: peak RSS of a fresh process per tool and calibration size."""
    paths = memory_sets(case, data, tmp)
    n_calib, pool_len = len(data["calib__x"]), len(data["calib__x"]) + len(data["x__x"])
    hi = MEMORY_SIZES[-1]
    eval_npz = tmp / f"{case}.eval{MEMORY_EVAL_SAMPLES}.npz"
    labels = "y" if case == "ppocr_cls" else None
    extra = {"y": data["y"][:MEMORY_EVAL_SAMPLES]} if labels else {}
    np.savez(eval_npz, x=data["x__x"][:MEMORY_EVAL_SAMPLES], **extra)
    runs: dict[str, dict[int, dict]] = {"aaq": {}, "ort": {}}
    for n in MEMORY_SIZES:
        data_bytes = n * data["calib__x"][0].nbytes
        for tool in ("aaq", "ort"):
            if tool == "aaq":
                spec = aaq_spec(case, info["model"], eval_npz, "x", labels, paths[n], "x", n)
                # Streamed from the file by aaq's npz dataset: no resident copy to subtract.
                cfg = {"tool": "aaq", "n": n, "spec": spec, "model": str(info["model"]), "data_bytes": 0}
            else:
                cfg = {"tool": "ort", "n": n, "model": str(info["model"]), "calib_npz": str(paths[n]),
                       "calib_key": "x", "input": "x", "batch": CALIB_BATCH[case], "data_bytes": data_bytes}
            res = run_child(cfg, args.rss_limit_gib)
            runs[tool][n] = res
            if "killed_at_rss_kib" in res:
                print(f"  {tool} n={n}: killed at RSS {res['killed_at_rss_kib'] / 2 ** 20:.1f} GiB", flush=True)
            else:
                print(f"  {tool} n={n}: peak RSS {res['peak_rss_kib'] / 1024:.0f} MiB, {res['seconds']:.1f} s",
                      flush=True)
    out: dict = {"sizes": list(MEMORY_SIZES), "sets": (
        f"n={MEMORY_SIZES[0]}: calib__x[:{MEMORY_SIZES[0]}]; n={hi}: calib__x then "
        + (f"x__x[:{hi - n_calib}]" if pool_len >= hi else
           f"x__x ({pool_len} distinct samples), cycled from the start to {hi}")), "runs": runs}
    for tool in ("aaq", "ort"):
        lo, hi = runs[tool][MEMORY_SIZES[0]], runs[tool][MEMORY_SIZES[1]]
        if "peak_rss_kib" in lo and "peak_rss_kib" in hi:
            out[f"{tool}_growth"] = hi["peak_rss_kib"] / lo["peak_rss_kib"]
            out[f"{tool}_growth_minus_data"] = ((hi["peak_rss_kib"] * 1024 - hi["data_bytes"])
                                               / (lo["peak_rss_kib"] * 1024 - lo["data_bytes"]))
    growth = out.get("aaq_growth")
    out.update({"target": TARGETS["rss_growth"], "met": growth is not None and growth <= TARGETS["rss_growth"]})
    return out


def metrics(case: str, info: dict, models: dict, data: dict) -> dict:
    """Step 3: the case's own metric of the three models on every evaluation sample."""
    import realcases_eval

    out = {}
    for label, path in (("float", info["model"]), ("aaq", models["aaq"]), ("ort", models["ort"])):
        res = realcases_eval.evaluate_full(str(path), data)
        out[label] = {k: v for k, v in res.items() if k != "eval_seconds"}
        print(f"  {label}: {out[label]}", flush=True)
    key = "metric"
    out["met"] = out["aaq"][key] >= out["ort"][key]
    if case == "ppocr_rec":
        out["line_met"] = out["aaq"]["line_acc"] >= out["ort"]["line_acc"]
    return out


def _session(path: str, optimized: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def latency(case: str, info: dict, models: dict, data: dict, rounds: int, args) -> dict:
    """Step 4: interleaved medians on a fixed batch, over rounds no other process disturbed.

    Rounds run in blocks of about half a second; a block during which other
    processes used more than ``QUIET_CORES`` is discarded and run again (up to
    ``--latency-budget`` seconds in all; if that is not enough, the least disturbed
    blocks count and the report says so).
    """
    batch = LATENCY_BATCH[case]
    feed = {"x": np.ascontiguousarray(data["x__x"][:batch])}
    paths = {"float": str(info["model"]), "aaq": models["aaq"], "ort": models["ort"]}
    sessions = {k: _session(p) for k, p in paths.items()}
    for _ in range(3):  # warm-up: kernels, thread pools, caches
        for s in sessions.values():
            s.run(None, feed)
    order = list(sessions)
    started = time.perf_counter()
    for s in sessions.values():
        s.run(None, feed)
    per_block = max(1, int(0.5 / max(time.perf_counter() - started, 1e-6)))
    blocks: list[tuple[float, dict[str, list[float]]]] = []   # (disturbance in cores, times)
    r = 0
    wait_quiet(args.max_wait)
    deadline = time.perf_counter() + args.latency_budget
    while sum(len(b["float"]) for d, b in blocks if d <= QUIET_CORES) < rounds:
        block: dict[str, list[float]] = {k: [] for k in sessions}
        with ForeignCpu() as cpu:
            for _ in range(per_block):
                rot = order[r % 3:] + order[:r % 3]
                r += 1
                for k in rot:
                    t = time.perf_counter()
                    sessions[k].run(None, feed)
                    block[k].append(time.perf_counter() - t)
        blocks.append((cpu.cores + cpu.steal, block))
        if time.perf_counter() > deadline:
            break
    # The quiet blocks; when there are too few, the least disturbed ones.
    kept: list[tuple[float, dict[str, list[float]]]] = []
    for d, b in sorted(blocks, key=lambda db: db[0]):
        if sum(len(x["float"]) for _, x in kept) >= rounds:
            break
        kept.append((d, b))
    quiet = all(d <= QUIET_CORES for d, _ in kept)
    times = {k: [t for _, b in kept for t in b[k]] for k in sessions}
    discarded = sum(len(b["float"]) for _, b in blocks) - len(times["float"])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["aaq"] / med["ort"]
    return {"batch": batch, "rounds": len(times["float"]), "quiet": quiet, "discarded_rounds": discarded,
            "max_disturbance_cores": max(d for d, _ in kept),
            "median_seconds": med, "min_seconds": {k: min(v) for k, v in times.items()},
            "aaq_over_float": med["aaq"] / med["float"], "ort_over_float": med["ort"] / med["float"],
            "aaq_over_ort": ratio, "target": TARGETS["latency_ratio"], "met": ratio <= TARGETS["latency_ratio"],
            "seconds": times}


def graphs(info: dict, models: dict, tmp: Path) -> dict:
    """Op counts of each model as written and after ONNX Runtime's ORT_ENABLE_ALL optimization."""
    import onnx

    out = {}
    for label, path in (("float", str(info["model"])), ("aaq", models["aaq"]), ("ort", models["ort"])):
        opt = tmp / f"{label}.optimized.onnx"
        _session(path, str(opt))
        written = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
        optimized = collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
        out[label] = {"written": dict(written.most_common()), "optimized": dict(optimized.most_common())}
    return out


# --------------------------------------------------------------------------- report

def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def print_table(report: dict) -> None:
    rows = []
    for case, r in report["cases"].items():
        t = r["time"]
        rows.append((case, f"calib+quant s ({t['n_calib']} samples)", f"{t['aaq_seconds']:.2f}",
                     f"{t['ort_seconds']:.2f}",
                     f"aaq/ORT {t['ratio']:.2f} ({t['ratio_with_ort_preparation']:.2f} with ORT's "
                     f"conversion + pre-process)", f"<= {t['target']}", t["met"]))
        m = r.get("memory")
        if m:
            for tool in ("aaq", "ort"):
                cells = []
                for n in m["sizes"]:
                    run = m["runs"][tool].get(n) or m["runs"][tool][str(n)]  # str: read back from JSON
                    cells.append(f">{run['killed_at_rss_kib'] / 2 ** 20:.1f}GiB killed" if "killed_at_rss_kib" in run
                                 else _mib(run["peak_rss_kib"]))
                growth = m.get(f"{tool}_growth")
                note = (f"x{growth:.3f} (x{m[f'{tool}_growth_minus_data']:.3f} w/o data)"
                        if growth is not None else "")
                data_mib = [(m["runs"][tool].get(n) or m["runs"][tool][str(n)])["data_bytes"] / 2 ** 20
                            for n in m["sizes"]]
                rows.append((case, f"{tool} peak RSS MiB n=100 / n=1000",
                             cells[0], cells[1], f"{note}; data {data_mib[0]:.0f}/{data_mib[1]:.0f} MiB",
                             f"<= x{m['target']}" if tool == "aaq" else "(shown)",
                             m["met"] if tool == "aaq" else ""))
        q = r["metrics"]
        key = "top1" if case == "ppocr_cls" else "char_acc"
        rows.append((case, f"{key} (float {q['float'][key]:.4f})", f"{q['aaq'][key]:.4f}", f"{q['ort'][key]:.4f}",
                     f"diff {q['aaq'][key] - q['ort'][key]:+.4f}", "aaq >= ORT", q["met"]))
        if case == "ppocr_rec":
            rows.append((case, f"line_acc (float {q['float']['line_acc']:.4f})", f"{q['aaq']['line_acc']:.4f}",
                         f"{q['ort']['line_acc']:.4f}", f"diff {q['aaq']['line_acc'] - q['ort']['line_acc']:+.4f}",
                         "aaq >= ORT", q["line_met"]))
        lat = r["latency"]
        med = lat["median_seconds"]
        rows.append((case, f"latency ms batch {lat['batch']} (float {med['float'] * 1e3:.1f})",
                     f"{med['aaq'] * 1e3:.1f}", f"{med['ort'] * 1e3:.1f}",
                     f"aaq/float {lat['aaq_over_float']:.2f}, ORT/float {lat['ort_over_float']:.2f}, "
                     f"aaq/ORT {lat['aaq_over_ort']:.3f}", f"aaq/ORT <= {lat['target']}", lat["met"]))
    heads = ("case", "measure", "aaq", "ORT", "ratio / note", "target", "met")
    widths = [max(len(str(row[i])) for row in rows + [heads]) for i in range(len(heads))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(heads))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(["yes" if c is True else "NO" if c is False else c for c in row]))
    print()
    first = next(iter(report["cases"].values()))
    print(f"time: aaq = {first['time']['aaq_measure']}; ORT = {first['time']['ort_measure']}")
    for case, r in report["cases"].items():
        if r.get("memory"):
            print(f"peak RSS {case}: fresh subprocess per run, own ru_maxrss; calibration sets {r['memory']['sets']}; "
                  f"'w/o data' subtracts the calibration array each run holds in memory")
    print()
    for case, r in report["cases"].items():
        print(f"{case}: ops after ORT_ENABLE_ALL optimization (written model -> optimized graph)")
        for label in ("float", "aaq", "ort"):
            g = r["graphs"][label]
            cells = ", ".join(f"{op} {g['optimized'][op]}" for op in KEY_OPS if g["optimized"].get(op))
            print(f"  {label:<5}: {sum(g['optimized'].values())} nodes: {cells}")
        t = r["time"]
        runs = [x for tool_runs in t["runs"].values() for x in tool_runs]
        lat = r["latency"]
        not_quiet = ("" if lat["quiet"] else " (NOT enough quiet rounds: the least disturbed kept, up to "
                     f"{lat['max_disturbance_cores']:.2f} cores)")
        print(f"  other processes' CPU during timed steps (cores; steal in brackets): quantization "
              f"{max(x['foreign_cores'] for x in runs):.2f} ({max(x['steal_cores'] for x in runs):.2f}) max, "
              f"latency: {lat['rounds']} rounds, {lat['discarded_rounds']} disturbed ones discarded{not_quiet}; "
              f"ORT opset conversion {t['ort_convert_seconds']:.2f} s + quant_pre_process "
              f"{t['ort_preprocess_seconds']:.2f} s (not in the ORT time)")


def aaq_source_state() -> dict:
    """Which aaq was measured: HEAD, the files under aaq/ that differ from it, and a digest of aaq/*.py."""
    import hashlib

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    digest = hashlib.sha256()
    for path in sorted((REPO / "aaq").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return {"head": git("rev-parse", "HEAD").strip(),
            "changed": [line[3:] for line in git("status", "--porcelain", "--", "aaq").splitlines()],
            "aaq_py_sha256": digest.hexdigest()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["ppocr_cls", "ppocr_rec"], choices=["ppocr_cls", "ppocr_rec"])
    ap.add_argument("--quick", action="store_true", help="no peak-RSS subprocesses, 15 latency rounds")
    ap.add_argument("--repeats", type=int, default=1, help="quantization timing runs per tool (median)")
    ap.add_argument("--rounds", type=int, default=None, help="latency rounds (default 40 cls / 20 rec)")
    ap.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for a quiet machine")
    ap.add_argument("--attempts", type=int, default=3, help="runs of a disturbed quantization timing")
    ap.add_argument("--latency-budget", type=float, default=60.0,
                    help="seconds per case for collecting undisturbed latency rounds")
    ap.add_argument("--rss-limit-gib", type=float, default=16.0, help="kill a child above this RSS")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child_main(json.loads(args.child))))
        return 0

    import onnx
    import onnxruntime as ort

    import realcases
    sys.path.insert(0, str(SHARED))
    import realcases_eval

    started = time.perf_counter()
    MODELS_OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"cases": {}, "quick": args.quick, "targets": TARGETS, "cpus": os.cpu_count(),
                    "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                    "python": platform.python_version(), "aaq_source": aaq_source_state()}
    for case in args.cases:
        print(f"== {case}", flush=True)
        info = realcases.prepare(case, args.data_dir or realcases.DEFAULT_OUT)
        data = realcases_eval.load(info["data"])
        with tempfile.TemporaryDirectory(dir=OUT, prefix=".bench_dq_") as tmp_name:
            tmp = Path(tmp_name)
            r: dict = {}
            print(" 1. calibration + quantization time", flush=True)
            r["time"] = quantize_both(case, info, data, args, tmp)
            models = r["time"]["models"]
            if not args.quick:
                print(" 2. peak RSS", flush=True)
                r["memory"] = memory(case, info, data, args, tmp)
            print(" 3. metrics", flush=True)
            r["metrics"] = metrics(case, info, models, data)
            print(" 4. latency", flush=True)
            rounds = args.rounds or (15 if args.quick else LATENCY_ROUNDS[case])
            r["latency"] = latency(case, info, models, data, rounds, args)
            r["graphs"] = graphs(info, models, tmp)
        report["cases"][case] = r
    report["seconds"] = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_default_quantization.json").write_text(json.dumps(report, indent=2, default=str))
    print()
    print_table(report)
    print(f"\ntotal {report['seconds']:.0f} s; wrote {OUT / 'bench_default_quantization.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
