"""The Python API: Pipeline(spec).run(model, engine) and Result.save."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

import plugins  # noqa: F401
from aaq import Algorithm, Pipeline, PluginError, register_algorithm
from aaq.engine.engine import Engine
from helpers import TINY, base_spec


@register_algorithm("TouchFloatModel")
class TouchFloatModel(Algorithm):
    """Breaks the contract on purpose: edits the float model in place."""

    @dataclass(frozen=True)
    class Params:
        pass

    schema = {"type": "object", "additionalProperties": False, "properties": {}}

    def run(self, state, engine):
        state.float_model.graph.node[0].name = "renamed"
        return state


def test_run_on_a_model_proto_leaves_the_callers_model_untouched(tmp_path: Path) -> None:
    model = onnx.load(str(TINY / "model.onnx"))
    before = model.SerializeToString()
    result = Pipeline(base_spec(), progress=False).run(model)
    assert model.SerializeToString() == before
    assert {p.key: p.value for p in result.model.metadata_props} == {"aaq.tag": "v"}
    assert result.target_met and result.metrics["top1"].drop == pytest.approx(0.0)
    path = result.save(tmp_path / "out")
    assert onnx.load(str(path)).metadata_props[0].value == "v"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["spec"]["compression"]["algorithms"][0]["params"]["repeat"] == 1
    assert report["totals"]["evaluations"] == len(report["evaluations"]) >= 1


def test_run_accepts_a_users_engine(tmp_path: Path) -> None:
    pipeline = Pipeline(base_spec(), progress=False)
    engine = Engine.from_spec(pipeline.spec.resolved["engine"], pipeline.spec.base_dir, progress=False)
    result = pipeline.run(str(TINY / "model.onnx"), engine)
    assert result.evaluations == engine.history


def test_an_algorithm_that_edits_the_float_model_is_stopped() -> None:
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "TouchFloatModel"}]
    with pytest.raises(PluginError, match="modified state.float_model"):
        Pipeline(spec, progress=False).run()


def test_algorithms_run_in_order_over_one_state() -> None:
    spec = base_spec()
    spec["compression"]["algorithms"] = [
        {"name": "TagModel", "params": {"key": "first"}},
        {"name": "TagModel", "params": {"key": "second", "value": "x", "repeat": 2}},
    ]
    result = Pipeline(spec, progress=False).run()
    assert [(p.key, p.value) for p in result.model.metadata_props] == [("first", "tagged"), ("second", "xx")]
    assert [r.params["key"] for r in result.algorithms] == ["first", "second"]
