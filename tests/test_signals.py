"""Signals with ranking workers (issue 17, class 3): SIGTERM or Ctrl-C mid-ranking ends the workers with the
run, quietly, leaves no scratch copy of the data, and the output directory holds a pair (here the best plan so
far: the quantized model, measured before the ranking) or nothing, never half of one.

The metric is a python plugin (``GATE``): in the run's own process it is top-1; in a
ranking worker it writes ``worker-PID`` into ``$AAQ_TEST_FLAGS`` and then never
returns, so the test signals while every worker is busy, never by timing.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from aaq import Pipeline
from aaq.accuracy.drops import MetricTarget, Targets
from aaq.accuracy.evaluator import better
from aaq.accuracy.search import Measurement
from aaq.engine.metrics import Accuracy, metrics, register_metric
from aaq.errors import Interrupted
from aaq.state import model_digest
from models import labeled_data, mlp, write_case

GATE = '''
import os, time
from pathlib import Path
from aaq.engine.metrics import Accuracy


class WorkerGate(Accuracy):
    def __init__(self):
        super().__init__()
        self.home = os.getpid()  # pickled along: a worker knows it is not the run

    def score(self, outputs, labels):
        if os.getpid() != self.home:
            Path(os.environ["AAQ_TEST_FLAGS"], f"worker-{os.getpid()}").write_text("busy")
            while True:  # the run's end ends this
                time.sleep(0.05)
        return super().score(outputs, labels)


def make():
    return WorkerGate()
'''


def _children(pid: int) -> set[int]:
    """Every process descended from ``pid``, read from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits for a parent


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("signum, group", [
    pytest.param(signal.SIGTERM, False, id="SIGTERM to the run"),
    pytest.param(signal.SIGINT, True, id="Ctrl-C to the process group, as a terminal sends it"),
])
def test_a_signal_mid_ranking_ends_the_workers_and_leaves_a_pair_or_nothing(tmp_path: Path, signum: int,
                                                                            group: bool) -> None:
    onnx.save(mlp(), str(tmp_path / "model.onnx"))
    x, y = labeled_data(mlp, n=64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "aaq_test_worker_gate.py").write_text(GATE)
    spec = {"model": {"name": "m", "path": "model.onnx"},
            "engine": {"dataset": {"type": "npz", "path": "data.npz", "inputs": {"x": "x"}, "labels": "y"},
                       "metrics": [{"name": "top1", "type": "python", "factory": "aaq_test_worker_gate:make"}],
                       "batch_size": 16},
            "compression": {"algorithms": [
                {"name": "DefaultQuantization", "params": {"stat_subset_size": 32}},
                {"name": "AccuracyAwareQuantization",
                 "params": {"maximal_drop": 0.0, "ranking_subset_size": 16, "workers": 2, "confidence": None}}]}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    flags, scratch, out = tmp_path / "flags", tmp_path / "tmp", tmp_path / "out"
    flags.mkdir()
    scratch.mkdir()
    env = {**os.environ, "AAQ_TEST_FLAGS": str(flags), "TMPDIR": str(scratch),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, check=True, timeout=120)
    bare = sorted(scratch.iterdir())  # what importing ONNX Runtime leaves in TMPDIR by itself (its .ses file)
    proc = subprocess.Popen([sys.executable, "-m", "aaq", "run", "spec.json", "--output-dir", str(out),
                             "--no-progress", "--no-html"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    descendants: set[int] = set()
    try:
        deadline = time.monotonic() + 600
        while len(list(flags.iterdir())) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(flags.iterdir())) == 2, proc.communicate(timeout=60)
        workers = {int(f.name.split("-")[1]) for f in flags.iterdir()}
        descendants |= _children(proc.pid)
        assert workers <= descendants
        assert [p.name for p in scratch.iterdir() if p.name.startswith("aaq-")]  # the workers' copy of the subset
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
        name = signal.Signals(signum).name
        assert proc.returncode == 128 + signum, stderr
        assert "Traceback" not in stderr and f"interrupted by {name}" in stderr  # the workers' stderr is this one
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in descendants if _alive(p)]
        assert sorted(scratch.iterdir()) == bare
        # the quantized model was measured to the end before the ranking: it is the best plan so far, as one pair
        report = json.loads((out / "report.json").read_text())
        assert report["interrupted"] is True and report["signal"] == name
        summary = report["algorithms"][-1]["summary"]
        assert summary["interrupted"] is True and summary["reverted"] == []
        assert hashlib.sha256((out / "m.quantized.onnx").read_bytes()).hexdigest() == report["model"]["sha256"]
        assert "wrote the best model so far" in stderr
    finally:  # a failing run must not outlive the test
        _end(proc, descendants)


def _end(proc: subprocess.Popen, descendants: set[int]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    for pid in descendants:  # the run's workers, should it have left them (checked to be ours still)
        try:
            ours = b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if ours and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _m(reverted: set, value: float) -> Measurement:
    return Measurement(frozenset(reverted), {"top1": (value, value)}, True)


@pytest.mark.parametrize("a, b, expected", [
    pytest.param(_m({"g1"}, 0.99), _m(set(), 0.90), True, id="meets the target beats does not"),
    pytest.param(_m({"g1", "g2"}, 0.995), _m({"g1"}, 0.99), False, id="both meet it: fewer groups in float"),
    pytest.param(_m({"g2"}, 0.995), _m({"g1"}, 0.99), True, id="both meet it, as many groups: lower objective"),
    pytest.param(_m({"g1", "g2"}, 0.97), _m({"g1"}, 0.95), True, id="neither meets it: closer to the target"),
])
def test_the_best_plan_so_far(a: Measurement, b: Measurement, expected: bool) -> None:
    targets = Targets([MetricTarget("top1", True, 1.0, 0.02, (0.0, 1.0))])
    assert better(targets, a, b) is expected


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = write_case(tmp_path_factory.mktemp("small"), mlp, 64)
    return root


class _Stop:
    """A KeyboardInterrupt at the metric's ``at``-th call, as Ctrl-C arrives in the middle of an evaluation."""

    calls, at = 0, 0


if "interrupting_accuracy" not in metrics:
    @register_metric("interrupting_accuracy")
    class InterruptingAccuracy(Accuracy):
        def score(self, outputs, labels):
            _Stop.calls += 1
            if _Stop.calls == _Stop.at:
                raise KeyboardInterrupt
            return super().score(outputs, labels)


def _aaq_spec(small: Path) -> dict:
    return {"model": {"name": "m", "path": str(small / "model.onnx")}, "evaluate": False,
            "engine": {"dataset": {"type": "npz", "path": str(small / "data.npz"), "inputs": {"x": "x"},
                                   "labels": "y"},
                       "metrics": [{"name": "top1", "type": "interrupting_accuracy"}], "batch_size": 16},
            "compression": {"algorithms": [{"name": "AccuracyAwareQuantization",
                                            "params": {"maximal_drop": 0.0, "ranking_subset_size": 16}}]}}


@pytest.fixture(scope="module")
def uninterrupted(small: Path) -> list:
    """The evaluations of the run no signal stops, each with the metric calls it made (one per batch of 16)."""
    _Stop.calls, _Stop.at = 0, 0
    result = Pipeline(_aaq_spec(small), progress=False).run()
    calls = [-(-e.inferred // 16) for e in result.evaluations]
    assert sum(calls) == _Stop.calls
    return list(zip(result.evaluations, np.cumsum(calls)))


@pytest.mark.parametrize("at", range(2, 22, 2))  # up to the last plan before every group is in float
def test_an_interrupted_search_publishes_the_best_plan_measured_to_the_end(small: Path, uninterrupted: list,
                                                                          at: int) -> None:
    if at > uninterrupted[-1][1]:
        pytest.skip("the run makes fewer calls")
    _Stop.calls, _Stop.at = 0, at
    with pytest.raises(Interrupted) as caught:
        Pipeline(_aaq_spec(small), progress=False).run()
    assert caught.value.signum == signal.SIGINT
    float_digest = model_digest(onnx.load(str(small / "model.onnx")))
    before = [e for e, upto in uninterrupted if upto < at]  # the evaluations that ended before the signal
    measured = [e for e in before if e.full and e.complete and e.model_digest != float_digest]
    result = caught.value.result
    if not measured:  # no plan measured to the end yet: nothing to publish
        assert result is None
        return
    assert [e.model_digest for e in result.evaluations] == [e.model_digest for e in before]
    report = json.loads(result.report_bytes())
    assert report["interrupted"] is True and report["signal"] == "SIGINT"
    done = {e.model_digest: e.values["top1"] for e in before if e.full and e.complete}
    # published: a model measured to the end (the float-equal plan of every group reverted has the float digest),
    # and the best of them: with maximal_drop 0 a plan meets the target only at top-1 1.0, so no other is better
    assert report["model"]["sha256"] in done
    assert done[report["model"]["sha256"]] == max(e.values["top1"] for e in measured)
    assert report["algorithms"][-1]["summary"]["target_met"] is (done[report["model"]["sha256"]] >= 1.0)
