"""SmoothQuant: same float outputs, the scale folded where it can be, less error on outlier channels; bad alpha."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from aaq import SpecError
from aaq.quantization.smooth import smooth, smooth_targets
from aaq.spec.validate import load_spec
from helpers import all_outputs, base_spec, quantize, run
from models import ModelBuilder

C, T = 16, 6


def _block(layernorm: bool, seed: int = 0) -> onnx.ModelProto:
    """x[N,T,C] -> (LayerNorm with 2 outlier channels) -> MatMul(C->32) -> Relu -> MatMul(32->C) -> y."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", T, C])
    if layernorm:
        gamma = np.ones(C, np.float32)
        gamma[[3, 11]] = 40.0
        x = mb.add_node("LayerNormalization", [x, mb.add_initializer(gamma, "g"),
                                               mb.add_initializer(np.zeros(C, np.float32), "beta")],
                        name="ln", axis=-1)
    h = mb.add_relu(mb.add_matmul(x, C, 32, name="fc1", scale=0.2))
    y = mb.add_matmul(h, 32, C, name="fc2", scale=0.2)
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", ["N", T, C])
    return mb.build(opset=17)


def _data(n: int = 64, outliers: bool = True, seed: int = 3) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (n, T, C)).astype(np.float32)
    if outliers:
        x[:, :, [3, 11]] *= 40.0
    return x


def _maxima(model: onnx.ModelProto, x: np.ndarray):
    targets = smooth_targets(model)
    values = all_outputs(model, x, [t.tensor for t in targets])
    return targets, {t.request: np.abs(values[t.tensor]).reshape(-1, C if values[t.tensor].shape[-1] == C
                                                                else values[t.tensor].shape[-1]).max(axis=0)
                     for t in targets}


@pytest.mark.parametrize("layernorm", [True, False], ids=["folded into LayerNorm", "explicit Mul"])
def test_smoothed_model_computes_the_same(layernorm: bool) -> None:
    model, x = _block(layernorm), _data(16, outliers=not layernorm)
    targets, maxima = _maxima(model, x)
    result = smooth(model, targets, maxima, alpha=0.5)
    assert result.smoothed[targets[0].tensor]["into"].startswith("LayerNormalization" if layernorm else "Mul")
    before, after = run(model, x), run(result.model, x)
    assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))


def test_smoothing_evens_the_activation_channels() -> None:
    model, x = _block(True), _data(16, outliers=False)
    targets, maxima = _maxima(model, x)
    result = smooth(model, targets, maxima, alpha=0.5)
    ln_out = targets[0].tensor
    per_channel = np.abs(all_outputs(result.model, x, [ln_out])[ln_out]).reshape(-1, C).max(axis=0)
    original = maxima[targets[0].request]
    assert original.max() / np.median(original) > 20
    assert per_channel.max() / np.median(per_channel) < 0.5 * original.max() / np.median(original)


@pytest.mark.parametrize("layernorm", [True, False], ids=["LayerNorm", "graph input"])
def test_quantized_error_drops_with_smooth_quant(layernorm: bool) -> None:
    model, x = _block(layernorm), _data(64, outliers=not layernorm)
    reference = run(model, x)
    errors = {}
    for enabled in (False, True):
        state, algo = quantize(model, x, smooth_quant={"enabled": enabled, "alpha": 0.5}, bias_correction=False)
        errors[enabled] = float(np.mean((run(state.model, x) - reference) ** 2))
    assert errors[True] < 0.5 * errors[False], errors
    assert algo.summary["smooth_quant"]["smoothed"]


def test_no_outlier_no_explicit_mul() -> None:
    model, x = _block(False), _data(16, outliers=False)
    targets, maxima = _maxima(model, x)
    result = smooth(model, targets, maxima, alpha=0.5)
    assert not result.smoothed and "no outlier channel" in result.skipped["x"]


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_0_1_is_a_spec_error_with_its_path(alpha: float) -> None:
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "DefaultQuantization",
                                          "params": {"smooth_quant": {"enabled": True, "alpha": alpha}}}]
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert "compression.algorithms[0].params.smooth_quant.alpha" in [p for p, _ in info.value.problems]
