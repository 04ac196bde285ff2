"""The u8 x s8 saturation probe, and weights.reduce_range following it."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import aaq.algorithms.default as default_module
from aaq.engine.kernels import _probe_model, u8s8_saturates
from models import conv_net
from helpers import images, quantize


def _probe_error(weight_value: int) -> float:
    """How far ONNX Runtime's integer MatMul of 1.0 x ``weight_value`` lands from the exact answer."""
    model = _probe_model()
    weight = next(i for i in model.graph.initializer if i.name == "w")
    depth, columns = weight.dims
    weight.raw_data = np.full((depth, columns), weight_value, np.int8).tobytes()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((4, depth), np.float32)})
    return float(np.abs(y - depth * weight_value / 127).max())


def test_the_probe_tells_whether_8_bit_weights_are_computed_right_here() -> None:
    """On every machine the 7-bit range is exact; the 8-bit one is wrong exactly where the probe says so."""
    step = 2.0 * 64 / 255  # the probe's output quantizer step
    assert _probe_error(63) <= step
    assert (_probe_error(127) > 0.05 * 64) == u8s8_saturates()


@pytest.mark.parametrize("saturating, levels", [(True, 63), (False, 127)])
def test_auto_reduce_range_follows_the_measured_kernels(monkeypatch, saturating: bool, levels: int) -> None:
    monkeypatch.setattr(default_module, "u8s8_saturates", lambda providers: saturating)
    state, algorithm = quantize(conv_net(), images(16))
    assert max(int(np.abs(layer.weight.values).max()) for layer in state.plan.layers) == levels
    assert algorithm.summary["weights_reduce_range"] is saturating
    assert ("7-bit weights" in algorithm.summary["headline"]) is saturating


def test_an_explicit_reduce_range_is_not_measured(monkeypatch) -> None:
    def probe(providers):
        raise AssertionError("the probe must not run when reduce_range is given")

    monkeypatch.setattr(default_module, "u8s8_saturates", probe)
    state, _ = quantize(conv_net(), images(16), weights={"reduce_range": True})
    assert max(int(np.abs(layer.weight.values).max()) for layer in state.plan.layers) == 63
