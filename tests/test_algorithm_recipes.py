"""The new algorithms as Tuning recipes (dimensions of the space) and as AccuracyAwareQuantization alternatives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from aaq import Pipeline, SpecError
from aaq.spec.validate import load_spec
from aaq.tuning.space import TuningSpace, dq_overrides
from helpers import base_spec
from models import ModelBuilder


def test_recipe_lists_are_dimensions_and_become_dq_params() -> None:
    space = TuningSpace.from_params({}, [100], {"cross_layer_equalization": [False, True], "smooth_quant": True,
                                                "smooth_quant_args": {"alpha": [0.3, 0.7]}})
    configs = space.quantize_configs()
    recipes = {c.recipe for c in configs}
    assert len(recipes) == 4  # 2 CLE x 2 alpha
    overrides = [dq_overrides(c) for c in configs]
    assert {o["smooth_quant"]["alpha"] for o in overrides} == {0.3, 0.7}
    assert {o["cross_layer_equalization"] for o in overrides} == {False, True}
    assert all(o["smooth_quant"]["enabled"] for o in overrides)
    assert len({c.plan_key for c in configs}) == len(configs)


def test_alpha_is_no_dimension_while_smooth_quant_is_off() -> None:
    space = TuningSpace.from_params({}, [100], {"smooth_quant": False, "smooth_quant_args": {"alpha": [0.3, 0.7]}})
    assert len(space.quantize_configs()) == len(TuningSpace.from_params({}, [100]).quantize_configs())


def _tuning_spec(recipes: dict) -> dict:
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "Tuning", "params": {"recipes": recipes}}]
    return spec


@pytest.mark.parametrize("recipes, path, phrase", [
    ({"smooth_qaunt": True}, "compression.algorithms[0].params.recipes", "did you mean 'smooth_quant'"),
    ({"smooth_quant_args": {"alpha": [0.5, 1.2]}}, "compression.algorithms[0].params.recipes.smooth_quant_args.alpha",
     ""),
    ({"cross_layer_equalization": "yes"}, "compression.algorithms[0].params.recipes.cross_layer_equalization", ""),
])
def test_bad_recipes_are_spec_errors_with_their_path(recipes: dict, path: str, phrase: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_tuning_spec(recipes))
    messages = [m for p, m in info.value.problems if p == path]
    assert messages and any(phrase in m for m in messages), info.value.problems


def _gain_cnn(gain: float = 150.0, seed: int = 0) -> onnx.ModelProto:
    """conv1 with one output channel ``gain`` times the others, conv2 reading it ``gain`` times smaller."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 3, 8, 8])
    x = mb.add_relu(mb.add_conv(x, 3, 8, name="c1"))
    x = mb.add_relu(mb.add_conv(x, 8, 8, name="c2"))
    x = mb.add_node("GlobalAveragePool", [x], "gap")
    x = mb.add_node("Flatten", [x], "flat", axis=1)
    y = mb.add_gemm(x, 8, 10, name="fc")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", 10])
    inits = {i.name: i for i in mb.initializers}
    nodes = {n.name: n for n in mb.nodes}
    for name, axis, factor in (("c1", 0, gain), ("c2", 1, 1 / gain)):
        init = inits[nodes[name].input[1]]
        w = onnx.numpy_helper.to_array(init).copy()
        w[(slice(None),) * axis + (0,)] *= factor
        init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    bias = inits[nodes["c1"].input[2]]
    b = onnx.numpy_helper.to_array(bias).copy()
    b[0] *= gain
    bias.CopyFrom(onnx.numpy_helper.from_array(b, bias.name))
    return mb.build()


@pytest.fixture(scope="module")
def gain_case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gain")
    model = _gain_cnn()
    onnx.save(model, str(root / "model.onnx"))
    x = np.random.default_rng(2).normal(0, 1, (256, 3, 8, 8)).astype(np.float32)
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(root / "data.npz", x=x, y=logits.argmax(axis=1))
    return root


def _aaq(root: Path, tune: bool, tmp_path: Path):
    spec = {"model": {"name": "m", "path": str(root / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(root / "data.npz"), "inputs": {"x": "x"}, "labels": "y"},
                       "metrics": [{"name": "top1", "type": "accuracy"}], "batch_size": 64},
            "compression": {"algorithms": [
                {"name": "DefaultQuantization", "params": {"latency_aware": "off", "stat_subset_size": 128,
                                                           "activations": {"range_estimator": {"preset": "default"}}}},
                {"name": "AccuracyAwareQuantization", "params": {"maximal_drop": 0.01, "tune_hyperparams": tune,
                                                                 "confidence": None}}]}}
    result = Pipeline(spec, progress=False).run(output_dir=tmp_path)
    return result.algorithms[-1].summary


def test_alternatives_find_a_whole_model_fix_before_reverting_any_group(gain_case: Path, tmp_path: Path) -> None:
    plain = _aaq(gain_case, False, tmp_path / "plain")
    tuned = _aaq(gain_case, True, tmp_path / "tuned")
    reverted = lambda s: len(s.get("reverted_groups") or s.get("reverted") or [])  # noqa: E731
    assert reverted(plain) > 0, plain.get("headline")
    assert plain["slow_fix"]["before"]["ratio"] > 0  # a mix with float groups is timed against float
    assert reverted(tuned) == 0, tuned.get("headline")
    kept = tuned["alternatives"]["tune_hyperparams"]["kept"]
    assert kept, tuned["alternatives"]


def _basic(root: Path, alternatives: bool, tmp_path: Path):
    spec = {"model": {"name": "m", "path": str(root / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(root / "data.npz"), "inputs": {"x": "x"}, "labels": "y"},
                       "metrics": [{"name": "top1", "type": "accuracy"}], "batch_size": 64},
            "compression": {"algorithms": [
                {"name": "Tuning", "params": {"accuracy_criterion": {"absolute": 0.01},
                                              "strategy": {"name": "basic", "alternatives": alternatives},
                                              "base_params": {"latency_aware": "off"}}}]}}
    result = Pipeline(spec, progress=False).run(output_dir=tmp_path)
    return result.algorithms[-1].summary


def test_basic_tries_the_whole_model_alternatives_before_any_op_falls_back(gain_case: Path, tmp_path: Path) -> None:
    plain = _basic(gain_case, False, tmp_path / "plain")
    tuned = _basic(gain_case, True, tmp_path / "tuned")
    assert plain["target_met"] and plain["best"]["config"]["fallback"], plain["headline"]
    assert not any(t["phase"] == "alternatives" for t in plain["trials"])
    assert tuned["target_met"] and tuned["best"]["config"]["fallback"] == [], tuned["headline"]
    phases = [t["phase"] for t in tuned["trials"]]
    assert "alternatives" in phases and "fallback" not in phases
    assert phases.index("alternatives") == sum(p == "model_wise" for p in phases)  # right after the model-wise
    assert tuned["best"]["config"]["alternative"], tuned["best"]


def test_basic_alternatives_option_must_be_a_boolean() -> None:
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "Tuning", "params": {"strategy": {"name": "basic",
                                                                                    "alternatives": "yes"}}}]
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert any(p == "compression.algorithms[0].params.strategy.alternatives" for p, _ in info.value.problems), \
        info.value.problems
