"""An 8-layer CNN with planted outlier channels and true labels, built in code, seeded (issue 19's network).

Seven Conv+Relu layers and a Gemm head: eight quantizable groups, like the CNN the
issue measured the peers on. Two channels are planted detectors (``conv1`` channel
15 and ``conv4`` channel 31): each has a high gain and a threshold at a high quantile
of its own response, so it is zero almost everywhere and, on the few samples where it
fires, reaches many times the range of every other channel of its tensor. The next
conv reads it with weights divided by the same gain, so the float network is ordinary.

Unlike ``synthetic_cases.outlier_cnn`` (labels are the float model's own top-1, on
a network every perturbation moves), the labels here are the true classes of the
images, and the head is a ridge fit of the flattened last feature map on a separate
training set: the float model is confident on most images, so full INT8 costs the
points the ranges cost, not the points any rounding would cost.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from synthetic_cases import CLASSES, SyntheticCase, _conv, _run, finish, labeled_images

# (name, output channels, stride); the input has 3 channels
LAYERS = (("conv1", 16, 1), ("conv2", 16, 1), ("conv3", 32, 2), ("conv4", 32, 1), ("conv5", 32, 2),
          ("conv6", 48, 1), ("conv7", 48, 1))
DETECTORS = {"conv1": 15, "conv4": 31}  # layer -> planted channel


def _graph(w: dict[str, np.ndarray], size: int, upto: str | None = None) -> onnx.ModelProto:
    """The network; with ``upto``, a probe whose output is that tensor (a layer's pre-Relu output or "flat")."""
    nodes, inits, x = [], [], "x"
    for name, _, stride in LAYERS:
        n, i = _conv(name, x, w[f"{name}.w"], w[f"{name}.b"], stride)
        nodes, inits, x = nodes + n, inits + i, f"{name}_relu"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    out, shape = upto or "logits", [None, None]
    if upto is None:
        nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
        inits += [numpy_helper.from_array(w["fc.w"].astype(np.float32), "fc.w"),
                  numpy_helper.from_array(w["fc.b"].astype(np.float32), "fc.b")]
        shape = [None, CLASSES]
    elif upto != "flat":
        shape = [None, None, None, None]
    graph = helper.make_graph(
        nodes, "deep_outlier_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)], inits)
    return finish(graph)


def deep_outlier_cnn(seed: int = 0, n_calib: int = 200, n_eval: int = 1000, n_train: int = 2000, size: int = 16,
                     gain: float = 40.0, fire_quantile: float = 0.9995, noise: float = 3.5,
                     ridge: float = 1.0) -> SyntheticCase:
    """The 8-layer CNN (see the module docstring) with its calibration, evaluation and (unreturned) training data."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((CLASSES, 3, size, size)).astype(np.float32)
    calib, _ = labeled_images(rng, templates, n_calib, noise)
    x, y = labeled_images(rng, templates, n_eval, noise)
    train, train_y = labeled_images(rng, templates, n_train, noise)
    w: dict[str, np.ndarray] = {}
    cin = 3
    for name, cout, _ in LAYERS:
        w[f"{name}.w"] = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))
        w[f"{name}.b"] = rng.uniform(0.0, 0.1, cout)
        cin = cout
    planted = {}
    for position, (name, cout, _) in enumerate(LAYERS):
        if name not in DETECTORS:
            continue
        channel, reader = DETECTORS[name], LAYERS[position + 1][0]
        w[f"{name}.w"][channel] /= np.linalg.norm(w[f"{name}.w"][channel])
        w[f"{name}.b"][channel] = 0.0
        probe = _run(_graph(w, size, upto=f"{name}_out"), np.concatenate([calib, x]))
        threshold = float(np.quantile(probe[:, channel], fire_quantile))
        others_max = float(np.delete(probe, channel, axis=1).max())
        k = gain * others_max / float(probe[:, channel].max() - threshold)  # spikes reach gain x the others
        w[f"{name}.w"][channel] *= k
        w[f"{name}.b"][channel] = -k * threshold
        w[f"{reader}.w"][:, channel] /= k
        spikes = _run(_graph(w, size, upto=f"{name}_out"), calib).clip(0)
        per_sample = spikes.reshape(len(calib), cout, -1).max(axis=2)
        others = np.delete(per_sample, channel, axis=1)
        planted[f"{name}_relu"] = {"channel": channel, "calib_samples_firing": int((per_sample[:, channel] > 0).sum()),
                                   "spike_max": float(per_sample[:, channel].max()),
                                   "other_channels_max": float(others.max())}
    features = _run(_graph(w, size, upto="flat"), train).astype(np.float64)
    mean = features.mean(axis=0)
    z = features - mean
    target = np.eye(CLASSES)[train_y] - 1.0 / CLASSES
    gram = z.T @ z
    w["fc.w"] = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), z.T @ target).T
    w["fc.b"] = -w["fc.w"] @ mean
    model = _graph(w, size)
    float_top1 = float((_run(model, x).argmax(axis=1) == y).mean())
    return SyntheticCase("deep_outlier_cnn", model, "x", calib, x, y, "top-1 accuracy (true classes)",
                         {**planted, "gain": gain, "fire_quantile": fire_quantile, "float_top1": float_top1})


if __name__ == "__main__":
    case = deep_outlier_cnn()
    print(case.planted)
