"""A tiny transformer block with an outlier activation channel, built in code, seeded: the SmoothQuant case.

x[N, T, C] -> LayerNorm (channel ``OUTLIER`` with gain ``gain``) -> Q, K, V MatMuls ->
softmax(Q K^T / sqrt(C)) V -> output MatMul -> + x -> LayerNorm -> MatMul (C -> 4C) ->
Relu -> MatMul (4C -> C) -> + -> mean over T -> Gemm (C -> classes).

The first LayerNorm's scale is ``gain`` on one channel (the rest ~1), and the Q/K/V
weights reading that channel are divided by ``gain``: the float network computes
what it would without the outlier, but the LayerNorm's output has one channel
``gain`` times larger than the others, as in large language models' outlier
features (Dettmers et al. 2022). A per-tensor activation grid over it leaves the
other channels a few levels. Labels are the float model's own top-1 class.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from synthetic_cases import SyntheticCase, finish

OPSET = 17
OUTLIER = 5


def transformer_block(seed: int = 0, tokens: int = 16, channels: int = 32, classes: int = 10, gain: float = 60.0,
                      n_calib: int = 128, n_eval: int = 1000) -> SyntheticCase:
    rng = np.random.default_rng(seed)
    c, h = channels, 4 * channels
    inits: dict[str, np.ndarray] = {}

    def weight(name: str, shape: tuple, scale: float) -> str:
        inits[name] = rng.normal(0, scale, shape).astype(np.float32)
        return name

    gamma = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    gamma[OUTLIER] *= gain
    inits["ln1.g"], inits["ln1.b"] = gamma, (0.05 * rng.standard_normal(c)).astype(np.float32)
    inits["ln2.g"], inits["ln2.b"] = np.ones(c, np.float32), np.zeros(c, np.float32)
    for name in ("q", "k", "v"):
        weight(f"{name}.w", (c, c), 1 / np.sqrt(c))
        inits[f"{name}.w"][OUTLIER] /= gain
    weight("o.w", (c, c), 1 / np.sqrt(c))
    weight("fc1.w", (c, h), 1 / np.sqrt(c))
    weight("fc2.w", (h, c), 1 / np.sqrt(h))
    weight("head.w", (classes, c), 1 / np.sqrt(c))
    inits["head.b"] = np.zeros(classes, np.float32)
    inits["scale"] = np.array(1 / np.sqrt(c), np.float32)

    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln1.g", "ln1.b"], ["ln1"], name="ln1", axis=-1),
        n("MatMul", ["ln1", "q.w"], ["q"], name="q"), n("MatMul", ["ln1", "k.w"], ["k"], name="k"),
        n("MatMul", ["ln1", "v.w"], ["v"], name="v"),
        n("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["scores"], name="scores"), n("Mul", ["scores", "scale"], ["scaled"], name="scaled"),
        n("Softmax", ["scaled"], ["attn"], name="softmax", axis=-1),
        n("MatMul", ["attn", "v"], ["ctx"], name="ctx"), n("MatMul", ["ctx", "o.w"], ["o"], name="o"),
        n("Add", ["x", "o"], ["res1"], name="res1"),
        n("LayerNormalization", ["res1", "ln2.g", "ln2.b"], ["ln2"], name="ln2", axis=-1),
        n("MatMul", ["ln2", "fc1.w"], ["fc1"], name="fc1"), n("Relu", ["fc1"], ["fc1_relu"], name="fc1_relu"),
        n("MatMul", ["fc1_relu", "fc2.w"], ["fc2"], name="fc2"), n("Add", ["res1", "fc2"], ["res2"], name="res2"),
        n("ReduceMean", ["res2"], ["pooled"], name="pool", axes=[1], keepdims=0),
        n("Gemm", ["pooled", "head.w", "head.b"], ["logits"], name="head", transB=1),
    ]
    graph = helper.make_graph(nodes, "outlier_transformer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, tokens, c])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, classes])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = finish(graph, OPSET)

    templates = rng.normal(0, 1, (classes, tokens, c)).astype(np.float32)

    def inputs(count: int) -> np.ndarray:
        labels = rng.integers(0, classes, count)
        return (templates[labels] + 1.2 * rng.standard_normal((count, tokens, c))).astype(np.float32)

    calib, x = inputs(n_calib), inputs(n_eval)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0].argmax(axis=1)
    ln1 = _tensor(model, "ln1", calib)
    per_channel = np.abs(ln1).reshape(-1, c).max(axis=0)
    planted = {"channel": OUTLIER, "tensor": "ln1", "gain": gain, "outlier_max": float(per_channel[OUTLIER]),
               "other_channels_max": float(np.delete(per_channel, OUTLIER).max())}
    return SyntheticCase("outlier_transformer", model, "x", calib, x, y, "top-1 agreement with float", planted)


def _tensor(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend([onnx.ValueInfoProto(name=name)])
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {"x": x})[0]
