"""aaq's Tuning (``basic``, ``mse``, ``bayesian``, ``tpe``) vs Intel Neural Compressor 3.7.1's, side by side.

Issues 13 and 14's benchmark. For each real case (``ppocr_cls``, ``ppocr_rec``; see
``realcases.py``), with the same evaluation set (``x__x``), the same calibration
samples (all of ``calib__x``), the same per-sample metric (``nncf_side.Scorer``:
ppocr_cls top-1, ppocr_rec realcases_eval's corpus character accuracy), an
accuracy criterion of 0.01 absolute, objective ``performance``, exit policy
``timeout 0, max_trials 100``, on this machine, one run after the other:

* aaq (in this process): ``aaq.Pipeline(spec, progress=False).run()`` with one
  algorithm, ``Tuning`` (``strategy.name`` basic / mse; the spec in ``aaq_spec``).
  When this checkout has no ``Tuning`` algorithm (``"Tuning" not in
  aaq.algorithms.base.algorithms``) its rows say "not available in this checkout"
  and INC's rows are still measured and written.
* INC 3.7.1 (ONNX Runtime backend) in its own virtual environment
  (``benchmarks/out/venv-inc``, created here: the wheel, ``onnx<=1.18``, ``numpy<2``,
  ``six`` and this process's onnxruntime), as a subprocess running ``inc_side.py``:
  ``quantization.fit`` with ``PostTrainingQuantConfig(backend="default",
  approach="static", quant_format="QDQ", quant_level=1)`` and
  ``TuningCriterion(strategy=...)``, ``AccuracyCriterion(criterion="absolute",
  tolerable_loss=0.01)``; its ``eval_func`` counts the full evaluations. INC's
  ONNX path writes per-channel DequantizeLinear only from opset 13, so it gets
  the model converted to opset 13 with ``onnx.version_converter``, which is what
  aaq does internally.

Measured per case and tool: criterion met (by ONE common evaluation of each final
model on the full evaluation set here, the same loop for every model), float and
final metric, ops in float (Conv/Gemm/MatMul nodes none of whose inputs is a
DequantizeLinear output, counted the same way in every model), full evaluations
(aaq: ``Engine.evaluate`` calls over the whole evaluation set; INC: ``eval_func``
calls, its float baseline included), wall time (aaq: the ``Pipeline.run`` call;
INC: data and model loading plus the ``fit`` call, not the interpreter start or
imports), and the final model's batch latency against float (median of
interleaved rounds on a fixed batch, the same SessionOptions for every model: 2
intra-op threads without spinning, and 1 thread).

Measured so far (``--quick``, 2 cores shared with other developers' work, 2026-12-01):
on ppocr_cls INC ``basic`` met the criterion with every layer int8 after 27 full
evaluations in 522 s (x1.26 float's latency on 2 threads, x1.07 on 1); INC ``mse``
returned no model: its fit logged ``AssertionError('no quantized Clip@0 in the
graph')`` (``mse_impact_lst`` -> ``inspect_tensor`` -> ``ox_utils/calibration.py
augment_graph``) after 6 evaluations. On ppocr_rec (120 evaluation, 100 calibration
samples; about 1.5 other cores' load; the whole run 71 min) every INC run hit its
750 s limit without a passing trial: ``basic`` 5 trials (best 0.9571 vs float
1.0000), ``mse`` 5 trials (0.9552; it got past the step that failed on ppocr_cls),
``bayesian`` 9 of 30 trials (0.4385); aaq's ``basic`` / ``mse`` / ``bayesian`` /
``tpe`` all met it with no accuracy fallback (drops 0.0070 / 0.0000 / 0.0000 / 0.0006)
in 194 / 192 / 399 / 614 s, so their wall-time ratios to INC (<= 0.26 / 0.26 / 0.54 /
0.82) are upper bounds. aaq on ppocr_cls again (aaq's rows only): ``basic`` with
``latency_aware`` off kept every layer int8 as INC does (0 ops in float, drop 0.0067,
4 full evaluations, 15 s, x0.89 / x0.86 float's latency), with the default
``measure`` it kept 26 layers in float for speed (x0.80 / x0.72). The README's tuning
tables have every row.

Targets (the issue), per strategy: criterion met wherever INC meets it; ops in
float <= INC's; full evaluations <= INC's; wall time <= 0.2 x INC's; the result's
latency <= INC's. Ops in float are counted twice over: as accuracy fallbacks (aaq:
the best config's ``fallback``; INC: every float layer) and kept for speed (aaq's
``latency_aware: "measure"``: kinds of layer timed faster in float on this machine).

The model-based strategies (issue 14): aaq ``bayesian`` and ``tpe``, and
``gp-optuna`` (aaq's loop with Optuna's ``GPSampler`` as the strategy, run by
``optuna_gp_side.py`` in ``benchmarks/out/venv-gp``, created here with Optuna and
torch: the reference aaq's own GP is compared with), ``objective: performance``,
``max_trials`` 30 and a timeout of an hour (so that a passing config does not end the
run), over weight per_channel / per_tensor x activation sym / asym x minmax / kl /
percentile x calibration sizes 50 / 100 (24 configs: aaq sets them model-wise, INC
per op from the same choices, which are its ONNX Runtime defaults); INC's
``bayesian`` (and ``tpe``, which INC 3.7.1 no longer ships as a working strategy)
with the same trial limit and INC's ``timeout`` set to the hard limit below. Measured:
the best objective found within the criterion (the final model's latency against
float in the common interleaved rounds), the trial that gave it, wall time.
Targets: at least as good an objective as INC in <= 0.3 x its wall time; aaq's
``bayesian`` at least as good as ``gp-optuna`` in as many trials.

Bounds: every INC run has a hard wall-time limit (``INC_LIMIT`` per case, or
``--inc-limit``): at the limit the benchmark sends INC's process SIGINT, which INC's
``fit`` catches to return its best model so far (a model only if a trial met the
criterion); ``INC_GRACE`` s later it is killed. The row then says what INC reached:
trials (its log), its best trial's metric on the same evaluation set, met or not,
seconds. A row stopped so is "not met within N s (k trials)", and the wall-time ratio
aaq / INC against it is an upper bound (``targets``: ``inc_stopped_at_limit``). INC's
own ``TuningCriterion(timeout, max_trials)`` are set too (basic / mse: 0 and 100, as
aaq's; bayesian / tpe: the limit and 30), but INC 3.7.1 never compares its timeout
with the clock (the check is commented out in ``strategy/strategy.py``): a non-zero
timeout only means "go on past the first passing config", so only ``max_trials`` and
the hard limit bound its runs. aaq's rows are not bounded. Both tools get the same
evaluation set (``--quick``'s subsets below), so the evaluation-set size is the same
for both.

Usage:  python benchmarks/bench_tuning.py [--cases ppocr_cls ppocr_rec] [--quick]
                [--tools inc-basic inc-mse inc-bayesian inc-tpe aaq-basic aaq-mse aaq-bayesian aaq-tpe gp-optuna]
                [--tools ... aaq-basic+int8] [--inc-limit SECONDS] [--max-wait SECONDS] [--json PATH]
        ``aaq-basic+int8``: the row "aaq basic (latency_aware off)", ``base_params: {"latency_aware": "off"}``.
        ``--quick``: the first 300 (cls) / 120 (rec) evaluation samples and 100 calibration
        samples (bench_accuracy_aware's subsets), 15 latency rounds.
Writes benchmarks/out/bench_tuning.json (or --json), and models, logs under benchmarks/out/bench_tuning/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import aaq  # noqa: E402
from aaq.algorithms.base import algorithms  # noqa: E402
import bench_accuracy_aware as common  # noqa: E402  (data subsets, common evaluation, census, latency, metric)
import nncf_side  # noqa: E402
import realcases  # noqa: E402

OUT = HERE / "out"
WORK = OUT / "bench_tuning"
VENV = OUT / "venv-inc"
INC = "neural-compressor==3.7.1"
INC_PINS = ["onnx<=1.18", "numpy<2", "six"]
BATCH = common.BATCH
MAX_DROP = 0.01
STRATEGIES = ("basic", "mse")
MODEL_BASED = ("bayesian", "tpe")
TOOLS = ([f"inc-{s}" for s in STRATEGIES + MODEL_BASED] + [f"aaq-{s}" for s in STRATEGIES + MODEL_BASED]
         + ["gp-optuna", "aaq-basic+int8"])
LABELS = {"aaq-basic+int8": "aaq basic (latency_aware off)"}
"""The table's name of a tool whose command-line name says less: ``aaq-basic+int8`` is ``basic`` with
``base_params: {"latency_aware": "off"}`` (every layer int8 unless a fallback puts it in float, as INC)."""
MB_TRIALS = 30
MB_SAMPLING = [50, 100]
MB_ALGORITHMS = ["minmax", "kl", "percentile"]
"""The model-based runs' space: INC's ONNX Runtime choices (weight per_channel / per_tensor, activation sym /
asym and minmax / kl / percentile) and two calibration sizes; aaq sets them model-wise, INC per op."""
MB_TIMEOUT = 3600  # aaq's model-based runs: the timeout only keeps them going past the first passing config
INC_LIMIT = {"ppocr_cls": 1500, "ppocr_rec": 750}
"""The hard limit (seconds of the subprocess) of each INC run (``--inc-limit`` overrides it): at the limit the
benchmark sends SIGINT, which INC's ``fit`` catches to return its best model so far (None if no trial met the
criterion), and ``inc_side.py`` records what the trials reached; one INC trial on ppocr_rec takes minutes, and
its basic would fall back op by op over 47 layers for hours. It is also INC's own TuningCriterion ``timeout`` for
bayesian / tpe (basic / mse keep INC's 0: stop at the first config that meets the criterion), but INC 3.7.1 never
compares that timeout with the clock (the check is commented out in ``strategy/strategy.py``): only 0 or not
matters, and ``max_trials`` (100; 30 for bayesian / tpe) is the bound INC itself keeps."""
INC_GRACE = 240
"""Seconds INC gets after the SIGINT to return and write its JSON (it may re-quantize its best config) before
SIGKILL; then the row holds only what INC's log says (trials, best so far)."""
VENV_GP = OUT / "venv-gp"
GP_PINS = ["optuna==5.0.0", "torch"]
LATENCY_SETTINGS = {"2t": (2, False), "1t": (1, False)}
NOT_AVAILABLE = "not available in this checkout"

log = logging.getLogger("bench_tuning")


def aaq_available() -> bool:
    return "Tuning" in algorithms


def aaq_spec(case: str, data: Path, model: Path, strategy: str, steps: int | None) -> dict[str, Any]:
    """The spec of aaq's side: Tuning alone (it runs its base algorithm first), INC's criterion and exit policy."""
    return {
        "model": {"name": f"{case}.aaq-{strategy}", "path": str(model)},
        "engine": common.engine_section(case, data, steps),
        "compression": {"algorithms": [
            {"name": "Tuning", "params": tuning_params(strategy)},
        ]},
    }


def tuning_params(strategy: str) -> dict[str, Any]:
    """basic / mse: INC's criterion, timeout 0 and 100 trials; the model-based ones: 30 trials over MB's space."""
    name, _, variant = strategy.partition("+")
    params: dict[str, Any] = {"strategy": {"name": name}, "accuracy_criterion": {"absolute": MAX_DROP},
                              "objective": "performance", "exit_policy": {"timeout": 0, "max_trials": 100}}
    if variant == "int8":  # the same run with every layer int8: do the layers kept float for speed pay?
        params["base_params"] = {"latency_aware": "off"}
    if strategy in MODEL_BASED or strategy == "optuna_gp":
        params["exit_policy"] = {"timeout": MB_TIMEOUT, "max_trials": MB_TRIALS}
        params["calibration"] = {"sampling_size": MB_SAMPLING}
        params["tuning_space"] = {"model_wise": {"activation": {"algorithm": MB_ALGORITHMS}}}
    return params


# --------------------------------------------------------------------------- INC's environment


def ensure_inc_venv() -> tuple[Path, dict[str, Any]]:
    """``benchmarks/out/venv-inc`` with INC 3.7.1, its pins and this process's onnxruntime."""
    python = VENV / "bin" / "python"
    pins = [*INC_PINS, f"onnxruntime=={ort.__version__}"]
    info: dict[str, Any] = {"venv": str(VENV), "pins": [INC, *pins]}
    probe = ("import neural_compressor, onnx, onnxruntime, numpy; "
             "print(neural_compressor.__version__, onnx.__version__, onnxruntime.__version__, numpy.__version__)")
    if python.exists():
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if done.returncode == 0:
            info["versions"] = done.stdout.split()
            if info["versions"][0] == INC.split("==")[1] and info["versions"][2] == ort.__version__:
                return python, info
    log.info("creating %s (%s)", VENV, ", ".join(info["pins"]))
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", INC, *pins], check=True)
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"INC does not import in {VENV}:\n{done.stderr[-2000:]}")
    info["versions"] = done.stdout.split()
    return python, info


# --------------------------------------------------------------------------- the two tools


def run_inc(python: Path, case: str, strategy: str, data: Path, model: Path, steps: int | None,
            out: Path, limit: float) -> dict[str, Any]:
    stem = out / f"{case}.inc-{strategy}"
    cmd = [str(python), str(HERE / "inc_side.py"), "--case", case, "--model", str(model), "--data", str(data),
           "--strategy", strategy, "--out-model", f"{stem}.onnx", "--out-json", f"{stem}.json",
           "--log", f"{stem}.log", "--batch-size", str(BATCH[case]), "--max-drop", str(MAX_DROP)]
    if steps:
        cmd += ["--steps", str(steps)]
    bound: dict[str, Any] = {"hard_limit_s": limit, "inc_timeout": 0, "max_trials": 100}
    if strategy in MODEL_BASED:
        bound.update(inc_timeout=limit, max_trials=MB_TRIALS)
        cmd += ["--sampling-sizes", *map(str, MB_SAMPLING)]
    cmd += ["--timeout", str(bound["inc_timeout"]), "--max-trials", str(bound["max_trials"])]
    Path(f"{stem}.json").unlink(missing_ok=True)  # a JSON left by an earlier run must not pass for this one's
    started = time.perf_counter()
    with common.Foreign() as f, open(f"{stem}.stderr.txt", "w") as err:
        # INC writes its nc_workspace/ into the working directory: keep it under out/
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=out)
        stop = stop_at_limit(proc, limit)
    bound["stopped"] = stop
    log_trials = inc_trials(Path(f"{stem}.log"))
    if stop == "finished" and proc.returncode != 0:
        raise RuntimeError(f"inc_side.py failed ({proc.returncode}):\n{Path(f'{stem}.stderr.txt').read_text()[-3000:]}")
    if stop == "killed" or not Path(f"{stem}.json").exists():
        return {"tool": f"inc-{strategy}", "found": False, "killed": stop == "killed", "bound": bound,
                "wall_seconds": time.perf_counter() - started, "evaluations": {"full": None},
                "note": f"killed {INC_GRACE} s after SIGINT at {limit:.0f} s" if stop == "killed"
                else f"inc_side.py exited {proc.returncode} without a JSON: see {stem}.stderr.txt",
                "trial_log": log_trials, "foreign_cores": round(f.cores, 2)}
    result = json.loads(Path(f"{stem}.json").read_text())
    result["foreign_cores"] = round(f.cores, 2)
    result["trial_log"] = log_trials
    result["bound"] = bound
    return result


def stop_at_limit(proc: subprocess.Popen, limit: float) -> str:
    """Wait for ``proc``; at ``limit`` s send SIGINT, INC_GRACE s later SIGKILL. Says which of the three it took."""
    try:
        proc.wait(timeout=limit)
        return "finished"
    except subprocess.TimeoutExpired:
        log.warning("INC reached the %.0f s limit: SIGINT (pid %d)", limit, proc.pid)
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=INC_GRACE)
        return "sigint"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed"


TUNE_LINE = re.compile(r"Tune (\d+) result is: (.*?), Best tune result is: (.*)$")


def inc_trials(log_path: Path) -> dict[str, Any]:
    """From INC's log: trials run, and the trial whose result is the final best (INC's TuningLogger lines)."""
    if not log_path.exists():
        return {"trials": 0, "best_trial": None}
    rows = [m.groups() for line in log_path.read_text(errors="replace").splitlines()
            if (m := TUNE_LINE.search(line))]
    if not rows:
        return {"trials": 0, "best_trial": None}
    final = rows[-1][2].strip()
    best = next((int(n) for n, _, b in rows if b.strip() == final), None) if final != "n/a" else None
    return {"trials": int(rows[-1][0]), "best_trial": best, "best": final}


# --------------------------------------------------------------------------- Optuna's GPSampler (with torch)


def ensure_gp_venv() -> Path:
    """``benchmarks/out/venv-gp``: Optuna and torch (several GB with its CUDA wheels) and aaq's dependencies."""
    python = VENV_GP / "bin" / "python"
    probe = "import torch, optuna, onnx, onnxruntime, scipy, jsonschema, tqdm; optuna.samplers.GPSampler"
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return python
    log.info("creating %s (%s)", VENV_GP, ", ".join(GP_PINS))
    subprocess.run([sys.executable, "-m", "venv", str(VENV_GP)], check=True)
    pins = [*GP_PINS, f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}",
            "scipy", "jsonschema", "tqdm"]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    return python


def landscape(out: Path) -> Path:
    """Every config of a 24-config space on the tests' tiny MLP (``exhaustive``, ``objective: accuracy``): the
    recorded landscape the strategies are replayed on (``optuna_gp_side.py --replay``)."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import MLP_SPACE, mlp_case, tuning_spec  # the tests' tiny case builders

    root = out / "mlp"
    root.mkdir(parents=True, exist_ok=True)
    mlp_case(root)
    params = {**MLP_SPACE, "strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 0.02},
              "objective": "accuracy", "exit_policy": {"timeout": 3600, "max_trials": 0}}
    summary = aaq.Pipeline(tuning_spec(root, params), progress=False).run().algorithms[-1].summary
    path = out / "mlp.landscape.json"
    path.write_text(json.dumps({"tuning_space": MLP_SPACE["tuning_space"],
                                "sampling_sizes": MLP_SPACE["calibration"]["sampling_size"], "objective": "accuracy",
                                "float": next(iter(summary["float"].values())), "allowed": 0.02,
                                "trials": summary["trials"]}))
    return path


def replay_samplers(out: Path, seeds: int = 20) -> dict[str, Any]:
    """aaq's bayesian, Optuna's GPSampler, tpe and random on the recorded landscape, ``seeds`` seeds each."""
    python = ensure_gp_venv()
    table = landscape(out)
    result = out / "mlp.replay.json"
    done = subprocess.run([str(python), str(HERE / "optuna_gp_side.py"), "--replay", str(table), "--out-json",
                           str(result), "--seeds", str(seeds)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"optuna_gp_side.py --replay failed:\n{done.stderr[-3000:]}")
    trials = json.loads(table.read_text())["trials"]
    return {"configs": len(trials), "passing": sum(t["passed"] for t in trials), "seeds": seeds,
            "strategies": json.loads(result.read_text())}


def run_gp_optuna(case: str, data: Path, model: Path, steps: int | None, out: Path) -> dict[str, Any]:
    python = ensure_gp_venv()
    spec = aaq_spec(case, data, model, "optuna_gp", steps)
    stem = out / f"{case}.gp-optuna"
    Path(f"{stem}.spec.json").write_text(json.dumps(spec))
    cmd = [str(python), str(HERE / "optuna_gp_side.py"), "--spec", f"{stem}.spec.json", "--out-json",
           f"{stem}.json", "--out-dir", str(stem), "--log", f"{stem}.log"]
    with common.Foreign() as f:
        done = subprocess.run(cmd, capture_output=True, text=True)
    Path(f"{stem}.stderr.txt").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"optuna_gp_side.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(Path(f"{stem}.json").read_text())
    result["foreign_cores"] = round(f.cores, 2)
    return result


def run_aaq(case: str, strategy: str, data: Path, model: Path, steps: int | None, n_eval: int,
            out: Path) -> dict[str, Any]:
    spec = aaq_spec(case, data, model, strategy, steps)
    logfile = out / f"{case}.aaq-{strategy}.log"
    with common.aaq_log(logfile), common.EvalLog() as evals, common.Foreign() as f:
        started = time.perf_counter()
        result = aaq.Pipeline(spec, progress=False).run()
        wall = time.perf_counter() - started
    model_path = result.save(out / f"{case}.aaq-{strategy}")
    full = [c for c in evals.calls if c["requested"] == n_eval]
    return {
        "tool": f"aaq-{strategy}", "model": str(model_path), "found": True, "wall_seconds": wall,
        "foreign_cores": round(f.cores, 2), "target_met_reported": result.target_met,
        "algorithm_seconds": {r.name: r.seconds for r in result.algorithms},
        # a full evaluation: an Engine.evaluate call over the whole evaluation set (stopped early or not)
        "evaluations": {"full": len(full), "full_complete": sum(c["complete"] for c in full),
                        "full_seconds": sum(c["seconds"] for c in full),
                        "full_samples": sum(c["inferred"] for c in full),
                        "subset": len(evals.calls) - len(full)},
        "evaluate_calls": evals.by_kind(), "summary": result.algorithms[-1].summary, "log": str(logfile),
    }


# --------------------------------------------------------------------------- one case


def run_case(case: str, args: argparse.Namespace, python: Path | None,
             on_tool: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every tool of ``args.tools`` on ``case``, then the common latency rounds; ``on_tool`` gets the case's rows
    so far after each tool (the benchmark writes them, so that a stopped run keeps what it measured)."""
    info = realcases.prepare(case, args.data_dir)
    data_path = common.bench_data(info, WORK, args.quick)
    data = nncf_side.realcases_eval.load(data_path)
    n_eval, n_calib = len(data["x__x"]), len(data["calib__x"])
    float_model = Path(info["model"])
    probe = common.common_eval(float_model, {k: v[:1] if k.startswith("x__") or k in ("y", "text") else v
                                             for k, v in data.items()}, nncf_side.Scorer(case, data), case, 1)
    steps = probe["steps"]
    scorer = nncf_side.Scorer(case, data, steps)
    float_eval = common.common_eval(float_model, data, scorer, case, BATCH[case])
    log.info("%s: %d eval, %d calib samples; float %.4f", case, n_eval, n_calib, float_eval["metric"])
    inc_model = common.opset13(float_model, WORK)
    runs: dict[str, dict[str, Any]] = {}
    for tool in args.tools:
        kind, strategy = tool.split("-", 1)
        if kind == "aaq" and not aaq_available():
            runs[tool] = {"tool": tool, "available": False, "note": NOT_AVAILABLE}
            continue
        quiet = common.wait_quiet(args.max_wait)
        log.info("%s: running %s (%s)", case, tool, quiet)
        try:
            if kind == "inc":
                r = run_inc(python, case, strategy, data_path, inc_model, steps, WORK,
                            args.inc_limit or INC_LIMIT[case])
            elif kind == "gp":
                r = run_gp_optuna(case, data_path, float_model, steps, WORK)
            else:
                r = run_aaq(case, strategy, data_path, float_model, steps, n_eval, WORK)
        except Exception as exc:  # one tool failing must not lose the others' rows
            log.error("%s %s failed: %s", case, tool, exc)
            runs[tool] = {"tool": tool, "available": True, "error": str(exc)[-2000:]}
            continue
        r["available"], r["quiet"] = True, quiet
        if r.get("found"):
            r["common_eval"] = common.common_eval(Path(r["model"]), data, scorer, case, BATCH[case])
            r["census"] = census(Path(r["model"]), r.get("summary"))
            r["drop"] = float_eval["metric"] - r["common_eval"]["metric"]
            r["met"] = r["drop"] <= MAX_DROP + 1e-12
        else:
            r["met"] = False
        log.info("%s %s: %.1f s, %s full evaluations, drop %s", case, tool, r["wall_seconds"],
                 r["evaluations"].get("full"), f"{r['drop']:.4f}" if "drop" in r else "-")
        runs[tool] = r
        if on_tool:
            on_tool({"case": case, "n_eval": n_eval, "n_calib": n_calib, "float": float_eval, "runs": runs,
                     "partial": True})
    models = {"float": float_model, **{t: Path(r["model"]) for t, r in runs.items() if r.get("common_eval")}}
    lat: dict[str, Any] = {"quiet": common.wait_quiet(args.max_wait)}
    feed = {"x": data["x__x"][:BATCH[case]]}
    for setting, (threads, spinning) in LATENCY_SETTINGS.items():
        lat[setting] = common.latency(models, feed, args.rounds, threads, spinning)
    for t, r in runs.items():
        if t in models:
            r["latency_ratio"] = {s: lat[s]["median_ms"][t] / lat[s]["median_ms"]["float"] for s in LATENCY_SETTINGS}
    return {"case": case, "n_eval": n_eval, "n_calib": n_calib, "data": str(data_path), "inc_model": str(inc_model),
            "float": float_eval, "float_census": common.layer_census(float_model), "runs": runs, "latency": lat}


# --------------------------------------------------------------------------- targets and table


def census(path: Path, summary: dict[str, Any] | None) -> dict[str, int]:
    """Conv/Gemm/MatMul nodes, those in float (no DequantizeLinear input), split by why they are float.

    ``float_accuracy``: layers the tuning fell back for accuracy (aaq: the best config's ``fallback``;
    INC: every float layer, since INC keeps layers in float only as fallbacks); ``float_speed``: the rest,
    for aaq the layers DefaultQuantization's ``latency_aware`` measured faster in float on this machine.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    layers = [n for n in graph.node if n.op_type in common.LAYER_OPS]
    floats = [n.name for n in layers if not any(producer.get(i) == "DequantizeLinear" for i in n.input)]
    fallback = None if summary is None else set(summary.get("best", {}).get("config", {}).get("fallback", []))
    accuracy = [n for n in floats if fallback is None or n in fallback]
    return {"layers": len(layers), "float_layers": len(floats), "float_accuracy": len(accuracy),
            "float_speed": len(floats) - len(accuracy)}


def trials_of(run: dict[str, Any]) -> tuple[Any, Any]:
    """(trials run, the trial that gave the result): aaq from its summary, INC from its tuning log."""
    summary = run.get("summary")
    if summary:
        return len(summary["trials"]), summary["best"]["trial"]
    log_trials = run.get("trial_log") or {}
    return log_trials.get("trials"), log_trials.get("best_trial")


def stopped_at_limit(run: dict[str, Any]) -> bool:
    return (run.get("bound") or {}).get("stopped") in ("sigint", "killed")


def _usable(run: dict[str, Any] | None) -> bool:
    return bool(run) and run.get("available", True) and "error" not in run


def targets(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cases:
        for strategy in STRATEGIES:
            mine, theirs = c["runs"].get(f"aaq-{strategy}"), c["runs"].get(f"inc-{strategy}")
            key = f"{c['case']}/{strategy}"
            if not _usable(mine) or not _usable(theirs):
                out[key] = {"compared": False, "why": (mine or {}).get("note") or "a side is missing or failed"}
                continue
            t: dict[str, Any] = {"compared": True, "met_where_inc_met": mine["met"] or not theirs["met"]}
            if mine.get("census") and theirs.get("census"):
                t["float_ops_le_inc"] = mine["census"]["float_layers"] <= theirs["census"]["float_layers"]
                t["accuracy_fallbacks_le_inc"] = (mine["census"]["float_accuracy"]
                                                  <= theirs["census"]["float_accuracy"])
            if theirs["evaluations"].get("full") is not None:  # None: INC was killed before it counted them
                t["full_evals_le_inc"] = mine["evaluations"]["full"] <= theirs["evaluations"]["full"]
            t["wall_ratio"] = mine["wall_seconds"] / theirs["wall_seconds"]
            t["wall_le_0.2_inc"] = t["wall_ratio"] <= 0.2
            # INC stopped at its limit: its wall time and evaluations are what it had spent by then, so the
            # wall ratio is an upper bound on aaq / INC and INC's evaluation count a lower bound on its own
            t["inc_stopped_at_limit"] = stopped_at_limit(theirs)
            if mine.get("latency_ratio") and theirs.get("latency_ratio"):
                for s in LATENCY_SETTINGS:
                    t[f"latency_le_inc ({s})"] = mine["latency_ratio"][s] <= theirs["latency_ratio"][s]
            out[key] = t
        mine, int8 = c["runs"].get("aaq-basic"), c["runs"].get("aaq-basic+int8")
        if _usable(mine) and _usable(int8) and mine.get("latency_ratio") and int8.get("latency_ratio"):
            out[f"{c['case']}/float-for-speed pays"] = {
                f"aaq-basic faster than all-int8 ({s})": mine["latency_ratio"][s] < int8["latency_ratio"][s]
                for s in LATENCY_SETTINGS}
        for strategy in MODEL_BASED:
            mine = c["runs"].get(f"aaq-{strategy}")
            for other in ("inc-bayesian", "inc-tpe", *(("gp-optuna",) if strategy == "bayesian" else ())):
                theirs = c["runs"].get(other)
                key = f"{c['case']}/aaq-{strategy} vs {other}"
                if not _usable(mine) or not _usable(theirs):
                    out[key] = {"compared": False, "why": "a side is missing or failed"}
                    continue
                t = {"compared": True, "met_where_other_met": mine["met"] or not theirs["met"]}
                if mine.get("latency_ratio") and theirs.get("latency_ratio"):
                    for s in LATENCY_SETTINGS:
                        t[f"objective_as_good ({s})"] = mine["latency_ratio"][s] <= theirs["latency_ratio"][s]
                        t[f"objective_within_3pct ({s})"] = mine["latency_ratio"][s] <= theirs["latency_ratio"][s] * 1.03
                elif mine["met"]:
                    t["objective_as_good"] = "the other found no model within the criterion"
                mine_at, theirs_at = trials_of(mine)[1], trials_of(theirs)[1]
                if mine_at is not None and theirs_at is not None:
                    t["trials_to_result_le_other"] = mine_at <= theirs_at
                t["wall_ratio"] = mine["wall_seconds"] / theirs["wall_seconds"]
                if other.startswith("inc-"):
                    t["wall_le_0.3_inc"] = t["wall_ratio"] <= 0.3
                    t["inc_stopped_at_limit"] = stopped_at_limit(theirs)
                out[key] = t
    return out


def table(cases: list[dict[str, Any]]) -> str:
    head = ["case", "tool", "met", "final", "drop", "fp acc", "fp speed", "trials", "result at", "full ev", "wall s",
            *(f"lat {s}" for s in LATENCY_SETTINGS), "bounded"]
    rows = []
    for c in cases:
        rows.append([c["case"], "float", "", f"{c['float']['metric']:.4f}", "",
                     f"{c['float_census']['float_layers']}/{c['float_census']['layers']}", "", "", "", "", "",
                     *(f"{c['latency'][s]['median_ms']['float']:.1f} ms" for s in LATENCY_SETTINGS), ""])
        for tool, r in c["runs"].items():
            if not _usable(r):
                rows.append([c["case"], LABELS.get(tool, tool), r.get("note") or f"failed: {r['error'].splitlines()[-1][:60]}",
                             *[""] * (len(head) - 3)])
                continue
            final, cen = r.get("common_eval"), r.get("census") or {}
            ran, at = trials_of(r)
            bounded = bound_text(r)
            full = r["evaluations"].get("full")
            rows.append([c["case"], LABELS.get(tool, tool), "yes" if r["met"] else "NO",
                         f"{final['metric']:.4f}" if final else _none_found(r), f"{r['drop']:+.4f}" if final else "",
                         f"{cen['float_accuracy']}/{cen['layers']}" if final else "",
                         f"{cen['float_speed']}" if final else "", "" if ran is None else str(ran),
                         "" if at is None else str(at), "" if full is None else str(full), f"{r['wall_seconds']:.1f}",
                         *(f"x{r['latency_ratio'][s]:.2f}" if r.get("latency_ratio") else "" for s in LATENCY_SETTINGS),
                         bounded])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.rjust(w) if 2 < i < len(head) - 1 else v.ljust(w)
                              for i, (v, w) in enumerate(zip(r, widths))) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def bound_text(run: dict[str, Any]) -> str:
    """INC's bounds and how its run ended: within them, stopped by SIGINT at the hard limit, or killed."""
    bound = run.get("bound")
    if not bound:
        return ""
    limits = f"{bound['hard_limit_s']:.0f} s, {bound['max_trials']} trials"
    ended = {"finished": "ended within them", "sigint": f"stopped by SIGINT at {bound['hard_limit_s']:.0f} s",
             "killed": f"killed {INC_GRACE} s after SIGINT"}[bound["stopped"]]
    return f"{limits}: {ended}"


def _none_found(run: dict[str, Any]) -> str:
    """What a run that returned no model says: not met within its bound (and the best trial INC's own evaluation
    scored), or the exception INC's fit caught and logged before it returned None."""
    bound = run.get("bound") or {}
    if bound.get("stopped") in ("sigint", "killed"):
        ran = (run.get("trial_log") or {}).get("trials")
        best = run.get("best_trial_metric")
        return (f"not met within {bound['hard_limit_s']:.0f} s ({ran} trials"
                + (f"; best {best:.4f} vs float {run['baseline']:.4f}" if best is not None else "") + ")")
    errors = [e for e in run.get("errors", []) if "Unexpected exception" in e]
    return f"none found ({errors[0].split('exception ', 1)[1][:70]})" if errors else "none found"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(realcases.CASES), choices=list(realcases.CASES))
    ap.add_argument("--tools", nargs="+", default=TOOLS, choices=TOOLS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--inc-limit", type=float, help="hard limit in seconds of each INC run (default: INC_LIMIT "
                    "per case, %s); INC is sent SIGINT there and returns its best so far" % INC_LIMIT)
    ap.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet machine before a run")
    ap.add_argument("--data-dir", type=Path, default=realcases.DEFAULT_OUT)
    ap.add_argument("--json", type=Path, default=OUT / "bench_tuning.json", help="where to write the results")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (15 if args.quick else 21)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    WORK.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    venv: dict[str, Any] = {}
    python = None
    if any(t.startswith("inc-") for t in args.tools):
        try:
            python, venv = ensure_inc_venv()
        except Exception as exc:  # say why, keep the harness working for aaq alone
            log.error("INC is not usable here: %s", exc)
            venv = {"error": str(exc)[-3000:]}
            args.tools = [t for t in args.tools if not t.startswith("inc-")]
    if not aaq_available():
        log.warning("Tuning is %s: aaq's rows are placeholders", NOT_AVAILABLE)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cases: list[dict[str, Any]] = []
    def write(done: list[dict[str, Any]], partial: dict[str, Any] | None = None) -> dict[str, Any]:
        met = targets(done)
        report = {
            "quick": args.quick, "max_drop": MAX_DROP, "drop_type": "absolute", "latency_rounds": args.rounds,
            "inc_limit_s": {c: args.inc_limit or INC_LIMIT[c] for c in args.cases}, "inc_grace_s": INC_GRACE,
            "aaq_tuning_available": aaq_available(), "cases": done + ([partial] if partial else []),
            "targets": met, "inc_env": venv, "code": common.code_state(),
            "total_seconds": time.perf_counter() - started, "complete": len(done) == len(args.cases),
            "aaq_version": aaq.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))
        return met

    cases: list[dict[str, Any]] = []
    for case in args.cases:  # the JSON is rewritten after each tool: a stopped run keeps what it measured
        cases.append(run_case(case, args, python, lambda partial: write(cases, partial)))
        met = write(cases)

    print(f"aaq Tuning vs INC {INC.split('==')[1]} (ONNX Runtime backend), accuracy criterion {MAX_DROP} absolute, "
          f"objective performance{' (quick)' if args.quick else ''}")
    print(table(cases))
    print("met: drop <= 0.01 by one common evaluation of each final model on the full evaluation set; fp acc: "
          "Conv/Gemm/MatMul in float (no DequantizeLinear input) as accuracy fallbacks / all (INC: every float "
          "layer); fp speed: the other float layers (aaq: latency_aware measured them faster in float here); "
          "trials: configs tried; result at: the trial whose config is the result (INC: from its tuning log); "
          "full ev: evaluations on the whole evaluation set (INC: eval_func calls, baseline included); lat: "
          f"float's median ms per batch and each model's ratio to it ({args.rounds} interleaved rounds; 2t: 2 "
          f"intra-op threads, spinning off; 1t: one thread). bayesian / tpe / gp-optuna: {MB_TRIALS} trials over "
          f"weight per_channel|per_tensor x activation sym|asym x {'|'.join(MB_ALGORITHMS)} x sampling "
          f"{MB_SAMPLING} (aaq model-wise, INC per op); gp-optuna: aaq's loop with Optuna's GPSampler (torch)")
    for key, t in met.items():
        parts = [f"{k}={'yes' if v else 'NO'}" if isinstance(v, bool) else f"{k}={v:.2f}" if isinstance(v, float)
                 else f"{k}={v}" for k, v in t.items()]
        print(f"  {key}: " + ", ".join(parts))
    if "gp-optuna" in args.tools:
        try:
            replayed = replay_samplers(WORK)
        except Exception as exc:  # the main table stands without it
            log.error("replay failed: %s", exc)
            replayed = {"error": str(exc)[-2000:]}
        report = json.loads(args.json.read_text())
        report["replay"] = replayed
        args.json.write_text(json.dumps(report, indent=2, default=str))
        if "strategies" in replayed:
            print(f"Replay on a recorded landscape (the tests' tiny MLP, {replayed['configs']} configs, "
                  f"{replayed['passing']} passing; objective accuracy): trials until a config of the best accuracy, "
                  f"over {replayed['seeds']} seeds")
            print("| strategy | mean | worst |\n|---|---|---|")
            for name, r in replayed["strategies"].items():
                print(f"| {name} | {r['mean']:.1f} | {r['worst']} |")
    print(f"total {time.perf_counter() - started:.0f} s; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
