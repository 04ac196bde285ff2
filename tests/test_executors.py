"""Executors: the same reverted groups and model bytes on local, processes and dask; faults; what travels.

One module-scoped Dask ``LocalCluster`` of 2 single-thread worker processes serves
every Dask test here (starting one costs seconds). The model is
``models.sensitive_mlp``: ranking has several candidates, and the alternatives loop
(mixed preset, hyperparameters) scores several plans at once.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from aaq import Pipeline
from aaq.cli import main
from aaq.engine import Accuracy
from aaq.engine.dask_executor import DaskExecutor
from aaq.engine.executor_choice import as_executor, executor_from_spec
from aaq.engine.executors import Executor, ProcessExecutor
from aaq.errors import BadInputError, SpecError
from aaq.spec.validate import load_spec
from models import sensitive_mlp, write_case

distributed = pytest.importorskip("distributed")

AAQ = "AccuracyAwareQuantization"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = write_case(tmp_path_factory.mktemp("executors"), sensitive_mlp, 256)
    return root


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def spec_for(root: Path, executor: dict | None = None, **params) -> dict:
    engine = {"dataset": {"type": "npz", "path": str(root / "data.npz"), "inputs": {"x": "x"}, "labels": "y"},
              "metrics": [{"name": "top1", "type": "accuracy"}], "batch_size": 32}
    if executor is not None:
        engine["executor"] = executor
    return {"model": {"path": str(root / "model.onnx")}, "engine": engine,
            "compression": {"algorithms": [{"name": "DefaultQuantization", "params": {}},
                                           {"name": AAQ, "params": {"maximal_drop": 0.05, "ranking_subset_size": 32,
                                                                    "convert_to_mixed_preset": True,
                                                                    "tune_hyperparams": True,
                                                                    "faster_than_float": False, **params}}]}}


def outcome(result) -> tuple:
    summary = result.algorithms[-1].summary
    scores = [[(s["group"], s["score"]) for s in r["scores"]] for r in summary["rankings"]]
    tried = {k: [t["subset_score"] for t in v["tried"]] for k, v in summary["alternatives"].items()}
    return ([r["layers"] for r in summary["reverted"]], result.model.SerializeToString(deterministic=True),
            scores, tried)


def counts(result) -> tuple:
    """What a run evaluated: every evaluation record, the totals, the search's counts (seconds aside)."""
    report = result.report()
    searched = {k: v for k, v in report["algorithms"][-1]["summary"]["evaluations"].items() if k != "seconds"}
    return report["evaluations"], report["totals"], searched


@pytest.mark.parametrize("method", ["metric", "output_distance"])
def test_local_processes_and_dask_give_the_same_reverts_model_bytes_and_evaluation_counts(
        files: Path, client, caplog, method: str) -> None:
    """The workers send back per-sample entries that the driver's caches take in: later full-set
    evaluations reuse the ranking's samples as a local run does, so even the counts are equal."""
    local = Pipeline(spec_for(files, ranking_method=method), progress=False).run()
    pool = ProcessExecutor(2)
    with caplog.at_level(logging.WARNING, logger="aaq"):
        processes = Pipeline(spec_for(files, ranking_method=method), progress=False).run(executor=pool)
        dask = Pipeline(spec_for(files, ranking_method=method), progress=False).run(executor=client)
    assert pool._pool is None and pool._scratch is None  # the workers ended with the run, the scratch is gone
    assert not [r for r in caplog.records if "parallel ranking failed" in r.getMessage()]
    assert outcome(local)[0]  # something was reverted: ranking ran
    assert outcome(processes) == outcome(local)
    assert outcome(dask) == outcome(local)
    assert counts(processes) == counts(local)
    assert counts(dask) == counts(local)
    assert counts(local)[2]["subset"] > 0 and counts(local)[1]["samples_inferred"] > 0
    assert [r.report()["executors"][0]["dataset"] for r in (processes, dask)] == ["by_reference"] * 2
    if method == "output_distance":
        return
    assert local.algorithms[-1].summary["alternatives"]["tune_hyperparams"]["tried"]  # several plans were scored
    report = dask.report()
    (figures,) = report["executors"]
    assert figures["type"] == "dask" and figures["workers"] == 2
    assert figures["tasks"] >= 5  # every group of a ranking, every alternative with the current plan
    # What travels per task is group ids, not the candidate model; the plan and the subset went once.
    assert 0 < figures["bytes_per_task"] < 0.5 * len(outcome(dask)[1])
    assert figures["context_bytes"] > 0
    assert report["timings"]["executors"][0]["task_seconds"] > 0
    assert report["timings"]["executors"][0]["wait_seconds"] > 0
    assert processes.report()["executors"][0]["type"] == "processes"
    assert local.report()["executors"][0] == {**local.report()["executors"][0], "type": "local", "bytes_shipped": 0}
    assert client.status == "running"  # the user's client is used, never closed


def test_a_spec_built_dataset_travels_by_reference_and_an_in_memory_one_is_shipped(files: Path, client) -> None:
    """From a spec the workers get the npz's recipe and the subset's indices, never its arrays; a dataset made
    in Python has no recipe and its subset's samples are shipped once. Same answer either way."""
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.engine import Engine

    spec = spec_for(files, tune_hyperparams=False, convert_to_mixed_preset=False)
    local = Pipeline(spec, progress=False).run()
    by_reference = [Pipeline(spec, progress=False).run(executor=client)]  # processes: the tests above and below
    data = np.load(files / "data.npz")
    engine = Engine(ArrayDataset({"x": data["x"]}, data["y"]), [Accuracy()], batch_size=32, progress=False,
                    executor=client)
    shipped = Pipeline(spec, progress=False).run(engine=engine)
    subset_bytes = 32 * data["x"][0].nbytes  # what one ranking subset's samples weigh
    for result in by_reference:
        (figures,) = result.report()["executors"]
        assert figures["dataset"] == "by_reference" and figures["dataset_contexts"] >= 1
        # 32 int64 indices and pickle framing: a fraction of the samples, whatever the dataset's size
        assert figures["dataset_bytes_per_context"] < 32 * 8 + 400 < subset_bytes / 2
        assert outcome(result)[:3] == outcome(local)[:3] and counts(result) == counts(local)
    (figures,) = shipped.report()["executors"]
    assert figures["dataset"] == "shipped" and figures["dataset_bytes_per_context"] >= subset_bytes
    assert outcome(shipped)[:3] == outcome(local)[:3]
    assert local.report()["executors"][0]["dataset"] is None  # nothing was sent


def test_workers_is_the_deprecated_synonym_of_a_processes_executor(files: Path, caplog) -> None:
    spec = spec_for(files, workers=2, tune_hyperparams=False, convert_to_mixed_preset=False)
    with caplog.at_level(logging.WARNING, logger="aaq"):
        result = Pipeline(spec, progress=False).run()
    assert any("'workers' is deprecated" in r.getMessage() for r in caplog.records)
    assert outcome(result)[0] == [["g2"]]  # as in this process (tests/test_accuracy_aware.py)
    kinds = [e["type"] for e in result.report()["executors"]]
    assert kinds == ["processes", "local"]  # AAQ's own pool, then the engine's
    with pytest.raises(SpecError) as info:
        load_spec(spec_for(files, {"type": "processes", "workers": 2}, workers=2))
    assert "compression.algorithms[1].params.workers" in str(info.value)


@pytest.mark.parametrize("entry, path, phrase", [
    pytest.param({"type": "dask"}, "engine.executor", "needs one of 'address'", id="dask-without-where"),
    pytest.param({"type": "dask", "address": "tcp://h:1", "local_workers": 2}, "engine.executor", "needs one of",
                 id="dask-with-both"),
    pytest.param({"type": "processes"}, "engine.executor", "needs 'workers'", id="processes-without-workers"),
    pytest.param({"type": "local", "workers": 2}, "engine.executor.workers", "does not apply", id="local-workers"),
    pytest.param({"type": "processes", "workers": 2, "address": "tcp://h:1"}, "engine.executor.address",
                 "does not apply to executor type 'processes'", id="processes-address"),
    pytest.param({"type": "ray"}, "engine.executor.type", "", id="unknown-type"),
    pytest.param({"type": "processes", "workers": 0}, "engine.executor.workers", "", id="zero-workers"),
])
def test_bad_executor_entries_are_spec_errors_with_their_path(files: Path, entry, path, phrase) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_for(files, entry))
    assert any(p == path and phrase in m for p, m in info.value.problems), info.value.problems


def test_the_default_executor_is_local_and_the_api_takes_a_client(client) -> None:
    assert type(executor_from_spec(None)) is Executor
    assert type(executor_from_spec({"type": "processes", "workers": 1})) is Executor  # one process: this one
    wrapped = as_executor(client)
    assert isinstance(wrapped, DaskExecutor) and not wrapped.owned
    with pytest.raises(TypeError, match="distributed.Client"):
        as_executor("tcp://h:1")


def test_an_unreachable_scheduler_is_exit_2_naming_the_address(files: Path, tmp_path: Path, capsys) -> None:
    import json

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for(files, {"type": "dask", "address": "tcp://127.0.0.1:9",
                                                 "connect_timeout": 1})))
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tcp://127.0.0.1:9" in err and "engine.executor.address" in err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_without_distributed_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    with pytest.raises(BadInputError, match=r"aaq\[dask\]"):
        DaskExecutor(local_workers=2).open()


def test_an_interrupted_run_closes_the_local_cluster_it_started(files: Path, monkeypatch) -> None:
    closed = []

    class FakeCluster:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

        def close(self) -> None:
            closed.append("cluster")

    class FakeClient:
        def __init__(self, cluster, timeout) -> None:
            self.cluster = cluster

        def scheduler_info(self) -> dict:
            return {"workers": {"a": {}, "b": {}}}

        def close(self) -> None:
            closed.append("client")

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("aaq.pipeline.run_algorithm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(spec_for(files, {"type": "dask", "local_workers": 2}), progress=False).run()
    assert closed == ["client", "cluster"]


class WorkerOnlyFailure(Accuracy):
    """Top-1 that raises anywhere but in the process that made it: a plugin broken on the workers only."""

    def __init__(self) -> None:
        super().__init__()
        self.home = os.getpid()

    def score(self, outputs, labels):
        if os.getpid() != self.home:
            raise RuntimeError("no GPU on this worker")
        return super().score(outputs, labels)


def test_a_task_that_raises_names_the_worker_the_group_and_the_error(files: Path, client, caplog) -> None:
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.engine import Engine

    data = np.load(files / "data.npz")
    engine = Engine(ArrayDataset({"x": data["x"]}, data["y"]), [WorkerOnlyFailure()], batch_size=32,
                    progress=False, executor=client)
    spec = spec_for(files, tune_hyperparams=False, convert_to_mixed_preset=False)
    spec["engine"]["metrics"] = [{"name": "top1", "type": "accuracy"}]
    with caplog.at_level(logging.WARNING, logger="aaq"):
        result = Pipeline(spec, progress=False).run(engine=engine)
    warnings = [r.getMessage() for r in caplog.records if "parallel ranking failed" in r.getMessage()]
    assert len(warnings) == 1
    assert "worker tcp://127.0.0.1:" in warnings[0] and "group " in warnings[0]
    assert "RuntimeError: no GPU on this worker" in warnings[0]
    assert outcome(result)[0] == [["g2"]]  # this process ranked instead: the same answer


class SlowOnWorkers(Accuracy):
    """Top-1 that takes seconds anywhere but in the process that made it: a worker that stops answering."""

    def __init__(self) -> None:
        super().__init__()
        self.home = os.getpid()

    def score(self, outputs, labels):
        if os.getpid() != self.home:
            import time
            time.sleep(3)
        return super().score(outputs, labels)


def test_a_cluster_that_stops_answering_is_given_up_after_task_timeout(files: Path, client, caplog) -> None:
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.engine import Engine

    data = np.load(files / "data.npz")
    executor = DaskExecutor(client=client, task_timeout=0.5)
    engine = Engine(ArrayDataset({"x": data["x"]}, data["y"]), [SlowOnWorkers()], batch_size=32,
                    progress=False, executor=executor)
    spec = spec_for(files, tune_hyperparams=False, convert_to_mixed_preset=False)
    with caplog.at_level(logging.WARNING, logger="aaq"):
        result = Pipeline(spec, progress=False).run(engine=engine)
    warnings = [r.getMessage() for r in caplog.records if "parallel ranking failed" in r.getMessage()]
    assert len(warnings) == 1 and "no task finished in 0.5 s" in warnings[0]
    assert outcome(result)[0] == [["g2"]]


def test_tuning_ranks_its_fallback_units_on_the_executor(files: Path, client) -> None:
    """Tuning's basic strategy: no model-wise config passes, the units are ranked on the cluster, same answer."""
    space = {"model_wise": {"weight": {"granularity": ["per_channel"]}, "activation": {"scheme": ["sym"]}}}
    spec = spec_for(files)
    spec["compression"]["algorithms"] = [{"name": "Tuning", "params": {
        "strategy": {"name": "basic", "alternatives": False},  # straight to the ranked fallback
        "accuracy_criterion": {"absolute": 0.05}, "ranking_subset_size": 32,
        "exit_policy": {"timeout": 0, "max_trials": 6}, "tuning_space": space}}]
    local = Pipeline(spec, progress=False).run()
    dask = Pipeline(spec, progress=False).run(executor=client)
    rankings = [r.algorithms[-1].summary["rankings"] for r in (local, dask)]
    assert rankings[0] and rankings[0] == rankings[1]
    assert local.model.SerializeToString(deterministic=True) == dask.model.SerializeToString(deterministic=True)
    assert dask.report()["executors"][0]["tasks"] == len(rankings[0][0]["order"])


def tuning_spec(root: Path, batch: int, max_trials: int = 4) -> dict:
    """Exhaustive tuning over 4 model-wise configs of a model that none of them saves: every trial fails, so
    each one's early stop depends on the best failing trial known when its batch started."""
    spec = spec_for(root)
    space = {"model_wise": {"weight": {"granularity": ["per_tensor", "per_channel"]},
                            "activation": {"scheme": ["asym", "sym"]}}}
    spec["compression"]["algorithms"] = [{"name": "Tuning", "params": {
        "strategy": {"name": "exhaustive", "batch": batch}, "accuracy_criterion": {"absolute": 0.01},
        "exit_policy": {"timeout": 36000, "max_trials": max_trials}, "tuning_space": space}}]
    return spec


def trials_of(result) -> tuple:
    summary = result.algorithms[-1].summary
    trials = [{k: v for k, v in t.items() if k != "seconds"} for t in summary["trials"]]
    return trials, summary["best"], summary["evaluations"], result.report()["evaluations"]


def test_a_batch_of_tuning_trials_gives_the_same_trials_on_every_executor(files: Path, client) -> None:
    local = Pipeline(tuning_spec(files, 2), progress=False).run()
    pool = ProcessExecutor(2)
    processes = Pipeline(tuning_spec(files, 2), progress=False).run(executor=pool)
    dask = Pipeline(tuning_spec(files, 2), progress=False).run(executor=client)
    trials = trials_of(local)[0]
    assert len(trials) == 4 and not any(t["passed"] for t in trials)
    assert any(t["stopped"] == "decided" for t in trials)  # early stops happened: the bound mattered
    assert trials_of(processes) == trials_of(local)
    assert trials_of(dask) == trials_of(local)
    assert local.model.SerializeToString(deterministic=True) == dask.model.SerializeToString(deterministic=True)
    (figures,) = dask.report()["executors"]
    assert figures["tasks"] == 4 and figures["dataset"] == "by_reference"  # both batches ran on the workers
    assert figures["dataset_bytes_per_context"] < 256 * 8 + 400  # the indices of the set, not its samples
    # With batch 1 every trial is bounded by all the trials before it: not the same run.
    sequential = Pipeline(tuning_spec(files, 1), progress=False).run()
    assert trials_of(sequential)[2] != trials_of(local)[2]


def test_resuming_a_batched_tuning_replays_its_trials_and_ends_as_the_straight_run(files: Path,
                                                                                   tmp_path: Path) -> None:
    import json

    def run(spec: dict, out: Path, *extra: str) -> dict:
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(spec))
        assert main(["run", str(path), "--output-dir", str(out), "--no-progress", "--no-html", *extra]) == 3  # not met
        return json.loads((out / "report.json").read_text())["algorithms"][-1]["summary"]

    straight = run(tuning_spec(files, 2, max_trials=4), tmp_path / "straight")
    run(tuning_spec(files, 2, max_trials=3), tmp_path / "out")  # batches [1, 2] and [3]
    resumed = run(tuning_spec(files, 2, max_trials=4), tmp_path / "out", "--resume")  # [1, 2], then [3 replayed, 4]
    assert resumed["replayed_trials"] == 3
    strip = lambda trials: [{k: v for k, v in t.items() if k != "seconds"} for t in trials]  # noqa: E731
    assert strip(resumed["trials"]) == strip(straight["trials"]) and resumed["best"] == straight["best"]


@pytest.mark.parametrize("strategy, phrase", [
    pytest.param({"name": "exhaustive", "batch": 0}, "must be an integer >= 1, got 0", id="zero"),
    pytest.param({"name": "random", "batch": 1.5}, "must be an integer >= 1, got 1.5", id="fraction"),
    pytest.param({"name": "basic", "batch": 2}, "strategy 'basic' takes no option 'batch'", id="basic"),
])
def test_a_bad_batch_is_a_spec_error_with_its_path(files: Path, strategy: dict, phrase: str) -> None:
    spec = tuning_spec(files, 2)
    spec["compression"]["algorithms"][0]["params"]["strategy"] = strategy
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert any(p.startswith("compression.algorithms[0].params.strategy") and phrase in m
               for p, m in info.value.problems), info.value.problems
