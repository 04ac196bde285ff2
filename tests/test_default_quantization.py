"""DefaultQuantization as an algorithm: params <-> schema, template, bias correction, errors, summary."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from aaq.algorithms import algorithms
from aaq.algorithms.base import run_algorithm
from aaq.algorithms.default import DefaultQuantization
from aaq.errors import ModelError, SpecError
from aaq.params import check_params_class
from aaq.state import PipelineState
from helpers import MINMAX, FakeEngine, all_outputs, images, quantize, run
from models import ModelBuilder, conv_net, mlp

ROOT = Path(__file__).resolve().parents[1]


def test_registered_with_params_mirroring_the_schema() -> None:
    cls = algorithms.get("DefaultQuantization")
    assert cls is DefaultQuantization
    check_params_class("DefaultQuantization", cls.Params, cls.schema)
    schema = json.loads((ROOT / "aaq/schemas/DefaultQuantization.schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema")

    def walk(node: dict, path: str) -> None:
        assert node.get("additionalProperties") is False, path
        for key, sub in node["properties"].items():
            assert "default" in sub and sub.get("description"), f"{path}.{key}"
            if sub.get("type") == "object":
                walk(sub, f"{path}.{key}")

    walk(schema, "params")


def _strip_comments(text: str) -> str:
    return re.sub(r'("(?:\\.|[^"\\])*")|//[^\n]*', lambda m: m.group(1) or "", text)


def test_template_lists_every_param_at_its_default_with_a_comment() -> None:
    path = ROOT / "algorithms_specs/DefaultQuantization.json"
    text = path.read_text()
    spec = json.loads(_strip_comments(text))
    (entry,) = spec["compression"]["algorithms"]
    assert entry["name"] == "DefaultQuantization"
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(DefaultQuantization.Params)}
    assert entry["params"] == defaults
    for key in defaults:
        line = next(line for line in text.splitlines() if f'"{key}"' in line)
        assert "//" in line, f"{key} has no comment"


def test_a_model_with_nothing_to_quantize_says_so() -> None:
    mb = ModelBuilder()
    x = mb.add_input("x", ["N", 4])
    mb.add_output(mb.add_relu(x), ["N", 4])
    with pytest.raises(ModelError, match="nothing to quantize"):
        quantize(mb.build(), np.ones((4, 4), np.float32))


def test_an_ignored_name_that_matches_nothing_is_an_error_with_the_nearest_names() -> None:
    with pytest.raises(SpecError, match=r"ignored\.scope\[0\]: no node named 'conv_1' \(nearest: 'conv1'"):
        quantize(conv_net(), images(8), ignored={"scope": ["conv_1"]})


def test_summary_tells_what_was_done() -> None:
    state, algorithm = quantize(conv_net(), images(32), ignored={"scope": ["conv2"]})
    summary = algorithm.summary
    assert summary["layers"] == ["conv1", "fc"]
    assert summary["groups"] == 2 and summary["ignored"] == {"conv2": "scope"}
    assert summary["bias_corrections"] == 2
    assert state.records[-1].summary == summary
    assert state.plan is not None and state.model is not state.float_model


def _mean_error(model, quantized, x, tensor: str) -> float:
    f = all_outputs(model, x, [tensor])[tensor]
    q = all_outputs(quantized, x, [tensor])[tensor]
    return float(np.abs((q - f).mean(axis=(0, 2, 3))).mean())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "measured"])
def test_bias_correction_reduces_the_output_mean_error(fast: bool) -> None:
    """4-bit weights make the per-channel mean shift large; correction must shrink it on new data."""
    model, calib, held_out = conv_net(seed=3), images(128, seed=1), images(128, seed=2)
    errors = {}
    for corrected in (False, True):
        state, _ = quantize(model, calib, weights={"bits": 4}, bias_correction=corrected, use_fast_bias=fast)
        errors[corrected] = _mean_error(model, state.model, held_out, "conv2_out")
    assert errors[True] < 0.5 * errors[False]


def test_reverting_a_bias_corrected_group_restores_the_float_bias() -> None:
    from aaq.quantization.qdq import apply_plan

    model = conv_net()
    state, _ = quantize(model, images(32))
    layer = state.plan.layer("conv1")
    assert layer.bias is not None and not np.allclose(layer.bias.corrected, layer.bias.original)
    reverted = apply_plan(model, state.plan.with_reverted([state.plan.group_of("conv1").id]))
    conv = next(n for n in reverted.graph.node if n.name == "conv1")
    bias = next(i for i in reverted.graph.initializer if i.name == conv.input[2])
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(bias), layer.bias.original)


def test_statistics_are_declared_on_the_prepared_model_and_collected_in_one_pass() -> None:
    model = conv_net()
    algorithm = DefaultQuantization(DefaultQuantization.Params(activations=MINMAX))  # no histogram pass
    state = PipelineState(float_model=model, model=model)
    (needs,) = algorithm.statistics_needs(state)
    assert needs.model is not model and needs.num_samples == 300
    assert {r.tensor for r in needs.requests} == {"x", "relu3_out", "relu6_out", "fc_out", "flatten_out"}
    engine = FakeEngine(images(16))
    new_state = run_algorithm(algorithm, state, engine, progress=False)
    assert len(engine.calls) == 1  # one pass for every request
    assert not new_state.statistics.missing(needs)
    again = DefaultQuantization(DefaultQuantization.Params(preset="mixed", activations=MINMAX))
    run_algorithm(again, new_state, engine, progress=False)
    assert len(engine.calls) == 2  # only what the mixed preset adds is collected
    assert set(engine.calls[1]) < set(engine.calls[0])


def test_measured_bias_correction_goes_through_the_one_collector() -> None:
    engine = FakeEngine(images(16))
    algorithm = DefaultQuantization(DefaultQuantization.Params(use_fast_bias=False, activations=MINMAX))
    state = run_algorithm(algorithm, PipelineState(float_model=conv_net(), model=conv_net()), engine,
                          progress=False)
    assert len(engine.calls) == 2  # ranges, then the twin model's output means
    assert len(state.statistics) == len(algorithm.statistics_needs(state)[0].requests) + 2 * 3


def test_the_float_model_is_never_modified() -> None:
    model = conv_net()
    before = model.SerializeToString()
    state, _ = quantize(model, images(16), preset="mixed", use_fast_bias=False)
    assert model.SerializeToString() == before
    assert state.float_model.SerializeToString() == before


def test_mlp_quantizes_within_a_few_percent() -> None:
    model = mlp()
    x = np.random.default_rng(0).normal(0, 1, (128, 16)).astype(np.float32)
    state, _ = quantize(model, x)
    f, q = run(model, x), run(state.model, x)
    assert np.sqrt(((f - q) ** 2).mean() / (f ** 2).mean()) < 0.05
    assert (f.argmax(1) == q.argmax(1)).mean() > 0.95
