"""Synthetic benchmark cases built in code: a model, calibration inputs and labeled evaluation inputs.

``outlier_cnn`` is a small CNN with one planted outlier activation channel: the
failure mode that separates range estimators. One channel of the first conv is a
high-gain detector (gain ``gain``, threshold at the ``fire_quantile`` of its own
response over the data): it is zero almost everywhere and, on the few samples where
it fires, reaches tens of times the range of every other channel of that tensor.
The next conv reads it with weights scaled down by the same gain, so the float
network is ordinary. A per-tensor activation range that covers the largest spike
seen in calibration (the max of per-sample maxima) leaves the other 15 channels a
handful of int8 levels; a range from the typical sample (mean or median of
per-sample maxima, quantiles) clips the rare spikes and keeps the rest fine.

``gaussian_mlp`` is the opposite case: a tabular MLP whose activations have few values
per sample (16 to 64) and no outliers, where each sample's extreme is far below the
extremes of the calibration set, so an estimator that averages per-sample extremes
clips ordinary values.

Labels are the float model's own top-1 class (the metric is top-1 agreement with
float, 1.0 for the float model), as in ``samples/tiny``. Everything is seeded:
the same arguments give the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
CLASSES = 10


@dataclass(frozen=True)
class SyntheticCase:
    """A model with its data: ``calib`` and ``x`` are inputs of ``input_name``, ``y`` the labels of ``x``."""

    name: str
    model: onnx.ModelProto
    input_name: str
    calib: np.ndarray
    x: np.ndarray
    y: np.ndarray
    metric: str
    planted: dict


def finish(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    """The checked model of ``graph`` (IR 8, so every ONNX Runtime and peer here loads it)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="aaq-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def labeled_images(rng: np.random.Generator, templates: np.ndarray, count: int,
                   noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Class templates with random contrast plus smooth noise (what a conv net sees as structure), and the classes."""
    classes = rng.integers(0, len(templates), count)
    contrast = rng.uniform(0.5, 1.5, (count, 1, 1, 1)).astype(np.float32)
    grain = rng.standard_normal((count, *templates.shape[1:])).astype(np.float32)
    grain = (grain + np.roll(grain, 1, axis=2) + np.roll(grain, 1, axis=3)) / 3.0
    return (templates[classes] * contrast + noise * grain).astype(np.float32), classes.astype(np.int64)


def _conv(name: str, x: str, w: np.ndarray, b: np.ndarray, stride: int) -> tuple[list, list]:
    nodes = [helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}_out"], name=name,
                              kernel_shape=list(w.shape[2:]), pads=[1, 1, 1, 1], strides=[stride, stride]),
             helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu")]
    return nodes, [numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
                   numpy_helper.from_array(b.astype(np.float32), f"{name}.b")]


def _graph(w: dict[str, np.ndarray], size: int, outputs: str = "logits") -> onnx.ModelProto:
    nodes, inits = [], []
    x = "x"
    for name, stride in (("conv1", 1), ("conv2", 2), ("conv3", 2)):
        n, i = _conv(name, x, w[f"{name}.w"], w[f"{name}.b"], stride)
        nodes += n
        inits += i
        x = f"{name}_relu"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    inits += [numpy_helper.from_array(w["fc.w"].astype(np.float32), "fc.w"),
              numpy_helper.from_array(w["fc.b"].astype(np.float32), "fc.b")]
    out_shape = {"logits": [None, CLASSES], "flat": [None, None]}.get(outputs, [None, None, None, None])
    graph = helper.make_graph(
        nodes, "outlier_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, size, size])],
        [helper.make_tensor_value_info(outputs, TensorProto.FLOAT, out_shape)], inits)
    model = finish(graph)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def outlier_cnn(seed: int = 0, n_calib: int = 200, n_eval: int = 1000, size: int = 16, gain: float = 200.0,
                readback: float = 1.0,
                fire_quantile: float = 0.9995) -> SyntheticCase:
    """The outlier-channel CNN (see the module docstring) and its seeded data.

    ``gain`` is how far the planted channel's spikes reach beyond the others (200: about
    27x the largest value of any other channel); it fires on about ``1 - fire_quantile``
    of its positions, so on a minority of samples (16 of 200 calibration samples with
    the defaults); ``readback`` scales how much a spike moves the next conv, in units of
    a normal channel's weights.
    """
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((CLASSES, 3, size, size)).astype(np.float32)
    calib, x = labeled_images(rng, templates, n_calib)[0], labeled_images(rng, templates, n_eval)[0]
    w = {"conv1.w": rng.standard_normal((16, 3, 3, 3)) * 0.25, "conv1.b": rng.uniform(0.0, 0.2, 16),
         "conv2.w": rng.standard_normal((32, 16, 3, 3)) * 0.12, "conv2.b": rng.uniform(0.0, 0.2, 32),
         "conv3.w": rng.standard_normal((32, 32, 3, 3)) * 0.09, "conv3.b": rng.uniform(0.0, 0.2, 32),
         "fc.w": rng.standard_normal((CLASSES, 32)) * 0.5, "fc.b": np.zeros(CLASSES)}
    # The detector: channel 15 of conv1, unit-norm filter, threshold at its own response's quantile.
    detector = rng.standard_normal((3, 3, 3))
    detector /= np.linalg.norm(detector)
    w["conv1.w"][15], w["conv1.b"][15] = detector, 0.0
    probe = _graph(w, size, outputs="conv1_out")
    response = _run(probe, np.concatenate([calib, x]))[:, 15]
    threshold = float(np.quantile(response, fire_quantile))
    w["conv1.w"][15] *= gain
    w["conv1.b"][15] = -gain * threshold
    w["conv2.w"][:, 15] *= readback / gain  # the spikes reach the next layer at readback x a normal channel
    # A classifier head on standardized features, so the float model's classes are balanced.
    features = _run(_graph(w, size, outputs="flat"), calib)
    w["fc.w"] = w["fc.w"] / (features.std(axis=0) + 1e-6)
    w["fc.b"] = -w["fc.w"] @ features.mean(axis=0)
    model = _graph(w, size)
    y = _run(model, x).argmax(axis=1).astype(np.int64)
    spikes = _run(_graph(w, size, outputs="conv1_relu"), calib)
    per_sample = spikes.reshape(len(calib), 16, -1).max(axis=2)
    planted = {"channel": 15, "tensor": "conv1_relu", "gain": gain, "fire_quantile": fire_quantile,
               "calib_samples_firing": int((per_sample[:, 15] > 0).sum()),
               "spike_max": float(per_sample[:, 15].max()),
               "other_channels_max": float(per_sample[:, :15].max()),
               "mean_of_per_sample_max": float(per_sample.max(axis=1).mean())}
    return SyntheticCase("outlier_cnn", model, "x", calib, x, y, "top-1 agreement with the float model", planted)


def gaussian_mlp(seed: int = 0, n_calib: int = 200, n_eval: int = 1000, features: int = 16,
                 hidden: int = 64) -> SyntheticCase:
    """A 3-layer MLP (MatMul, Relu, MatMul, Relu, Gemm) on unit Gaussian rows of ``features`` values."""
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((n_calib, features)).astype(np.float32)
    x = rng.standard_normal((n_eval, features)).astype(np.float32)
    w1 = (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden / 2)).astype(np.float32)
    w3 = (rng.standard_normal((CLASSES, hidden)) / np.sqrt(hidden / 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(w3, "w3"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b3")]
    graph = helper.make_graph(nodes, "gaussian_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, CLASSES])], inits)
    model = finish(graph)
    y = _run(model, x).argmax(axis=1).astype(np.int64)
    return SyntheticCase("gaussian_mlp", model, "x", calib, x, y, "top-1 agreement with the float model",
                         {"values_per_sample": {"x": features, "r1": hidden, "r2": hidden}})


if __name__ == "__main__":
    for case in (outlier_cnn(), gaussian_mlp()):
        print(case.name, case.planted, np.bincount(case.y, minlength=CLASSES))
