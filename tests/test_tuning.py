"""Tuning end to end on tiny real models: exit cases, basic / mse fallback, objectives, history, bad input.

``sensitive_mlp`` (test_accuracy_aware): g2's INT8 input destroys the accuracy, so no
model-wise config meets the criterion and only falling g2's group back does.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from aaq import Pipeline
from aaq.cli import main
from aaq.engine.metrics import Accuracy, metrics, register_metric
from aaq.tuning.monitor import MAX_TRIALS, TIMEOUT
from aaq.tuning.objectives import Footprint, MeasureContext
from helpers import TINY
from models import ModelBuilder, add_hardswish, sensitive_mlp, write_case

SLOW_BATCH_SECONDS = 0.1


class SlowAccuracy(Accuracy):
    """Top-1 that takes a while per batch and bounds nothing (no early stop): a trial the deadline interrupts."""

    bounds = None

    def score(self, outputs, labels):
        time.sleep(SLOW_BATCH_SECONDS)
        return super().score(outputs, labels)


if "slow_accuracy" not in metrics:
    register_metric("slow_accuracy")(SlowAccuracy)


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory) -> Path:
    root = write_case(tmp_path_factory.mktemp("sensitive"), sensitive_mlp, 256)
    return root


def spec(root: Path, params: dict, metric: str = "accuracy") -> dict:
    return {"model": {"name": "m", "path": str(root / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(root / "data.npz"), "inputs": {"x": "x"},
                                   "labels": "y"},
                       "metrics": [{"name": "top1", "type": metric}], "batch_size": 32},
            "compression": {"algorithms": [{"name": "Tuning", "params": params}]}}


def run(root: Path, params: dict, tmp_path: Path | None = None, **kwargs):
    result = Pipeline(spec(root, params, **kwargs), progress=False).run(output_dir=tmp_path)
    return result, result.algorithms[-1].summary


def test_basic_falls_back_only_the_layer_that_matters_and_stops_at_the_criterion(sensitive, tmp_path) -> None:
    # The fallback phase alone (the whole-model alternatives before it are tested in test_algorithm_recipes).
    result, summary = run(sensitive, {"accuracy_criterion": {"absolute": 0.05},
                                      "strategy": {"name": "basic", "alternatives": False}}, tmp_path)
    assert summary["exit"] == "criterion met" and result.target_met
    assert summary["best"]["config"]["fallback"] == ["g2"]
    fallback = [t for t in summary["trials"] if t["phase"] == "fallback"]
    assert [t["config"]["fallback"] for t in fallback] == [["g2"]]
    assert summary["rankings"][0]["method"] == "metric"
    # 4 model-wise configs and one fallback: INC would also evaluate each of the 3 ops' fallback in full
    assert summary["evaluations"]["full"] < 4 + 3 + 1
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    lines = (tmp_path / "tuning_history.jsonl").read_text().splitlines()
    assert len(lines) == len(summary["trials"])
    first = json.loads(lines[0])
    assert set(first) >= {"trial", "config", "objectives", "accuracy", "passed", "seconds"}
    last = json.loads(lines[-1])
    assert last["passed"] is True and last["objectives"]["performance"] > 0
    assert last["measurements"]["performance"]["ratio_to_float"] > 0


def test_mse_ranks_by_layer_output_error(sensitive) -> None:
    result, summary = run(sensitive, {"strategy": {"name": "mse"}, "accuracy_criterion": {"absolute": 0.05}})
    assert result.target_met and "g2" in summary["best"]["config"]["fallback"]
    (ranking,) = summary["rankings"]
    scores = [entry["score"] for entry in ranking["order"]]
    assert ranking["method"] == "mse" and scores == sorted(scores, reverse=True) and scores[0] > 0.01


def test_max_trials_reached_returns_the_best_so_far(sensitive, tmp_path) -> None:
    params = {"strategy": {"name": "exhaustive"}, "exit_policy": {"timeout": 0, "max_trials": 2}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec(sensitive, params)))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 3
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    summary = report["algorithms"][0]["summary"]
    assert summary["exit"] == MAX_TRIALS and len(summary["trials"]) == 2 and not summary["target_met"]
    complete = [t for t in summary["trials"] if t["complete"]]
    assert summary["best"]["trial"] == max(complete, key=lambda t: t["accuracy"])["trial"]
    assert summary["best"]["why"].startswith("no config met the criterion")
    assert len((tmp_path / "out" / "tuning_history.jsonl").read_text().splitlines()) == 2


def test_timeout_stops_the_running_trial(caplog) -> None:
    params = {"strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 0.0},
              "tuning_space": {"model_wise": {"activation": {"scheme": ["asym"]}}},
              "exit_policy": {"timeout": 1.2, "max_trials": 10}}
    with caplog.at_level(logging.INFO, logger="aaq"):
        result, summary = run(TINY, params, metric="slow_accuracy")
    assert summary["exit"] == TIMEOUT
    last = summary["trials"][-1]
    assert last["stopped"] == "timeout" and not last["complete"]
    assert summary["best"]["metrics"]["top1"] > 0.5
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[tuning]")]
    assert re.fullmatch(r"\[tuning\] trial 1 start: \{.*\}", messages[0])
    assert re.fullmatch(r"\[tuning\] trial \d+ end: stopped \(timeout\) accuracy \? \(top1 \[.*\]\) objectives - "
                        r"in \d+\.\d\d s", messages[-2]), messages
    assert re.fullmatch(r"\[tuning\] end: timeout reached; best trial \d+ of \d+ \(.*\); \d+\.\d s", messages[-1])


def test_the_objective_picks_among_passing_configs(tmp_path) -> None:
    params = {"strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 0.1}, "objective": "modelsize",
              "tuning_space": {"model_wise": {"activation": {"scheme": ["sym"]}}},
              "exit_policy": {"timeout": 600, "max_trials": 2}}
    result, summary = run(TINY, params)
    passing = [t for t in summary["trials"] if t["passed"]]
    assert len(passing) == 2
    sizes = {t["config"]["weight"]["granularity"]: t["objectives"]["modelsize"] for t in passing}
    assert sizes["per_tensor"] < sizes["per_channel"]
    assert summary["best"]["config"]["weight"]["granularity"] == "per_tensor"
    assert summary["best"]["objectives"]["modelsize"] == len(result.model.SerializeToString())
    _, latency = run(TINY, {**params, "objective": ["performance", "accuracy"]})
    assert all(t["objectives"]["performance"] > 0 and 0 < t["objectives"]["accuracy"] <= 1
               for t in latency["trials"] if t["passed"])


def test_footprint_is_measured_in_a_fresh_process() -> None:
    class Engine:
        batch_size, num_samples, providers = 4, 8, ["CPUExecutionProvider"]
        dataset = [type("S", (), {"inputs": {"x": np.zeros((3, 8, 8), np.float32)}, "label": None})()] * 8

    model = onnx.load(str(TINY / "model.onnx"))
    try:
        value = Footprint().measure(model, MeasureContext(Engine(), model, 1.0))
    except Exception as exc:  # the dataset stand-in must fit aaq's fetch; say so rather than skip silently
        raise AssertionError(f"footprint failed: {exc}")
    assert value > 0


def test_first_conv_recipe_keeps_the_first_layer_in_float() -> None:
    params = {"strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 1.0}, "objective": "accuracy",
              "recipes": {"first_conv_or_matmul_quantization": False}, "exit_policy": {"timeout": 0, "max_trials": 1}}
    result, summary = run(TINY, params)
    assert summary["best"]["config"]["fallback"] == ["conv1"]
    conv1 = next(n for n in result.model.graph.node if n.name == "conv1")
    assert not any("dequantized" in i for i in conv1.input)


BAD = {
    "unknown strategy": ({"strategy": {"name": "basci"}}, "params.strategy.name", "did you mean 'basic'"),
    "unknown objective": ({"objective": "latency"}, "params.objective", "unknown objective 'latency'"),
    "weights do not match": ({"multi_objectives": {"objective": ["accuracy", "performance"], "weight": [1, 2, 3]}},
                             "params.multi_objectives.weight", "3 values for 2 objectives"),
    "negative timeout": ({"exit_policy": {"timeout": -1}}, "params.exit_policy.timeout", "must be >= 0"),
    "op-wise unknown node": ({"tuning_space": {"op_wise": {"/conv9/Conv": {"activation": {"dtype": ["fp32"]}}}}},
                             "params.tuning_space.op_wise./conv9/Conv", "no node named '/conv9/Conv'"),
    "no quantized choice": ({"tuning_space": {"model_wise": {"activation": {"dtype": ["fp32"]}}}},
                            "params.tuning_space.model_wise.activation.dtype", "no quantized choice"),
    "unknown range algorithm": ({"tuning_space": {"model_wise": {"activation": {"algorithm": ["kll"]}}}},
                                "params.tuning_space.model_wise.activation.algorithm", "must be one of"),
    "a run that never ends": ({"strategy": {"name": "random"}, "calibration": {"sampling_size": list(range(1, 70))},
                               "exit_policy": {"timeout": 0, "max_trials": 0}}, "params.exit_policy",
                              "would not end"),
    "another approach": ({"approach": "post_training_dynamic_quant"}, "params.approach", "only "),
    "metric weights": ({"metric_weight": [0.5, 0.5]}, "params.metric_weight", "2 values for 1 metrics"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_refused_before_any_inference(name, tmp_path, capsys, session_runs) -> None:  # noqa: F811
    params, path, phrase = BAD[name]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec(TINY, params)))
    assert main(["validate", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"compression.algorithms[0].{path}" in err and phrase in err, err
    assert main(["run", str(spec_file), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == err
    assert session_runs == []


def test_concat_recipe_puts_the_inputs_of_a_concat_on_one_grid() -> None:
    from onnx import helper

    from aaq.quantization.recipes import share_concat_scales
    from helpers import images, quantize
    from models import ModelBuilder

    mb = ModelBuilder(3)
    x = mb.add_input("x", ["N", 3, 8, 8])
    a = mb.add_relu(mb.add_conv(x, 3, 4, name="a", scale=0.1))
    b = mb.add_conv(x, 3, 4, name="b", scale=1.0)
    y = mb.add_node("Concat", [a, b], "concat", axis=1)
    y = mb.add_conv(y, 8, 4, name="c")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 4, 8, 8])
    state, _ = quantize(mb.build(), images(32), quantize_ops=["Conv", "Concat"])
    inputs = [q for q in state.plan.quantizers.values() if any(n == "concat" for n, _ in q.site.consumers)]
    assert len({q.scale for q in inputs}) == 2
    plan, edited = share_concat_scales(state.plan)
    shared = [plan.quantizers[q.tensor] for q in inputs]
    assert edited == ["concat"] and len({(q.scale, q.zero_point) for q in shared}) == 1
    assert min(q.low for q in shared) <= min(q.low for q in inputs) and \
        max(q.high for q in shared) >= max(q.high for q in inputs)


def _accuracy_fn():
    data = np.load(TINY / "data.npz")
    x, y = data["x"], data["y"]

    def accuracy(model: onnx.ModelProto) -> float:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return float((session.run(None, {"x": x})[0].argmax(axis=1) == y).mean())

    return accuracy, x


def test_autotune_runs_the_config_set_in_order_and_returns_a_result(tmp_path) -> None:
    from aaq.autotune import Evaluator, TuningConfig, autotune

    accuracy, x = _accuracy_fn()
    config = TuningConfig(config_set=[{"preset": ["performance", "mixed"], "stat_subset_size": 32},
                                      {"weights": {"granularity": "pertensor"}, "stat_subset_size": 32}],
                          max_trials=3, tolerable_loss=0.05)
    result = autotune(TINY / "model.onnx", config, Evaluator({"eval_fn": accuracy, "name": "top1"}), {"x": x[:64]},
                      batch_size=16, output_dir=tmp_path)
    summary = result.algorithms[-1].summary
    schemes = [(t["config"]["activation"]["scheme"], t["config"]["weight"]["granularity"]) for t in summary["trials"]]
    assert schemes[0] == ("sym", "per_channel") and summary["exit"] == "criterion met" and result.target_met
    assert len(schemes) == 1  # the first config meets a 5 % loss: timeout 0 stops there
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert result.metrics["top1"].quantized == pytest.approx(accuracy(result.model))
    assert (tmp_path / "tuning_history.jsonl").exists()
    weighted = autotune(TINY / "model.onnx", TuningConfig(max_trials=1, tolerable_loss=0.5),
                        [{"eval_fn": accuracy, "name": "a", "weight": 0.25}, {"eval_fn": accuracy, "name": "b"}],
                        {"x": x[:64]}, batch_size=16)
    assert weighted.algorithms[-1].summary["best"]["accuracy"] == pytest.approx(0.75 * accuracy(weighted.model))


def test_autotune_refuses_a_bad_config_before_running() -> None:
    from aaq import SpecError
    from aaq.autotune import TuningConfig, autotune

    accuracy, x = _accuracy_fn()
    with pytest.raises(SpecError, match="exit_policy.timeout: must be >= 0"):
        autotune(TINY / "model.onnx", TuningConfig(timeout=-1), accuracy, {"x": x[:8]})
    with pytest.raises(SpecError, match=r"config_set\[1\]: differs from config_set\[0\]"):
        autotune(TINY / "model.onnx", TuningConfig(config_set=[{}, {"bias_correction": False}]), accuracy, {"x": x[:8]})


def test_after_default_quantization_its_params_are_the_base_of_every_config() -> None:
    entries = [{"name": "DefaultQuantization", "params": {"bias_correction": False, "stat_subset_size": 100}},
               {"name": "Tuning", "params": {"strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 0.1},
                                             "exit_policy": {"timeout": 0, "max_trials": 1}}}]
    full = spec(TINY, {})
    full["compression"]["algorithms"] = entries
    result = Pipeline(full, progress=False).run()
    assert [r.name for r in result.algorithms] == ["DefaultQuantization", "Tuning"]
    assert result.target_met and not any("bias_corrected" in i for n in result.model.graph.node for i in n.input)


def test_histogram_trials_on_the_same_samples_share_one_pass(monkeypatch) -> None:
    """kl and percentile, symmetric (|x| histograms) and not (x histograms): one pass over the calibration
    samples serves all four configs."""
    import aaq.statistics.collector as collector

    passes = []
    real = collector.collect_statistics

    def counted(engine, model, requests, *args, **kwargs):
        passes.append(sorted({r.reducer for r in requests}))
        return real(engine, model, requests, *args, **kwargs)

    monkeypatch.setattr(collector, "collect_statistics", counted)
    params = {"strategy": {"name": "exhaustive"}, "accuracy_criterion": {"absolute": 1.0},
              "tuning_space": {"model_wise": {"activation": {"algorithm": ["kl", "percentile"],
                                                             "scheme": ["sym", "asym"]},
                                              "weight": {"granularity": ["per_channel"]}}},
              "exit_policy": {"timeout": 600, "max_trials": 4}}
    result, summary = run(TINY, params)
    tried = {(t["config"]["activation"]["algorithm"], t["config"]["activation"]["scheme"]) for t in summary["trials"]}
    assert tried == {(a, s) for a in ("kl", "percentile") for s in ("sym", "asym")} and result.target_met
    histogram_passes = [p for p in passes if set(p) & set(collector.HISTOGRAM_REDUCERS)]
    assert len(histogram_passes) == 1, passes
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])



def dw_hardswish_block(seed: int = 3, channels: int = 24) -> onnx.ModelProto:
    """x[N,16,8,8] -> Conv 1x1 -> Relu -> depthwise 3x3 (24 channels) -> hard-swish -> Conv 1x1 -> Flatten -> y: the
    depthwise conv is a layer DefaultQuantization's ``latency_aware: "rules"`` keeps in float for speed (the
    float hard-swish after it means it would not sit between quantizers anyway)."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 16, 8, 8])
    h = mb.add_relu(mb.add_conv(x, 16, channels, kernel=1, name="expand"))
    h = add_hardswish(mb, mb.add_conv(h, channels, channels, kernel=3, name="dw", group=channels))
    y = mb.add_node("Flatten", [mb.add_conv(h, channels, 16, kernel=1, name="project")], "flatten", axis=1)
    mb.nodes.append(onnx.helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 16 * 8 * 8])
    return mb.build()


def _float_convs(model: onnx.ModelProto) -> list[str]:
    """Conv nodes whose weight is no DequantizeLinear output: the layers left in float (a float layer may still
    read the dequantized output its producer's quantizer writes for other readers)."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and producer.get(n.input[1]) != "DequantizeLinear"]


@pytest.mark.parametrize("latency_aware, in_float", [("rules", ["dw"]), ("off", [])])
def test_base_params_latency_aware_off_leaves_no_layer_in_float_for_speed(tmp_path, latency_aware, in_float) -> None:
    # Tuning alone takes DefaultQuantization's latency_aware from base_params: "off" quantizes every layer, as INC
    root = write_case(tmp_path, dw_hardswish_block, 64)
    result, summary = run(root, {"accuracy_criterion": {"absolute": 1.0}, "exit_policy": {"timeout": 0, "max_trials": 1},
                                 "base_params": {"latency_aware": latency_aware}})
    assert summary["exit"] == "criterion met" and summary["best"]["config"]["fallback"] == []
    assert _float_convs(result.model) == in_float
