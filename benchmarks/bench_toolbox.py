"""The peers' starting algorithms in aaq, side by side with AMD Quark 0.13 and AIMET-ONNX 2.42, in one run (issue 19).

Extends ``bench_default_start.py`` (its cases, its rows machinery, its one evaluation
loop) with one more case, ``outlier_transformer`` (``synthetic_transformer.py``: a
transformer block whose first LayerNorm has one outlier channel), and two tables:

1. **Full-INT8 start**, per case: aaq DefaultQuantization (``latency_aware: "off"``, the
   other params at their defaults) with each algorithm off and on
   (``cross_layer_equalization``, ``smooth_quant``, ``weight_range_search``, all three),
   Quark's ``INT8_CNN_DEFAULT`` one-shot (MinMax + CLE) and AIMET's CLE + SeqMSE.
2. **DQ -> AAQ end result** (top-1 cases, and ``ppocr_rec`` where every tool searches on the bench's
   character accuracy: aaq's spec names ``bench_accuracy_aware.make_metric``, the peers' ``peers_side.py``
   scores its eval npz, both by ``nncf_side.Scorer``, the scorer of the common loop), ``maximal_drop`` 0.01
   absolute: aaq with
   ``tune_hyperparams`` false and true (the whole-model alternatives before any
   revert), Quark's ``AutoSearch`` and AIMET's automatic mixed precision. Columns:
   drop, met?, groups/layers not in int8 (aaq: its groups reverted; a peer: the
   Conv/Gemm/MatMul layers of its model whose inputs are not both dequantized from
   8 bits, ``precision_census``), full evaluations, wall seconds, and latency vs
   float (batch ``case.batch``, interleaved rounds, median, same run).

Peers run in their own virtual environments (``benchmarks/out/venv-quark``,
``venv-aimet``), created here from ``/work/shared/peers/requirements-*.txt`` when
missing, through ``peers_side.py``. A peer that fails is an ``error`` cell with its
message in the JSON, not a lost run; one that runs past ``--peer-limit`` seconds (default
2700) is stopped and recorded as "not finished within N s", with the full evaluations it
had reported by then.

Quark's fine-tuned one-shots (``"quark adaround"``, ``"quark adaquant"``: the one-shot plus AdaRound or
AdaQuant at its presets' parameters; ``"quark adaround percentile"``: AdaRound after Percentile
calibration) take tens of seconds on the smallest case and grow with every layer, so they run only when
``--rows`` names them.

``--rows`` runs only the named rows of either table (names as printed, e.g. ``"quark
AutoSearch" "aimet AMP"``); ``--merge`` puts this run's rows into the existing ``--json``
(other rows and cases kept), so a long peer run need not repeat the aaq rows. Every run
appends an entry to the JSON's ``runs`` (argv, UTC start and end, rows, load average and
other processes' cores, niceness), so a merged file says which run measured which row.

Usage:  python benchmarks/bench_toolbox.py [--cases ...] [--rows ...] [--merge] [--skip-peers] [--quick] [--json PATH]
Writes benchmarks/out/bench_toolbox.json and prints both tables (markdown).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_accuracy_aware  # noqa: E402  (Foreign: other processes' cores)
import bench_default_start as bds  # noqa: E402
import synthetic_transformer  # noqa: E402

OUT = HERE / "out"
PEERS = Path("/work/shared/peers")
MAX_DROP = 0.01
PEER_LIMIT = 2700.0  # s of wall clock per peer run (--peer-limit)
E2E_ROWS = ("aaq DQ->AAQ defaults", "aaq DQ->AAQ tune_hyperparams", "quark AutoSearch", "aimet AMP")
TOP1_CASES = ("outlier_cnn", "deep_outlier_cnn", "outlier_transformer", "tiny", "ppocr_cls")
# fine-tuning takes tens of seconds to minutes a case: these rows run only when --rows names them
OPT_IN = ("quark adaround", "quark adaquant", "quark adaround percentile")
TEXT_CASES = ("ppocr_rec",)  # labels are text: every tool scores the bench's character accuracy


def _outlier_transformer(name: str) -> bds.Case:
    built = synthetic_transformer.transformer_block()
    bds.WORK.mkdir(parents=True, exist_ok=True)
    path = bds.WORK / "outlier_transformer.onnx"
    onnx.save(built.model, str(path))
    return bds.Case(name, path, built.input_name, built.calib, built.x, built.y, bds._top1, 64, built.metric,
                    {"planted": built.planted})


CASES = {**bds.CASES, "outlier_transformer": _outlier_transformer}

ALGORITHMS = {
    "aaq DQ defaults": {},
    "aaq +CLE": {"cross_layer_equalization": True},
    "aaq +SmoothQuant": {"smooth_quant": {"enabled": True, "alpha": 0.5}},
    "aaq +weight search": {"weight_range_search": {"enabled": True}},
    "aaq +all three": {"cross_layer_equalization": True, "smooth_quant": {"enabled": True, "alpha": 0.5},
                       "weight_range_search": {"enabled": True}},
}


def _aaq_start_row(name: str, params: dict) -> bds.Row:
    """DefaultQuantization at its defaults (the current default estimator) plus ``params``."""

    def quantize(case: bds.Case, work: Path) -> Path:
        from aaq.algorithms.base import run_algorithm
        from aaq.algorithms.default import DefaultQuantization
        from aaq.engine import Agreement, ArrayDataset, Engine
        from aaq.state import PipelineState

        model = onnx.load(str(case.model))
        engine = Engine(ArrayDataset({case.input_name: case.calib}), [Agreement()], batch_size=case.batch,
                        progress=False)
        engine.set_float_model(model)
        algorithm = DefaultQuantization(DefaultQuantization.Params(
            stat_subset_size=len(case.calib), latency_aware="off", **params))
        state = run_algorithm(algorithm, PipelineState(float_model=model, model=model), engine, progress=False)
        path = work / f"{case.name}.{name.replace(' ', '_').replace('+', '')}.onnx"
        onnx.save(state.model, str(path))
        return path

    return bds.Row(name, "aaq", json.dumps(params) if params else "defaults", quantize)


# --------------------------------------------------------------------------- peers


def ensure_venv(tool: str) -> Path:
    """``benchmarks/out/venv-<tool>`` with the pinned requirements (made once; large: torch CPU)."""
    venv = OUT / f"venv-{tool}"
    python = venv / "bin" / "python"
    marker = venv / ".aaq-bench-ready"
    if marker.exists():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(PEERS / f"requirements-{tool}.txt")],
                   check=True)
    marker.write_text("ok\n")
    return python


def _eval_npz(case: bds.Case, work: Path) -> Path:
    """The eval set for ``peers_side.py`` and aaq's spec: ``x``, ``y`` (top-1), or ``x``, ``text``, ``charset``,
    ``mean_len`` (ppocr_rec: the case's scorer's mean text length, over the whole set even when ``--quick`` cut
    ``x``; a file an earlier version wrote without it is written again)."""
    if case.name not in TEXT_CASES:
        path = work / f"{case.name}.eval.npz"
        if not path.exists():
            np.savez(path, x=case.x, y=np.asarray(case.labels).reshape(-1))
        return path
    import realcases

    path = work / f"{case.name}.eval_text.npz"
    written = path.exists()
    if written:
        with np.load(path) as z:
            written = "mean_len" in z.files
    if not written:
        with np.load(realcases.prepare(case.name)["data"]) as z:
            charset = z["charset"]
        np.savez(path, x=case.x, text=np.asarray(case.labels), charset=charset,
                 mean_len=case.score.__self__.mean_len)  # case.score: that nncf_side.Scorer's bound method
    return path


def peer(mode: str, case: bds.Case, work: Path, limit: float = PEER_LIMIT) -> tuple[Path, dict]:
    tool = mode.split("_")[0]
    python = ensure_venv(tool)
    out_model, out_json = work / f"{case.name}.{mode}.onnx", work / f"{case.name}.{mode}.json"
    stderr = work / f"{case.name}.{mode}.stderr.txt"
    for stale in (out_model, out_json):  # what an earlier run left must not pass for this one's
        stale.unlink(missing_ok=True)
    # Quark refuses per-channel QDQ below opset 13 (ppocr_cls is opset 11): the converted copy, as for NNCF
    cmd = [str(python), str(HERE / "peers_side.py"), mode, "--model", str(bds._opset13(case, work)), "--calib",
           str(case.calib_npz(work)), "--eval", str(_eval_npz(case, work)), "--input", case.input_name,
           "--out-model", str(out_model), "--out-json", str(out_json), "--max-drop", str(MAX_DROP)]
    started = time.perf_counter()
    with open(stderr, "w") as err:  # its own session, so the limit stops the tool's workers too
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=str(work), start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log = stderr.read_text(errors="replace")
            raise NoModel({"note": f"not finished within {limit:.0f} s", "wall": time.perf_counter() - started,
                           "evaluations": log.count("[peers_side] full evaluation"),
                           "subset_evaluations": log.count("[peers_side] subset evaluation"), "limit_s": limit})
    if proc.returncode != 0 or not out_json.exists():
        raise RuntimeError(f"peers_side.py {mode} failed ({proc.returncode}): "
                           f"{stderr.read_text(errors='replace')[-1500:]}")
    record = json.loads(out_json.read_text())
    record["wall"] = time.perf_counter() - started
    if not out_model.exists():  # AutoSearch found no config within the tolerance: no model, not an error
        raise NoModel(record)
    return out_model, record


def precision_census(path: Path) -> dict[str, int]:
    """Conv/Gemm/MatMul layers by the precision of their data and weight inputs (inputs 0, 1; biases are int32).

    ``int8``: both come from a DequantizeLinear with an 8-bit zero point; ``16-bit``: one is dequantized from
    16 bits (AIMET's mixed precision); ``float``: neither is dequantized; ``partly float``: the rest.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    zero_type = {i.name: i.data_type for i in graph.initializer}
    bits16 = (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
    counts = {"layers": 0, "int8": 0, "16-bit": 0, "float": 0, "partly float": 0}
    for node in graph.node:
        if node.op_type not in bench_accuracy_aware.LAYER_OPS:
            continue
        sources = [producer.get(i) for i in node.input[:2]]
        dq = [n for n in sources if n is not None and n.op_type == "DequantizeLinear"]
        wide = [n for n in dq if len(n.input) > 2 and zero_type.get(n.input[2]) in bits16]
        kind = ("float" if not dq else "16-bit" if wide else "int8" if len(dq) == len(sources)
                else "partly float")
        counts["layers"] += 1
        counts[kind] += 1
    return counts


class NoModel(Exception):
    """A peer ended without a model (none met the target); ``record`` is what it reported."""

    def __init__(self, record: dict) -> None:
        super().__init__(record.get("note", "no model"))
        self.record = record


def _peer_row(mode: str, describe: str, limit: float = PEER_LIMIT) -> bds.Row:
    return bds.Row(mode.replace("_", " "), mode.split("_")[0], describe,
                   lambda case, work: peer(mode, case, work, limit)[0])


# --------------------------------------------------------------------------- end to end


def latency_ratio(model: Path, float_model: Path, case: bds.Case, rounds: int = 7) -> dict[str, float]:
    """Median seconds per batch of ``case.batch``, interleaved with the float model in the same rounds."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for k, p in (("float", float_model), ("quantized", model))}
    feed = {case.input_name: case.x[:case.batch]}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():
        s.run(None, feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            started = time.perf_counter()
            for _ in range(3):
                s.run(None, feed)
            times[k].append((time.perf_counter() - started) / 3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"float_s": med["float"], "quantized_s": med["quantized"], "speedup": med["float"] / med["quantized"]}


def _ctc_steps(case: bds.Case) -> int:
    """The time steps of the case's CTC output (N, T, classes), from one float run: what bounds a decoded line."""
    session = ort.InferenceSession(str(case.model), providers=["CPUExecutionProvider"])
    return int(session.run(None, {case.input_name: case.x[:1]})[0].shape[1])


def aaq_metric(case: bds.Case, data: Path) -> tuple[str, dict]:
    """The labels key of ``data`` (``_eval_npz``) and the spec's metric: top-1, or on a text case the bench's
    own per-sample character accuracy (``nncf_side.Scorer``, the ``mean_len`` and charset of ``data``) through
    ``bench_accuracy_aware.make_metric``, so AAQ searches on the value ``bds.evaluate`` reports."""
    if case.name not in TEXT_CASES:
        return "y", {"name": "top1", "type": "accuracy"}
    return "text", {"name": "char_accuracy", "type": "python", "factory": "bench_accuracy_aware:make_metric",
                    "kwargs": {"case": case.name, "data": str(data), "steps": _ctc_steps(case)}}


def aaq_end_to_end(case: bds.Case, work: Path, tune: bool) -> tuple[Path, dict]:
    from aaq import Pipeline

    calib = case.calib_npz(work)
    data = _eval_npz(case, work)
    labels, metric = aaq_metric(case, data)
    spec = {"model": {"name": case.name, "path": str(case.model)},
            "engine": {"dataset": {"type": "npz", "path": str(data), "inputs": {case.input_name: "x"},
                                   "labels": labels},
                       "calibration_dataset": {"type": "npz", "path": str(calib),
                                               "inputs": {case.input_name: case.input_name}},
                       "metrics": [metric], "batch_size": case.batch},
            "compression": {"algorithms": [
                {"name": "DefaultQuantization", "params": {"stat_subset_size": len(case.calib)}},
                {"name": "AccuracyAwareQuantization", "params": {"maximal_drop": MAX_DROP,
                                                                 "tune_hyperparams": tune}}]}}
    out = work / f"{case.name}.aaq_e2e_{'tuned' if tune else 'plain'}"
    started = time.perf_counter()
    result = Pipeline(spec, progress=False).run(output_dir=out)
    wall = time.perf_counter() - started
    summary = result.algorithms[-1].summary
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quantized.onnx"
    onnx.save(result.model, str(path))
    total = summary["groups_quantized"] + summary["groups_reverted"]
    dq = result.algorithms[0].summary
    return path, {"wall": wall, "evaluations": summary["evaluations"]["full"],
                  "subset_evaluations": summary["evaluations"]["subset"],
                  "not_int8": f"{summary['groups_reverted']} of {total} groups"
                              + (f" (+{len(dq['latency_aware']['float_layers'])} float for speed)"
                                 if dq["latency_aware"]["float_layers"] else ""),
                  # aaq's own float and final values: the common loop's ones when the spec scores as it does
                  "aaq_metric": {k: {"float": v["float"], "final": v["final"]} for k, v in summary["metrics"].items()},
                  "kept": (summary.get("alternatives", {}).get("tune_hyperparams") or {}).get("kept"),
                  "slow_fix": summary.get("slow_fix"), "headline": summary.get("headline")}


def end_to_end(case: bds.Case, work: Path, names: list[str], limit: float) -> dict[str, Any]:
    """The DQ -> AAQ rows in ``names`` (of ``E2E_ROWS``) on ``case``."""
    floated = bds.evaluate(case.model, case)
    ways = {"aaq DQ->AAQ defaults": lambda: aaq_end_to_end(case, work, False),
            "aaq DQ->AAQ tune_hyperparams": lambda: aaq_end_to_end(case, work, True),
            "quark AutoSearch": lambda: peer("quark_autosearch", case, work, limit),
            "aimet AMP": lambda: peer("aimet_amp", case, work, limit)}
    rows: dict[str, Any] = {}
    for name in names:
        way = ways[name]
        try:
            path, record = way()
            value = bds.evaluate(path, case)
            record.update({"metric": value, "drop": floated - value, "met": floated - value <= MAX_DROP + 1e-12,
                           **latency_ratio(path, case.model, case)})
            if "not_int8" not in record:  # a peer's model: its layers, counted the same way for every tool
                record["census"] = census = precision_census(path)
                record["not_int8"] = (f"{census['layers'] - census['int8']} of {census['layers']} layers"
                                      + (f" ({census['16-bit']} 16-bit)" if census["16-bit"] else ""))
        except NoModel as none:
            record = {**none.record, "met": False, "no_model": True}
        except Exception as exc:  # noqa: BLE001  one way failing must not lose the others
            record = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        rows[name] = record
        shown = (f"drop {record['drop']:+.4f} met {record['met']} evals {record.get('evaluations')} "
                 f"wall {record.get('wall', 0):.1f}s speed x{record['speedup']:.2f}") if "drop" in record \
            else record.get("error", f"no model: {record.get('note')} ({record.get('evaluations')} evaluations, "
                                     f"{record.get('wall', 0):.0f} s)")[:300]
        print(f"  e2e {name:<30} {shown}", flush=True)
    return {"float": floated, "rows": rows}


def print_e2e(report: dict) -> None:
    print("| case | tool, mode | drop (0.01 allowed) | not in int8 | full evaluations | wall s | speed vs float |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, entry in report["e2e"].items():
        for name, r in entry["rows"].items():
            if "error" in r:
                print(f"| {case} | {name} | error | | | | |")
                continue
            if r.get("no_model"):
                print(f"| {case} | {name} | ✗ ({r.get('note')}) | | {r.get('evaluations')} | {r['wall']:.1f} | |")
                continue
            not_int8 = r.get("not_int8", "")
            print(f"| {case} | {name} | {r['drop']:.4f} {'✓' if r['met'] else '✗'} | {not_int8} | "
                  f"{r.get('evaluations')}" + (f" (+{r['subset_evaluations']} subset)" if r.get("subset_evaluations")
                                               else "") +
                  f" | {r['wall']:.1f} | {r['speedup']:.2f}x{' (slower)' if r['speedup'] < 1 else ''} |")


def print_tables(report: dict[str, Any]) -> None:
    """Both tables, each only if the run (or the merged runs) measured some of its rows."""
    if report["cases"]:
        bds.print_table(report)
        print()
    if report["e2e"]:
        print_e2e(report)


def run_entry(argv: list[str], names: list[str], cases: list[str]) -> dict[str, Any]:
    """What the JSON's ``runs`` says of one run: which rows, when, at what load (main adds the end)."""
    return {"argv": argv, "rows": names, "cases": cases, "nice": os.nice(0),
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_start": os.getloadavg()}


def merged(old: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """``report``'s rows laid over an earlier run's JSON ``old`` (rows and cases this run did not measure kept)."""
    out = {**old, **{k: v for k, v in report.items() if k not in ("rows", "row_descriptions", "cases", "e2e")}}
    out["rows"] = old.get("rows", []) + [r for r in report["rows"] if r not in old.get("rows", [])]
    out["row_descriptions"] = {**old.get("row_descriptions", {}), **report["row_descriptions"]}
    out["runs"] = old.get("runs", []) + report["runs"]
    for table in ("cases", "e2e"):
        out[table] = dict(old.get(table, {}))
        for case, entry in report[table].items():
            before = out[table].get(case, {})
            out[table][case] = {**before, **entry, "rows": {**before.get("rows", {}), **entry["rows"]}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(TOP1_CASES),
                    choices=list(CASES))
    ap.add_argument("--rows", nargs="+", default=None, help="run only these rows of either table (names as printed)")
    ap.add_argument("--merge", action="store_true", help="merge this run's rows into the existing --json")
    ap.add_argument("--peer-limit", type=float, default=PEER_LIMIT, help="wall-clock s per peer run")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=OUT / "bench_toolbox.json")
    ap.add_argument("--print-json", type=Path, default=None, help="print the tables of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.print_json is not None:
        print_tables(json.loads(args.print_json.read_text()))
        return 0
    rows = [_aaq_start_row(n, p) for n, p in ALGORITHMS.items()]
    rows += [_peer_row("quark_oneshot", "Quark 0.13 INT8_CNN_DEFAULT, per-channel (MinMax + CLE)", args.peer_limit),
             _peer_row("aimet_cle_seqmse", "AIMET-ONNX 2.42 CLE + QuantSim min_max + SeqMSE(20)", args.peer_limit),
             _peer_row("quark_adaround", "Quark 0.13 INT8_CNN_DEFAULT + AdaRound (its preset: 1000 iterations a layer)",
                       args.peer_limit),
             _peer_row("quark_adaquant", "Quark 0.13 INT8_CNN_DEFAULT + AdaQuant (its preset: 1000 iterations a layer)",
                       args.peer_limit),
             _peer_row("quark_adaround_percentile", "the AdaRound row with Percentile calibration instead of MinMax",
                       args.peer_limit)]
    rows = [r for r in rows if r.name not in OPT_IN or r.name in (args.rows or [])]
    e2e = list(E2E_ROWS)
    if args.skip_peers:
        rows, e2e = [r for r in rows if r.tool == "aaq"], [n for n in e2e if n.startswith("aaq")]
    if args.skip_e2e:
        e2e = []
    if args.rows is not None:
        known = [r.name for r in rows] + e2e
        unknown = [n for n in args.rows if n not in known]
        if unknown:
            ap.error(f"--rows: unknown {unknown}; the rows are {known}")
        rows, e2e = [r for r in rows if r.name in args.rows], [n for n in e2e if n in args.rows]
    report: dict[str, Any] = {"rows": [r.name for r in rows], "row_descriptions": {r.name: r.describe for r in rows},
                              "cases": {}, "e2e": {}, "onnxruntime": ort.__version__, "cpus": os.cpu_count(),
                              "runs": [run_entry(sys.argv[1:] if argv is None else argv,
                                                 [r.name for r in rows] + e2e, args.cases)]}
    if args.merge and args.json.exists():
        args.base = json.loads(args.json.read_text())  # read once: each write lays this run over the same base
    started = time.perf_counter()
    with bench_accuracy_aware.Foreign() as foreign:
        for name in args.cases:
            case = CASES[name](name)
            if args.quick:
                case.x, case.labels = case.x[:bds.QUICK_EVAL], case.labels[:bds.QUICK_EVAL]
                case.calib = case.calib[:bds.QUICK_CALIB]
            work = OUT / "bench_toolbox" / ("quick" if args.quick else "full")
            work.mkdir(parents=True, exist_ok=True)
            if rows:
                report["cases"][name] = bds.run_case(case, rows, work)
            ways = e2e if name in TOP1_CASES + TEXT_CASES else []
            if ways:
                report["e2e"][name] = end_to_end(case, work, ways, args.peer_limit)
            report["seconds"] = time.perf_counter() - started
            _write(args, report)
    report["runs"][-1].update(ended_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              load_average_end=os.getloadavg(), seconds=report["seconds"],
                              foreign_cores=round(foreign.cores, 2))
    report = _write(args, report)
    print()
    print_tables(report)
    print(f"\ntotal {report['runs'][-1]['seconds']:.0f} s; wrote {args.json}")
    return 0


def _write(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    written = merged(args.base, report) if getattr(args, "base", None) is not None else report
    args.json.write_text(json.dumps(written, indent=2, default=str))
    return written


if __name__ == "__main__":
    raise SystemExit(main())
