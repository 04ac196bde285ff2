"""AccuracyAwareQuantization end to end on a tiny real model with one layer INT8 destroys.

``models.sensitive_mlp``: only reverting g2's group brings the accuracy back.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from aaq import Pipeline, SpecError
from aaq.algorithms.base import algorithms, run_algorithm
from aaq.engine.engine import Engine
from aaq.engine.metrics import Metric
from aaq.spec.validate import load_spec
from aaq.state import PipelineState, model_digest
from helpers import accuracy_aware_spec
from models import labeled_data, sensitive_mlp, write_case

AAQ = "AccuracyAwareQuantization"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = write_case(tmp_path_factory.mktemp("sensitive"), sensitive_mlp, 256)
    return root


def run(root: Path, params: dict | None = None, **kwargs):
    result = Pipeline(accuracy_aware_spec(root, params, **kwargs), progress=False).run()
    return result, result.algorithms[-1].summary


def assert_runs_in_float(model: onnx.ModelProto, float_model: onnx.ModelProto, layer: str) -> None:
    """No Q/DQ feeds ``layer``: its inputs are what they are in the float model, its weight the float weight."""
    node = next(n for n in model.graph.node if n.name == layer)
    original = next(n for n in float_model.graph.node if n.name == layer)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert list(node.input) == list(original.input)
    assert all(producers.get(t) not in ("DequantizeLinear", "QuantizeLinear") for t in node.input)
    readers = [n.op_type for n in model.graph.node for t in n.input if t == node.input[0]]
    assert "QuantizeLinear" not in readers
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    floats = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[1]], floats[original.input[1]])


def test_after_default_quantization_exactly_the_sensitive_layer_is_reverted(files: Path) -> None:
    # auto_eval_samples 0: DefaultQuantization's auto ranges would evaluate the start on every sample, and the
    # start's evaluation here, served from that cache, could not show the early stop
    result, summary = run(files, dq={"activations": {"range_estimator": {"auto_eval_samples": 0}}})
    assert result.target_met and summary["target_met"]
    assert [r["layers"] for r in summary["reverted"]] == [["g2"]]
    assert [r.name for r in result.algorithms] == ["DefaultQuantization", AAQ]  # no second quantization
    assert_runs_in_float(result.model, sensitive_mlp(), "g2")
    for quantized in ("g1", "fc"):
        node = next(n for n in result.model.graph.node if n.name == quantized)
        assert any(t.endswith("_dequantized_" + quantized) for t in node.input)
    top1 = summary["metrics"]["top1"]
    assert top1["drop"] <= 0.05 and top1["final"] == pytest.approx(result.metrics["top1"].quantized)
    assert summary["reverted"][0]["drops_after"]["top1"] == pytest.approx(top1["drop"])
    assert summary["evaluations"]["full_stopped_early"] >= 1
    assert summary["latency"]["batch_size"] == 32 and "float model" in summary["latency"]["statement"]
    import onnxruntime as ort
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_alone_it_runs_its_base_algorithm_with_base_params(files: Path) -> None:
    result, summary = run(files, {"base_params": {"stat_subset_size": 64}}, alone=True)
    assert [r.name for r in result.algorithms] == ["DefaultQuantization", AAQ]
    assert result.algorithms[0].params["stat_subset_size"] == 64
    assert summary["base_params"]["stat_subset_size"] == 64
    assert result.target_met and [r["layers"] for r in summary["reverted"]] == [["g2"]]


@pytest.mark.parametrize("params", [
    pytest.param({"search": "bisection"}, id="bisection"),
    pytest.param({"ranking_method": "output_distance"}, id="output_distance"),
    pytest.param({"early_stop": False}, id="no-early-stop"),
    pytest.param({"use_prev_if_drop_increase": False, "seed": 3, "ranking_subset_size": 40}, id="other-knobs"),
])
def test_every_search_setting_finds_the_same_layer(files: Path, params: dict) -> None:
    result, summary = run(files, params)
    assert result.target_met and [r["layers"] for r in summary["reverted"]] == [["g2"]]
    if params.get("early_stop") is False:
        assert summary["evaluations"]["full_stopped_early"] == 0


def test_early_stop_saves_samples_without_changing_the_outcome(files: Path) -> None:
    _, early = run(files)
    _, full = run(files, {"early_stop": False})
    assert early["metrics"] == full["metrics"] and early["reverted"] == full["reverted"]
    assert early["evaluations"]["full_samples_inferred"] <= full["evaluations"]["full_samples_inferred"]


def test_target_not_met_returns_the_best_model_and_says_so(files: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="aaq"):
        result, summary = run(files, {"maximal_drop": 0.0, "max_iter_num": 0})
    assert not result.target_met and result.targets == {"top1": False}
    assert summary["groups_reverted"] == 0 and "max_iter_num" in summary["stop_reason"]
    assert any("target NOT met" in r.getMessage() for r in caplog.records)


def test_baselines_skip_the_float_evaluation_and_ratio_picks_the_comparison(files: Path) -> None:
    spec = load_spec(accuracy_aware_spec(files, {"metrics": [{"name": "top1", "baseline_value": 1.0}],
                                      "metric_subset_ratio": 0.25, "ranking_subset_size": 16}))
    engine = Engine.from_spec(spec.resolved["engine"], spec.base_dir, progress=False)
    float_model = onnx.load(str(files / "model.onnx"))
    engine.set_float_model(float_model)
    state = PipelineState(float_model, float_model)
    for entry in spec.resolved["compression"]["algorithms"]:
        state = run_algorithm(algorithms.get(entry["name"]).from_spec(entry["params"]), state, engine,
                              progress=False)
    float_runs = [h for h in engine.history if h.model_digest == model_digest(float_model)]
    assert float_runs and all(h.samples <= 64 for h in float_runs)  # only the 25% comparison subset
    assert state.targets == {"top1": True}
    assert state.metrics["float"] == {}  # never measured on the full set
    assert state.references == {"top1": {"value": 1.0, "kind": "baseline_value"}}


def test_mixed_preset_and_tuning_are_kept_only_when_they_lower_the_drop(files: Path) -> None:
    result, summary = run(files, {"convert_to_mixed_preset": True, "tune_hyperparams": True})
    alternatives = summary["alternatives"]
    assert alternatives["mixed_preset"]["tried"][0]["params"] == {"preset": "mixed"}
    for what in ("mixed_preset", "tune_hyperparams"):
        record = alternatives.get(what)
        if record and record["kept"] is not None:
            assert record["objective_after"] < record["objective_before"]
    assert len(alternatives["tune_hyperparams"]["tried"]) >= 3
    assert result.target_met


def test_spec_problems_are_found_before_any_run(files: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(accuracy_aware_spec(files, {"metrics": [{"name": "top5"}], "base_params": {"preset": "mixed"}}))
    problems = dict(info.value.problems)
    assert "no metric 'top5' in engine.metrics" in problems["compression.algorithms[1].params.metrics[0].name"]
    assert "would not be used" in problems["compression.algorithms[1].params.base_params"]
    with pytest.raises(SpecError, match="base_params.stat_subset_size"):
        Pipeline(accuracy_aware_spec(files, {"base_params": {"stat_subset_size": 0}}, alone=True), progress=False)
    with pytest.raises(SpecError, match="use_prev_if_drop_increase: applies to search 'greedy' only"):
        Pipeline(accuracy_aware_spec(files, {"search": "bisection", "use_prev_if_drop_increase": False}), progress=False)
    with pytest.raises(SpecError, match="metric_subset_ratio: is only used when every watched metric"):
        Pipeline(accuracy_aware_spec(files, {"metric_subset_ratio": 0.3}), progress=False)
    with pytest.raises(SpecError, match="unknown algorithm 'Nope'"):
        Pipeline(accuracy_aware_spec(files, {"base_algorithm": "Nope"}, alone=True), progress=False)


class MacroRecall(Metric):
    """Mean per-class recall: not a mean over samples, so it declares ``per_sample = False``."""

    per_sample = False

    def __init__(self) -> None:
        self.name = "macro_recall"

    def score(self, outputs, labels):
        pred = next(iter(outputs.values())).argmax(axis=1)
        return list(zip(pred.tolist(), np.asarray(labels).tolist()))

    def aggregate(self, entries) -> float:
        pairs = np.array(list(entries))
        return float(np.mean([np.mean(pairs[pairs[:, 1] == c, 0] == c) for c in np.unique(pairs[:, 1])]))


def run_direct(engine: Engine, model: onnx.ModelProto, params: dict):
    """DefaultQuantization then AAQ through ``run_algorithm``, on a hand-built engine."""
    from aaq.spec.validate import fill_defaults

    engine.set_float_model(model)
    state = PipelineState(model, model)
    for name, values in (("DefaultQuantization", {}), (AAQ, params)):
        cls = algorithms.get(name)
        algo = cls.from_spec(fill_defaults(values, cls.schema))
        state = run_algorithm(algo, state, engine, progress=False)
    return state, algo.summary


def test_several_metrics_including_one_without_per_sample_values(files: Path) -> None:
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.metrics import Accuracy

    data = np.load(files / "data.npz")
    engine = Engine(ArrayDataset({"x": data["x"]}, data["y"]), [Accuracy(), MacroRecall()], batch_size=32,
                    progress=False)
    state, summary = run_direct(engine, sensitive_mlp(), {"maximal_drop": 0.05})
    assert state.targets == {"top1": True, "macro_recall": True}
    assert [r["layers"] for r in summary["reverted"]] == [["g2"]]
    assert set(summary["metrics"]) == {"top1", "macro_recall"}


def test_output_distance_ranking_needs_no_labels(files: Path) -> None:
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.metrics import Agreement

    data = np.load(files / "data.npz")
    engine = Engine(ArrayDataset({"x": data["x"]}), [Agreement("top1")], batch_size=32, progress=False)
    state, summary = run_direct(engine, sensitive_mlp(), {"maximal_drop": 0.05, "ranking_method": "output_distance"})
    assert state.targets == {"agreement_top1": True}
    assert [r["layers"] for r in summary["reverted"]] == [["g2"]]
    assert summary["reverted"][0]["score"] < 0  # minus a distance


def test_workers_fall_back_to_this_process_when_a_metric_cannot_travel(files: Path, caplog) -> None:
    from aaq.engine.datasets import ArrayDataset
    from aaq.engine.metrics import Accuracy

    metric = Accuracy()
    metric.hook = lambda: None  # lambdas do not pickle
    data = np.load(files / "data.npz")
    engine = Engine(ArrayDataset({"x": data["x"]}, data["y"]), [metric], batch_size=32, progress=False)
    with caplog.at_level(logging.WARNING, logger="aaq"):
        state, summary = run_direct(engine, sensitive_mlp(), {"maximal_drop": 0.05, "workers": 2})
    assert any("parallel ranking failed" in r.getMessage() for r in caplog.records)
    assert state.targets == {"top1": True} and [r["layers"] for r in summary["reverted"]] == [["g2"]]


def test_with_every_baseline_given_the_float_model_runs_on_the_comparison_subset_only(files: Path) -> None:
    result, summary = run(files, {"metrics": [{"name": "top1", "baseline_value": 1.0}],
                                  "metric_subset_ratio": 0.25, "ranking_subset_size": 16})
    report = result.report()
    assert 0 < report["totals"]["float_model_samples_inferred"] <= 64  # 25% of 256, the closing summary included
    assert result.metrics["top1"].float is None and result.metrics["top1"].reference_kind == "baseline_value"
    assert summary["metrics"]["top1"]["reference_kind"] == "baseline_value"


def test_a_wrong_baseline_value_never_makes_the_report_contradict_itself(files: Path) -> None:
    # the float model's real top-1 is 1.0; with a baseline of 0.9 a drop of up to 0.15 looks fine
    result, summary = run(files, {"metrics": [{"name": "top1", "baseline_value": 0.9}], "maximal_drop": 0.05})
    outcome = result.metrics["top1"]
    assert outcome.reference == 0.9 and outcome.reference_kind == "baseline_value"
    assert result.target_met == (outcome.drop <= 0.05)
    assert summary["metrics"]["top1"]["drop"] == pytest.approx(outcome.drop)
    assert result.report()["metrics"]["top1"]["reference_kind"] == "baseline_value"


def test_a_base_algorithm_that_makes_no_plan_is_a_spec_error(files: Path) -> None:
    import plugins  # noqa: F401  (registers TagModel)

    with pytest.raises(SpecError, match="base_algorithm: TagModel makes no quantization plan"):
        Pipeline(accuracy_aware_spec(files, {"base_algorithm": "TagModel"}, alone=True), progress=False)


def test_the_report_keeps_every_ranking_what_alternatives_had_to_beat_and_the_final_plan(files: Path) -> None:
    result, summary = run(files, {"tune_hyperparams": True, "maximal_drop": 0.0})
    assert summary["rankings"], "at least one ranking was made"
    for ranking in summary["rankings"]:
        assert ranking["subset_size"] >= 1 and ranking["metric"] == "top1"
        assert [s["score"] for s in ranking["scores"]] and all("group" in s for s in ranking["scores"])
    tried = summary["alternatives"]["tune_hyperparams"]["tried"]
    assert tried and all("to_beat" in t and "subset_score" in t for t in tried)
    plan = summary["plan"]
    reverted = {r["group"] for r in summary["reverted"]}
    assert {g["id"] for g in plan["groups"] if g["reverted"]} == reverted
    for group in summary["reverted"]:
        for layer in group["layers"]:
            assert "reverted by AccuracyAwareQuantization" in plan["float_layers"][layer]
    assert all("scale" in a and "zero_point" in a for a in plan["activations"])


def test_greedy_retries_a_rolled_back_group_after_the_model_changed(tmp_path: Path) -> None:
    """The tiny conv net with no drop allowed and a one-sample ranking: a rollback must not end the search."""
    from models import conv_net

    onnx.save(conv_net(), str(tmp_path / "model.onnx"))
    x, y = labeled_data(conv_net, n=256)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    outcomes = {}
    for rollback in (True, False):
        result, summary = run(tmp_path, {"maximal_drop": 0.0, "ranking_subset_size": 1,
                                         "use_prev_if_drop_increase": rollback})
        outcomes[rollback] = result.target_met
        rolled = [k for k, s in enumerate(summary["steps"]) if not s["kept"]]
        for k in rolled:  # every rolled-back group came back once a later revert was kept
            later_kept = [s for s in summary["steps"][k + 1:] if s["kept"]]
            if later_kept and not result.target_met:
                assert any(s["group"] == summary["steps"][k]["group"] for s in summary["steps"][k + 1:])
        assert summary["stop_reason"] != "no group left to revert" or not rolled
    assert outcomes == {True: True, False: True}


def test_the_calibration_log_says_how_many_samples_were_used(files: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="aaq"):
        run(files, dq={"stat_subset_size": 300})
    lines = [r.getMessage() for r in caplog.records if "calibration samples" in r.getMessage()]
    assert lines and all("on 256 calibration samples" in line for line in lines)
