"""``aaq validate`` and ``aaq run`` go through one validation path: the same specs refused, before any inference."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import plugins  # noqa: F401  (registers TagModel)
from aaq.cli import main
from helpers import TINY

DQ, AAQ = "DefaultQuantization", "AccuracyAwareQuantization"


def tiny_spec(*algorithms: dict) -> dict:
    return {"model": {"path": str(TINY / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(TINY / "data.npz"), "inputs": {"x": "x"},
                                   "labels": "y"},
                       "metrics": [{"name": "top1", "type": "accuracy"}]},
            "compression": {"algorithms": list(algorithms) or [{"name": DQ}]}}


def with_metric_twice() -> dict:
    spec = tiny_spec()
    spec["engine"]["metrics"].append(copy.deepcopy(spec["engine"]["metrics"][0]))
    return spec


# name -> (spec, JSON path in the error, phrase): faults that need the resolved spec, not just the schema
SEMANTIC_FAULTS = {
    "watched metric not in the engine": (
        tiny_spec({"name": DQ}, {"name": AAQ, "params": {"metrics": [{"name": "top5"}]}}),
        "compression.algorithms[1].params.metrics[0].name", "no metric 'top5' in engine.metrics"),
    "base_params that would not be used": (
        tiny_spec({"name": DQ}, {"name": AAQ, "params": {"base_params": {"preset": "mixed"}}}),
        "compression.algorithms[1].params.base_params", "would not be used"),
    "base params that do not fit the base algorithm": (
        tiny_spec({"name": AAQ, "params": {"base_params": {"stat_subset_size": 0}}}),
        "compression.algorithms[0].params.base_params.stat_subset_size", "must be >= 1"),
    "a base algorithm that makes no plan": (
        tiny_spec({"name": AAQ, "params": {"base_algorithm": "TagModel"}}),
        "compression.algorithms[0].params.base_algorithm", "makes no quantization plan"),
    "a param that would be ignored": (
        tiny_spec({"name": DQ}, {"name": AAQ, "params": {"metric_subset_ratio": 0.3}}),
        "compression.algorithms[1].params.metric_subset_ratio", "only used when every watched metric"),
    "an ignored node that does not exist": (
        tiny_spec({"name": DQ, "params": {"ignored": {"scope": ["conv9"]}}}),
        "compression.algorithms[0].params.ignored.scope[0]", "no node named 'conv9'"),
    "a metric name used twice": (with_metric_twice(), "engine.metrics[1].name", "used twice"),
    "a missing data file": (
        {**tiny_spec(), "engine": {**tiny_spec()["engine"],
                                   "dataset": {"type": "npz", "path": "nowhere.npz", "inputs": {"x": "x"}}}},
        "engine.dataset.path", "file not found"),
}


@pytest.mark.parametrize("name", sorted(SEMANTIC_FAULTS))
def test_validate_and_run_refuse_the_same_spec_before_any_inference(name: str, tmp_path: Path, capsys,
                                                                     session_runs: list) -> None:
    spec, path, phrase = SEMANTIC_FAULTS[name]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    assert main(["validate", str(spec_file)]) == 2
    validate_error = capsys.readouterr().err
    assert path in validate_error and phrase in validate_error
    assert main(["run", str(spec_file), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    run_error = capsys.readouterr().err
    assert run_error == validate_error
    assert session_runs == [], "a spec fault must cost no inference"
    assert not (tmp_path / "out" / "report.json").exists()


def test_an_output_dir_that_does_not_exist_yet_is_not_a_fault(tmp_path: Path) -> None:
    spec = {**tiny_spec(), "output": {"dir": str(tmp_path / "not" / "yet")}}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    assert main(["validate", str(spec_file)]) == 0
