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

from aaq.accuracy.drops import MetricTarget, Targets
from aaq.accuracy.evaluator import better
from aaq.accuracy.search import Measurement
from models import labeled_data, mlp

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
