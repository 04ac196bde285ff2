"""AccuracyAwareQuantization vs NNCF's ``quantize_with_accuracy_control`` on the real cases, side by side.

For each case (``ppocr_cls``, ``ppocr_rec``; see ``realcases.py``), with the same
evaluation set (``x__x``), the same calibration samples (all of ``calib__x``), the
same per-sample metric, ``maximal_drop`` 0.01 absolute, on this machine, one
after the other:

* aaq (in this process): ``aaq.Pipeline(spec, progress=False).run()`` with
  DefaultQuantization (preset performance, ``stat_subset_size`` = number of
  calibration samples, ``calibration_dataset`` = ``calib__x``) then
  AccuracyAwareQuantization (``ranking_subset_size`` = min(300, N)), once with
  ``search: greedy`` and once with ``search: bisection``.
* NNCF 3.4.0 (ONNX backend) in its own virtual environment
  (``benchmarks/out/venv-nncf``, created here; no torch), as a subprocess running
  ``nncf_side.py``: ``quantize_with_accuracy_control`` with the same
  ``subset_size``, ``ranking_subset_size`` and drop, a validation_fn that returns
  ``(metric, per-item values)`` (metric mode) and counts its calls. NNCF's ONNX path
  falls back to per-tensor weights below opset 13, so by default it gets the model
  converted to opset 13 with ``onnx.version_converter``, which is what aaq does
  internally (``--nncf-model original`` gives it the file as is).

The metric (``nncf_side.Scorer``, shared by both tools): ppocr_cls top-1 accuracy;
ppocr_rec a per-line score ``(len(gt) - edit) / mean_len`` whose mean over the
evaluation set equals realcases_eval's corpus character accuracy exactly.

Measured per case and tool: whether the drop is within 0.01 by ONE common
evaluation of each final model on the full evaluation set here (own ONNX Runtime
loop, the same for every model); float and final metric; groups (tool's own
unit) and layers (Conv/Gemm/MatMul without a DequantizeLinear input, counted the
same way in every model) left in float; full and subset evaluations and samples
inferred (aaq: its report; NNCF: counted in validation_fn); wall time (aaq: the
``Pipeline.run`` call; NNCF: data and model loading plus the
``quantize_with_accuracy_control`` call, not the interpreter start or imports);
and the final model's batch latency against float (median of interleaved rounds
on a fixed batch, the same SessionOptions for every model) in three settings: 2
intra-op threads with ONNX Runtime's default spinning, 2 threads with spinning off
(aaq's engine default; NNCF's validation_fn gets the same options), and 1 thread.
On 2 vCPUs spinning makes ppocr_cls 1.6x slower and its timings noisy.

Both tools read the same data file: the case's npz written uncompressed (as
someone who cares about load time stores it; aaq's npz dataset then streams it,
NNCF's side loads it whole).

Targets (the issue): aaq meets the drop wherever NNCF does; aaq's float groups <=
NNCF's; aaq's wall time <= 0.5 x NNCF's; aaq's final model faster than float on
both cases.

Timing hygiene: before each timed run the script waits (up to ``--max-wait`` s)
for the machine to be quiet, and records the CPU other processes used during it
("foreign cores": 1.0 = another process took a whole core).

Usage:  python benchmarks/bench_accuracy_aware.py [--cases ppocr_cls ppocr_rec] [--quick]
                [--tools nncf aaq-greedy aaq-bisection] [--ranking-subset-size N] [--json PATH]
        ``--quick``: the first 300 (cls) / 120 (rec) evaluation samples, 100 calibration
        samples, ranking subsets of 100, 15 latency rounds (about 4 minutes; the full run
        takes about 23 minutes on 2 cores, 15 of them NNCF on ppocr_rec).
Writes benchmarks/out/bench_accuracy_aware.json (or --json), and models, reports and logs under
benchmarks/out/bench_accuracy_aware/.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
if __name__ == "__main__":  # the spec's metric factory imports this module by name: let it find this one
    sys.modules.setdefault("bench_accuracy_aware", sys.modules[__name__])

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import aaq  # noqa: E402
from aaq import Metric  # noqa: E402
import nncf_side  # noqa: E402
import realcases  # noqa: E402

OUT = HERE / "out"
WORK = OUT / "bench_accuracy_aware"
VENV = OUT / "venv-nncf"
NNCF = "nncf==3.4.0"
BATCH = {"ppocr_cls": 64, "ppocr_rec": 16}
QUICK_EVAL = {"ppocr_cls": 300, "ppocr_rec": 120}
MAX_DROP = 0.01
# Session settings the final models' latency is measured in: (intra-op threads, spinning).
LATENCY_SETTINGS = {"2t spin": (2, True), "2t no-spin": (2, False), "1t": (1, False)}
LAYER_OPS = ("Conv", "Gemm", "MatMul")

log = logging.getLogger("bench_accuracy_aware")


# --------------------------------------------------------------------------- the shared metric, as an aaq plugin


class CaseMetric(Metric):
    """``nncf_side.Scorer`` as an aaq metric: one score per sample, the value their mean.

    ``data``: an npz with the case's ``charset`` and ``text`` (ppocr_rec), and optionally ``mean_len``
    (bench_toolbox's eval npz: the mean text length of the set the bench's metric is defined on).
    """

    higher_is_better = True
    per_sample = True

    def __init__(self, case: str, data: str, steps: int | None = None) -> None:
        with np.load(data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("charset", "text") if k in z.files}
            mean_len = float(z["mean_len"]) if "mean_len" in z.files else None
        self.scorer = nncf_side.Scorer(case, arrays, steps, mean_len)
        self.bounds = self.scorer.bounds  # exact: every score lies in it and the value is their mean

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        return self.scorer.scores(next(iter(outputs.values())), labels)


def make_metric(case: str, data: str, steps: int | None = None) -> CaseMetric:
    return CaseMetric(case, data, steps)


# --------------------------------------------------------------------------- machine state


def _busy_jiffies() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Foreign:
    """CPU used by other processes while the block runs, in cores (wall-time average)."""

    def __enter__(self) -> "Foreign":
        self.hz = os.sysconf("SC_CLK_TCK")
        self.busy, self.own, self.t = _busy_jiffies(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t
        busy = (_busy_jiffies() - self.busy) / self.hz
        self.cores = max(0.0, (busy - (_own_cpu() - self.own)) / wall) if wall > 0 else 0.0


def wait_quiet(max_wait: float, threshold: float = 0.3) -> dict[str, Any]:
    """Wait until other processes use < ``threshold`` cores over 2 s, at most ``max_wait`` s."""
    started = time.perf_counter()
    while True:
        with Foreign() as f:
            time.sleep(2.0)
        waited = time.perf_counter() - started
        if f.cores < threshold or waited >= max_wait:
            return {"waited_s": round(waited, 1), "foreign_cores_before": round(f.cores, 2)}


def code_state() -> dict[str, Any]:
    """The aaq commit and the files of aaq/ that differ from it (others edit the tree while benchmarks run)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirty_aaq_files": git("status", "--short", "--", "aaq").splitlines()}


def other_benchmarks() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    me = str(os.getpid())
    return [line.strip()[:160] for line in out if "bench_" in line and "ps -eo" not in line
            and not line.strip().startswith(me) and "bench_accuracy_aware" not in line]


# --------------------------------------------------------------------------- NNCF's environment


def ensure_nncf_venv() -> tuple[Path, dict[str, Any]]:
    """``benchmarks/out/venv-nncf`` with nncf 3.4.0 and this process's onnx / onnxruntime / numpy."""
    python = VENV / "bin" / "python"
    pins = [f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}"]
    info: dict[str, Any] = {"venv": str(VENV), "pins": [NNCF, *pins]}
    probe = ("import importlib.util, nncf, onnx, onnxruntime, numpy; "
             "print(nncf.__version__, onnx.__version__, onnxruntime.__version__, numpy.__version__, "
             "importlib.util.find_spec('torch') is not None)")
    if python.exists():
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                              env={**os.environ, "NNCF_CI": "1"})
        if done.returncode == 0:
            info["versions"] = done.stdout.split()
            if info["versions"][:4] == [NNCF.split("==")[1], onnx.__version__, ort.__version__, np.__version__]:
                return python, info
    # Check that the wheel exists and what it needs before installing anything.
    wheels = WORK / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", NNCF, "-d", str(wheels)],
                   check=True)
    wheel = next(wheels.glob("nncf-3.4.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    info["requires"] = [r for r in requires if "extra ==" not in r]
    if any(r.split()[0].lower().startswith("torch") for r in info["requires"]):
        raise SystemExit(f"{NNCF} requires torch ({info['requires']}): not installing it")
    log.info("creating %s (%s)", VENV, ", ".join(info["pins"]))
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel), *pins], check=True)
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "NNCF_CI": "1"})
    info["versions"] = done.stdout.split()
    if info["versions"][4] == "True":
        raise SystemExit("torch ended up in the NNCF venv")
    return python, info


# --------------------------------------------------------------------------- data, models, common measures


def bench_data(info: dict, out: Path, quick: bool) -> Path:
    """The case's npz written uncompressed, as both tools read it (with ``quick``: the first QUICK_EVAL
    evaluation samples and 100 calibration samples)."""
    case = info["case"]
    path = out / f"{case}.{'quick' if quick else 'full'}.npz"
    return realcases.cut(info, path, QUICK_EVAL[case], 100) if quick else realcases.cut(info, path)


def session(model: bytes | str, threads: int = 2, spinning: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def common_eval(model: Path, data: dict, scorer: nncf_side.Scorer, case: str, batch: int) -> dict[str, Any]:
    """The one evaluation every final model gets: the full evaluation set, this loop, this metric."""
    sess = session(str(model))
    name = str(data["input_names"][0])
    x, labels = data[f"x__{name}"], data[nncf_side.LABELS[case]]
    parts, steps = [], None
    started = time.perf_counter()
    for s in range(0, len(x), batch):
        logits = sess.run(None, {name: x[s:s + batch]})[0]
        steps = logits.shape[1] if logits.ndim == 3 else None
        parts.append(scorer.details(logits, labels[s:s + batch]))
    out = nncf_side.summarize(scorer, parts)
    out["seconds"] = time.perf_counter() - started
    out["steps"] = steps
    return out


def layer_census(path: Path) -> dict[str, int]:
    """Conv/Gemm/MatMul nodes, and those none of whose inputs comes from a DequantizeLinear (= float)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    layers = [n for n in graph.node if n.op_type in LAYER_OPS]
    quantized = [n for n in layers if any(producer.get(i) == "DequantizeLinear" for i in n.input)]
    return {"layers": len(layers), "float_layers": len(layers) - len(quantized)}


def latency(models: dict[str, Path], feed: dict[str, np.ndarray], rounds: int, threads: int, spinning: bool,
            warmup: int = 3) -> dict[str, Any]:
    """Median ms per batch of each model: every round runs each model once, the order rotating each round."""
    sessions = {k: session(str(p), threads, spinning) for k, p in models.items()}
    names = list(sessions)
    for _ in range(warmup):
        for k in names:
            sessions[k].run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in names}
    with Foreign() as f:
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                sessions[k].run(None, feed)
                times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_ms": med, "ms": times, "rounds": rounds, "foreign_cores": round(f.cores, 2),
            "batch": int(next(iter(feed.values())).shape[0])}


# --------------------------------------------------------------------------- the two tools


class EvalLog:
    """Instrumentation only: what each ``Engine.evaluate`` call was for (its progress label), samples, seconds."""

    def __enter__(self) -> "EvalLog":
        from aaq.engine.engine import Engine

        self.calls: list[dict[str, Any]] = []
        self._original = original = Engine.evaluate
        calls = self.calls

        def evaluate(engine, model, indices=None, *, stop=None, progress_desc=None):
            ev = original(engine, model, indices, stop=stop, progress_desc=progress_desc)
            calls.append({"what": progress_desc or "evaluate", "requested": int(ev.requested),
                          "done": int(len(ev.indices)), "inferred": int(ev.samples_inferred),
                          "seconds": float(ev.seconds), "complete": bool(ev.complete)})
            return ev

        Engine.evaluate = evaluate
        return self

    def __exit__(self, *exc: Any) -> None:
        from aaq.engine.engine import Engine

        Engine.evaluate = self._original

    def by_kind(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for c in self.calls:
            k = out.setdefault(c["what"], {"calls": 0, "inferred": 0, "seconds": 0.0})
            k["calls"] += 1
            k["inferred"] += c["inferred"]
            k["seconds"] = round(k["seconds"] + c["seconds"], 3)
        return out


@contextlib.contextmanager
def aaq_log(logfile: Path) -> Iterator[None]:
    """aaq's INFO log of one run into ``logfile`` (the console stays quiet), as the CLI would write it."""
    handler = logging.FileHandler(logfile, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    aaq_logger = logging.getLogger("aaq")
    aaq_logger.addHandler(handler)
    previous = aaq_logger.level
    aaq_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        aaq_logger.removeHandler(handler)
        aaq_logger.setLevel(previous)
        handler.close()


def engine_section(case: str, data: Path, steps: int | None) -> dict[str, Any]:
    """The engine of every aaq spec the benchmarks run: the case's data, its calibration set, the shared metric."""
    return {
        "type": "onnxruntime",
        "dataset": {"type": "npz", "path": str(data), "inputs": {"x": "x__x"}, "labels": nncf_side.LABELS[case]},
        "calibration_dataset": {"type": "npz", "path": str(data), "inputs": {"x": "calib__x"}},
        "metrics": [{"name": "metric", "type": "python", "factory": "bench_accuracy_aware:make_metric",
                     "kwargs": {"case": case, "data": str(data), "steps": steps}}],
        "batch_size": BATCH[case],
    }


def run_aaq(case: str, data: Path, model: Path, search: str, n_calib: int, ranking: int, steps: int | None,
            out: Path) -> dict[str, Any]:
    spec = {
        "model": {"name": f"{case}.aaq-{search}", "path": str(model)},
        "engine": engine_section(case, data, steps),
        "compression": {"algorithms": [
            {"name": "DefaultQuantization", "params": {"preset": "performance", "stat_subset_size": n_calib}},
            {"name": "AccuracyAwareQuantization",
             "params": {"maximal_drop": MAX_DROP, "drop_type": "absolute", "ranking_subset_size": ranking,
                        "search": search}},
        ]},
    }
    logfile = out / f"{case}.aaq-{search}.log"
    with aaq_log(logfile), EvalLog() as evals, Foreign() as f:
        started = time.perf_counter()
        result = aaq.Pipeline(spec, progress=False).run()
        wall = time.perf_counter() - started
    model_path = result.save(out / f"{case}.aaq-{search}")
    summary = result.algorithms[-1].summary
    ev = summary["evaluations"]
    history = [e.as_dict() for e in result.evaluations]
    return {
        "tool": f"aaq-{search}", "model": str(model_path), "wall_seconds": wall, "foreign_cores": round(f.cores, 2),
        "algorithm_seconds": {r.name: r.seconds for r in result.algorithms},
        "target_met_reported": result.target_met, "stop_reason": summary["stop_reason"],
        "metric_reported": summary["metrics"]["metric"],
        "groups_reverted": summary["groups_reverted"],
        "groups_total": summary["groups_quantized"] + summary["groups_reverted"],
        "reverted": [{"group": r["group"], "layers": r["layers"]} for r in summary["reverted"]],
        "evaluations": {"full": ev["full"], "full_stopped_early": ev["full_stopped_early"], "subset": ev["subset"],
                        "full_samples": ev["full_samples_inferred"], "subset_samples": ev["subset_samples_inferred"],
                        "seconds": ev["seconds"]},
        "samples_inferred": ev["samples_inferred"],
        "engine_history": {"records": len(history), "inferred": sum(int(h["inferred"]) for h in history)},
        "evaluate_calls": evals.by_kind(),
        "steps": summary["steps"], "rankings": summary["rankings"], "latency_reported": summary["latency"],
        "log": str(logfile),
    }


def run_nncf(python: Path, case: str, data: Path, model: Path, n_calib: int, ranking: int, steps: int | None,
             out: Path) -> dict[str, Any]:
    out_json, out_model = out / f"{case}.nncf.json", out / f"{case}.nncf.onnx"
    cmd = [str(python), str(HERE / "nncf_side.py"), "--case", case, "--model", str(model), "--data", str(data),
           "--out-model", str(out_model), "--out-json", str(out_json), "--log", str(out / f"{case}.nncf.log"),
           "--subset-size", str(n_calib), "--ranking-subset-size", str(ranking), "--max-drop", str(MAX_DROP),
           "--batch-size", str(BATCH[case])]
    if steps:
        cmd += ["--steps", str(steps)]
    with Foreign() as f:
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NNCF_CI": "1"})
    (out / f"{case}.nncf.stderr.txt").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"nncf_side.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(out_json.read_text())
    result["foreign_cores"] = round(f.cores, 2)
    result["tool"] = "nncf"
    return result


def opset13(model: Path, out: Path) -> Path:
    from onnx import version_converter

    path = out / f"{model.stem}.opset13.onnx"
    if not path.exists():
        onnx.save(version_converter.convert_version(onnx.load(str(model)), 13), str(path))
    return path


# --------------------------------------------------------------------------- one case


def run_case(case: str, args: argparse.Namespace, python: Path) -> dict[str, Any]:
    info = realcases.prepare(case, args.data_dir)
    data_path = bench_data(info, WORK, args.quick)
    data = nncf_side.realcases_eval.load(data_path)
    n_eval, n_calib = len(data["x__x"]), len(data["calib__x"])
    ranking = min(args.ranking_subset_size or (100 if args.quick else 300), n_eval)
    float_model = Path(info["model"])
    scorer0 = nncf_side.Scorer(case, data)
    probe = common_eval(float_model, {k: v[:1] if k.startswith("x__") or k in ("y", "text") else v
                                      for k, v in data.items()}, scorer0, case, BATCH[case])
    steps = probe["steps"]
    scorer = nncf_side.Scorer(case, data, steps)
    log.info("%s: %d eval, %d calib samples, ranking subset %d, metric bounds %s", case, n_eval, n_calib, ranking,
             tuple(round(b, 3) for b in scorer.bounds))
    float_eval = common_eval(float_model, data, scorer, case, BATCH[case])
    nncf_model = opset13(float_model, WORK) if args.nncf_model == "opset13" else float_model
    runs: dict[str, dict[str, Any]] = {}
    for tool in args.tools:
        quiet = wait_quiet(args.max_wait)
        log.info("%s: running %s (%s)", case, tool, quiet)
        if tool == "nncf":
            r = run_nncf(python, case, data_path, nncf_model, n_calib, ranking, steps, WORK)
        else:
            r = run_aaq(case, data_path, float_model, tool.split("-", 1)[1], n_calib, ranking, steps, WORK)
        r["quiet"] = quiet
        r["common_eval"] = common_eval(Path(r["model"]), data, scorer, case, BATCH[case])
        r["census"] = layer_census(Path(r["model"]))
        drop = float_eval["metric"] - r["common_eval"]["metric"]
        r["drop"] = drop
        r["met"] = drop <= MAX_DROP + 1e-12
        log.info("%s %s: %.1f s, drop %.4f, %s groups in float", case, tool, r["wall_seconds"], drop,
                 r["groups_reverted"])
        runs[tool] = r
    quiet = wait_quiet(args.max_wait)
    models = {"float": float_model, **{t: Path(r["model"]) for t, r in runs.items()}}
    feed = {"x": data["x__x"][:BATCH[case]]}
    lat: dict[str, Any] = {"quiet": quiet}
    for setting, (threads, spinning) in LATENCY_SETTINGS.items():
        lat[setting] = latency(models, feed, args.rounds, threads, spinning)
    for t, r in runs.items():
        r["latency_ratio"] = {setting: lat[setting]["median_ms"][t] / lat[setting]["median_ms"]["float"]
                              for setting in LATENCY_SETTINGS}
    return {"case": case, "n_eval": n_eval, "n_calib": n_calib, "ranking_subset_size": ranking,
            "data": str(data_path), "nncf_model": str(nncf_model), "metric_bounds": list(scorer.bounds),
            "float": float_eval, "float_census": layer_census(float_model), "runs": runs, "latency": lat}


# --------------------------------------------------------------------------- targets and table


def targets(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cases:
        runs = c["runs"]
        nncf = runs.get("nncf")
        for tool, r in runs.items():
            if tool == "nncf":
                continue
            t: dict[str, Any] = {f"faster_than_float ({setting})": ratio < 1.0
                                 for setting, ratio in r["latency_ratio"].items()}
            if nncf is not None:
                t["met_where_nncf_met"] = r["met"] or not nncf["met"]
                t["float_groups_le_nncf"] = r["groups_reverted"] <= nncf["groups_reverted"]
                t["wall_le_half_nncf"] = r["wall_seconds"] <= 0.5 * nncf["wall_seconds"]
                t["wall_ratio"] = r["wall_seconds"] / nncf["wall_seconds"]
            out[f"{c['case']}/{tool}"] = t
    return out


def table(cases: list[dict[str, Any]]) -> str:
    head = ["case", "tool", "met", "float", "final", "drop", "groups fp", "layers fp", "full ev", "subset ev",
            "samples", "wall s", *(f"lat {setting}" for setting in LATENCY_SETTINGS)]
    rows = []
    for c in cases:
        rows.append([c["case"], "float", "", f"{c['float']['metric']:.4f}", "", "", "",
                     f"{c['float_census']['float_layers']}/{c['float_census']['layers']}", "", "", "", "",
                     *(f"{c['latency'][setting]['median_ms']['float']:.1f} ms" for setting in LATENCY_SETTINGS)])
        for tool, r in c["runs"].items():
            e = r["evaluations"]
            full = f"{e['full']}" + (f" ({e['full_stopped_early']} early)" if e.get("full_stopped_early") else "")
            groups = f"{r['groups_reverted']}/{r.get('groups_total') or r.get('groups_ranked') or '-'}"
            rows.append([c["case"], tool, "yes" if r["met"] else "NO", f"{c['float']['metric']:.4f}",
                         f"{r['common_eval']['metric']:.4f}", f"{r['drop']:+.4f}", groups,
                         f"{r['census']['float_layers']}/{r['census']['layers']}", full, str(e["subset"]),
                         str(r["samples_inferred"]), f"{r['wall_seconds']:.1f}",
                         *(f"x{r['latency_ratio'][setting]:.2f}" for setting in LATENCY_SETTINGS)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) + " |"
            for r in rows]
    return "\n".join([line, sep, *body])


def breakdown(cases: list[dict[str, Any]]) -> str:
    """Where each tool's wall time goes (seconds)."""
    lines = ["| case | tool | wall | quantize (calib+QDQ) | float eval | quantized + full-set evals | ranking (subset) "
             "| other | foreign cores |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for tool, r in c["runs"].items():
            if tool == "nncf":
                e = r["evaluations"]
                quant = r["qwac_seconds"] - e["full_seconds"] - e["subset_seconds"]
                full, fl, rank = e["full_seconds"], None, e["subset_seconds"]
                other = r["wall_seconds"] - r["qwac_seconds"]
            else:
                calls = r["evaluate_calls"]
                quant = r["algorithm_seconds"].get("DefaultQuantization", 0.0)
                fl = calls.get("float model", {}).get("seconds", 0.0)
                full = calls.get("full set", {}).get("seconds", 0.0)
                rank = calls.get("ranking", {}).get("seconds", 0.0)
                other = r["wall_seconds"] - quant - sum(v["seconds"] for v in calls.values())
            fmt = lambda v: "(in full)" if v is None else f"{v:.1f}"
            lines.append(f"| {c['case']} | {tool} | {r['wall_seconds']:.1f} | {quant:.1f} | {fmt(fl)} | {full:.1f} | "
                         f"{rank:.1f} | {other:.1f} | {r['foreign_cores']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(realcases.CASES), choices=list(realcases.CASES))
    ap.add_argument("--tools", nargs="+", default=["nncf", "aaq-greedy", "aaq-bisection"],
                    choices=["nncf", "aaq-greedy", "aaq-bisection"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--nncf-model", choices=["opset13", "original"], default="opset13")
    ap.add_argument("--ranking-subset-size", type=int, help="default min(300, N); 100 with --quick")
    ap.add_argument("--max-wait", type=float, default=180.0)
    ap.add_argument("--data-dir", type=Path, default=realcases.DEFAULT_OUT)
    ap.add_argument("--json", type=Path, default=OUT / "bench_accuracy_aware.json", help="where to write the results")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (15 if args.quick else 21)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    WORK.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    others = other_benchmarks()
    if others:
        log.warning("other benchmark processes are running: %s", others)
    python, venv = ensure_nncf_venv() if "nncf" in args.tools else (None, {})
    cases = [run_case(case, args, python) for case in args.cases]
    met = targets(cases)
    report = {
        "quick": args.quick, "max_drop": MAX_DROP, "drop_type": "absolute", "latency_rounds": args.rounds,
        "nncf_model": args.nncf_model, "cases": cases, "targets": met, "nncf_env": venv,
        "other_benchmarks_at_start": others, "code": code_state(), "total_seconds": time.perf_counter() - started,
        "aaq_version": aaq.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))

    print(f"AccuracyAwareQuantization vs NNCF {NNCF.split('==')[1]} quantize_with_accuracy_control, maximal drop "
          f"{MAX_DROP} absolute{' (quick)' if args.quick else ''}; NNCF given the {args.nncf_model} model")
    print(table(cases))
    batches = ", ".join(f"{c['case']} {BATCH[c['case']]}" for c in cases)
    print("met: drop <= 0.01 by one common evaluation of each final model on the full evaluation set; "
          "groups fp: tool's own groups reverted / groups; layers fp: Conv/Gemm/MatMul without a DQ input; "
          "full ev (early: stopped early) / subset ev: evaluations; samples: samples inferred in evaluations; "
          f"lat: the float model's median ms per batch ({batches}) "
          f"and each final model's ratio to it ({args.rounds} interleaved rounds); 2t spin: 2 intra-op threads "
          f"with ONNX Runtime's default spinning; 2t no-spin: spinning off (aaq's engine default); 1t: one thread")
    print("where the time goes (s; aaq 'other' = AAQ's own latency check, model building, report; "
          "NNCF 'other' = data and model loading):")
    print(breakdown(cases))
    for key, t in met.items():
        parts = [f"{k}={'yes' if v else 'NO'}" if isinstance(v, bool) else f"{k}={v:.2f}" for k, v in t.items()]
        print(f"  {key}: " + ", ".join(parts))
    print(f"total {time.perf_counter() - started:.0f} s; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
