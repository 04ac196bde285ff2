"""Interrupting a Tuning run and resuming it (issue 14, "Resume"): the best so far is published as a pair,
``--resume`` replays the history, evaluates no finished trial again and ends as an uninterrupted run does.

The metric is a python plugin beside the spec (``GATE`` below): top-1 that appends a line
per call to ``$AAQ_TEST_CALLS``, and, when ``$AAQ_TEST_GATE`` is N, waits forever at the
first call made once N trials are in the run's history (creating ``$AAQ_TEST_FLAG``
first): the test sends its signal while the run is inside trial N + 1, never by timing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from aaq import cli
from aaq.cli import main
from aaq.resume import FILES
from aaq.state import model_digest
from aaq.tuning.history import HISTORY_FILE, read_records
from models import mlp, write_case

GATE = '''
import glob, os, time
from pathlib import Path
from aaq.engine.metrics import Accuracy


class Gated(Accuracy):
    def score(self, outputs, labels):
        calls = os.environ.get("AAQ_TEST_CALLS")
        if calls:
            with open(calls, "a") as handle:
                handle.write("call\\n")
        gate = int(os.environ.get("AAQ_TEST_GATE", "0"))
        if gate:
            pattern = os.path.join(os.environ["AAQ_TEST_OUT"], ".runs", "*.partial", "tuning_history.jsonl")
            done = sum(len(Path(p).read_text().splitlines()) for p in glob.glob(pattern))
            if done >= gate:
                Path(os.environ["AAQ_TEST_FLAG"]).write_text(str(os.getpid()))
                while True:  # the test's signal ends this
                    time.sleep(0.05)
        return super().score(outputs, labels)


def make():
    return Gated()
'''
GATE_AT = 3
"""Trials finished before the signal: it arrives inside trial 4."""
TRIALS = 8


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """A model, its data, the gated metric beside the spec, and a spec whose 8 trials all run (timeout > 0)."""
    root = write_case(tmp_path_factory.mktemp("resume"), mlp, 64)
    (root / "aaq_test_resume_gate.py").write_text(GATE)
    params = {"strategy": {"name": "exhaustive"}, "objective": "accuracy", "accuracy_criterion": {"relative": 0.5},
              "exit_policy": {"timeout": 36000, "max_trials": TRIALS},
              "calibration": {"sampling_size": [16, 32]},
              "tuning_space": {"model_wise": {"activation": {"scheme": ["sym", "asym"],
                                                             "algorithm": ["minmax", "kl"]}}}}
    spec = {"model": {"name": "m", "path": "model.onnx"}, "evaluate": False,
            "engine": {"dataset": {"type": "npz", "path": "data.npz", "inputs": {"x": "x"}, "labels": "y"},
                       "metrics": [{"name": "top1", "type": "python", "factory": "aaq_test_resume_gate:make"}],
                       "batch_size": 16},
            "compression": {"algorithms": [{"name": "Tuning", "params": params}]}}
    (root / "spec.json").write_text(json.dumps(spec))
    return root


def _run(case: Path, out: Path, *extra: str) -> int:
    return main(["run", str(case / "spec.json"), "--output-dir", str(out), "--no-progress", "--no-html", *extra])


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _tuning(out: Path) -> dict:
    return _report(out)["algorithms"][-1]["summary"]


def _model_bytes(out: Path) -> bytes:
    return (out / "m.quantized.onnx").read_bytes()


def _without_time(trials: list[dict]) -> list[dict]:
    return [{k: v for k, v in t.items() if k != "seconds"} for t in trials]


def _calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def reference(case: Path, tmp_path_factory) -> tuple[Path, int]:
    """The uninterrupted run, and how many times it called the metric."""
    out, calls = tmp_path_factory.mktemp("reference") / "out", tmp_path_factory.mktemp("calls") / "calls"
    os.environ["AAQ_TEST_CALLS"] = str(calls)
    try:
        assert _run(case, out) == 0
    finally:
        del os.environ["AAQ_TEST_CALLS"]
    assert len(_tuning(out)["trials"]) == TRIALS
    return out, _calls(calls)


def _interrupted_run(case: Path, out: Path, calls: Path, signum: int) -> subprocess.CompletedProcess:
    """The run in a subprocess, signalled while it waits inside trial GATE_AT + 1."""
    flag = out.parent / "waiting"
    env = {**os.environ, "AAQ_TEST_GATE": str(GATE_AT), "AAQ_TEST_OUT": str(out), "AAQ_TEST_FLAG": str(flag),
           "AAQ_TEST_CALLS": str(calls)}
    proc = subprocess.Popen([sys.executable, "-m", "aaq", "run", str(case / "spec.json"), "--output-dir", str(out),
                             "--no-progress", "--no-html"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=case, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), proc.communicate(timeout=60)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
    finally:  # a failing run must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_an_interrupted_tuning_publishes_its_best_trial_and_resumes_to_the_uninterrupted_result(
        case: Path, reference: tuple[Path, int], tmp_path: Path, monkeypatch) -> None:
    ref_out, ref_calls = reference
    out, calls = tmp_path / "out", tmp_path / "calls"
    done = _interrupted_run(case, out, calls, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert "interrupted by SIGINT: wrote the best model so far" in done.stderr and "Traceback" not in done.stderr
    report = _report(out)
    assert report["interrupted"] is True and report["signal"] == "SIGINT"
    summary = report["algorithms"][-1]["summary"]
    assert summary["interrupted"] is True and summary["exit"] == "interrupted by SIGINT"
    assert _without_time(summary["trials"]) == _without_time(_tuning(ref_out)["trials"][:GATE_AT])
    passing = [t for t in summary["trials"] if t["passed"]]
    assert passing and summary["best"]["trial"] == max(passing, key=lambda t: t["accuracy"])["trial"]
    assert hashlib.sha256(_model_bytes(out)).hexdigest() == report["model"]["sha256"]  # one pair
    assert len(read_records(out / HISTORY_FILE)) == GATE_AT
    interrupted_calls = _calls(calls)

    monkeypatch.setenv("AAQ_TEST_CALLS", str(calls.with_name("resumed")))
    assert _run(case, out, "--resume") == 0
    resumed = _tuning(out)
    assert resumed["replayed_trials"] == GATE_AT and _report(out)["interrupted"] is False
    assert resumed["best"] == _tuning(ref_out)["best"]
    assert _model_bytes(out) == _model_bytes(ref_out)
    assert _without_time(resumed["trials"]) == _without_time(_tuning(ref_out)["trials"])
    assert _without_time(read_records(out / HISTORY_FILE)) == _without_time(read_records(ref_out / HISTORY_FILE))
    # No finished trial was evaluated again: the resumed run's evaluations are the uninterrupted run's but for
    # those the interrupted run made (the float model's reference is measured by both).
    float_digest = model_digest(onnx.load(str(case / "model.onnx")))
    digests = lambda o: sorted(e["model_digest"] for e in _report(o)["evaluations"])  # noqa: E731
    first = [e["model_digest"] for e in json.loads((out / ".runs").joinpath(_first_run(out), "report.json")
                                                   .read_text())["evaluations"]]
    again = [d for d in digests(out) if d != float_digest]
    assert not set(again) & (set(first) - {float_digest})
    assert sorted(first + again) == digests(ref_out)
    resumed_calls = _calls(calls.with_name("resumed"))
    assert resumed_calls < ref_calls
    assert resumed_calls + interrupted_calls - 1 > ref_calls  # the float model and the abandoned call, twice


def _first_run(out: Path) -> str:
    """The interrupted run's folder: the published one that is not current."""
    current = os.readlink(out / ".runs" / "current")
    (folder,) = [d.name for d in (out / ".runs").iterdir()
                 if d.is_dir() and not d.is_symlink() and d.name != current and "." not in d.name]
    return folder


def test_a_signal_before_any_trial_met_the_criterion_publishes_nothing_and_keeps_the_history(
        case: Path, reference: tuple[Path, int], tmp_path: Path) -> None:
    strict = json.loads((case / "spec.json").read_text())
    strict["compression"]["algorithms"][0]["params"]["accuracy_criterion"] = {"absolute": 0.0}  # none meets it
    root = tmp_path / "strict"
    shutil.copytree(case, root)
    (root / "spec.json").write_text(json.dumps(strict))
    out = tmp_path / "out"
    done = _interrupted_run(root, out, tmp_path / "calls", signal.SIGTERM)
    assert done.returncode == 143, done.stderr
    assert "interrupted by SIGTERM; nothing half-written was left" in done.stderr
    assert not (out / "report.json").exists() and not list(out.rglob("*.onnx"))
    (failed,) = (out / ".runs").glob("*.failed")
    assert len(read_records(failed / HISTORY_FILE)) == GATE_AT
    assert "interrupted by SIGTERM" in (failed / "aaq.log").read_text()


def test_resuming_a_finished_run_evaluates_no_trial(case: Path, reference: tuple[Path, int], tmp_path: Path,
                                                    capsys) -> None:
    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out, symlinks=True)
    assert _run(case, out, "--resume") == 0
    summary = _tuning(out)
    assert summary["replayed_trials"] == TRIALS and summary["evaluations"]["full"] == 0
    assert _model_bytes(out) == _model_bytes(ref_out) and summary["best"] == _tuning(ref_out)["best"]
    assert "from the history" in (out / "aaq.log").read_text()


def test_a_history_cut_mid_line_is_read_up_to_its_last_whole_record(case: Path, reference: tuple[Path, int],
                                                                     tmp_path: Path) -> None:
    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out, symlinks=True)
    history = (out / HISTORY_FILE).resolve()
    lines = history.read_bytes().splitlines(keepends=True)
    history.write_bytes(b"".join(lines[:2]) + lines[2][:len(lines[2]) // 2])
    assert len(read_records(history)) == 2
    assert _run(case, out, "--resume") == 0
    summary = _tuning(out)
    assert summary["replayed_trials"] == 2 and summary["evaluations"]["full"] > 0
    assert _model_bytes(out) == _model_bytes(ref_out)
    assert _without_time(summary["trials"]) == _without_time(_tuning(ref_out)["trials"])


def test_a_changed_spec_is_refused_naming_what_changed_but_not_the_exit_policy(
        case: Path, reference: tuple[Path, int], tmp_path: Path, capsys) -> None:
    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out, symlinks=True)
    spec = json.loads((case / "spec.json").read_text())
    params = spec["compression"]["algorithms"][0]["params"]
    params["accuracy_criterion"] = {"relative": 0.4}
    changed = case / "changed.json"
    changed.write_text(json.dumps(spec))
    before = _model_bytes(out)
    assert main(["run", str(changed), "--output-dir", str(out), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "compression.algorithms[0].params.accuracy_criterion.relative: changed from 0.5 to 0.4" in err
    assert _model_bytes(out) == before
    params["accuracy_criterion"] = {"relative": 0.5}
    params["exit_policy"] = {"timeout": 36000, "max_trials": TRIALS - 2}
    changed.write_text(json.dumps(spec))
    assert main(["run", str(changed), "--output-dir", str(out), "--no-progress", "--resume"]) == 0
    assert _tuning(out)["replayed_trials"] == TRIALS - 2 and _tuning(out)["evaluations"]["full"] == 0


def test_resume_without_a_history_is_exit_2(case: Path, tmp_path: Path, capsys) -> None:
    assert _run(case, tmp_path / "empty", "--resume") == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "run without --resume" in err
    assert not (tmp_path / "empty" / ".runs").exists() or not list((tmp_path / "empty" / ".runs").iterdir())


def test_the_cli_keeps_what_resume_reads() -> None:
    assert set(cli.KEPT_FILES) == set(FILES)


def test_a_resumed_basic_tuning_takes_its_fallback_ranking_from_the_history(case: Path, tmp_path: Path) -> None:
    spec = json.loads((case / "spec.json").read_text())
    params = spec["compression"]["algorithms"][0]["params"]
    params.update(strategy={"name": "basic", "alternatives": False},  # straight to the ranked fallback
                  accuracy_criterion={"absolute": 0.0},
                  exit_policy={"timeout": 0, "max_trials": 6}, calibration={"sampling_size": [16]},
                  tuning_space={"model_wise": {"activation": {"scheme": ["sym"], "algorithm": ["minmax"]}}})
    path = case / "basic.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    argv = ["run", str(path), "--output-dir", str(out), "--no-progress", "--no-html"]
    assert main(argv) in (0, 3)
    first = _tuning(out)
    assert first["rankings"] and first["evaluations"]["ranking"]["evaluations"] > 0
    assert main(argv + ["--resume"]) in (0, 3)
    again = _tuning(out)
    assert again["replayed_trials"] == len(first["trials"]) and again["evaluations"]["full"] == 0
    assert again["evaluations"]["ranking"]["evaluations"] == 0 and again["rankings"] == first["rankings"]
    assert again["best"] == first["best"]


def test_a_resumed_pipeline_recomputes_default_quantization_and_replays_the_tuning(case: Path, tmp_path: Path) -> None:
    spec = json.loads((case / "spec.json").read_text())
    tuning = spec["compression"]["algorithms"][0]
    tuning["params"]["exit_policy"] = {"timeout": 36000, "max_trials": 3}
    del tuning["params"]["calibration"]
    spec["compression"]["algorithms"] = [{"name": "DefaultQuantization", "params": {"stat_subset_size": 32}}, tuning]
    path = case / "dq_tuning.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    argv = ["run", str(path), "--output-dir", str(out), "--no-progress", "--no-html"]
    assert main(argv) == 0
    first, model = _tuning(out), _model_bytes(out)
    assert main(argv + ["--resume"]) == 0
    assert [a["name"] for a in _report(out)["algorithms"]] == ["DefaultQuantization", "Tuning"]
    assert _tuning(out)["replayed_trials"] == 3 and _tuning(out)["evaluations"]["full"] == 0
    assert _tuning(out)["best"] == first["best"] and _model_bytes(out) == model


def test_resume_of_a_spec_without_tuning_says_there_is_nothing_to_resume(case: Path, tmp_path: Path,
                                                                        capsys) -> None:
    spec = json.loads((case / "spec.json").read_text())
    spec["compression"]["algorithms"] = [{"name": "AccuracyAwareQuantization", "params": {"maximal_drop": 0.5}}]
    path = case / "aaq.json"
    path.write_text(json.dumps(spec))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out"), "--no-progress", "--resume"]) == 2
    assert "only Tuning keeps a history" in capsys.readouterr().err
