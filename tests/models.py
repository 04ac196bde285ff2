"""Tiny ONNX models built in code for the tests: seeded weights, a few layers each.

``ModelBuilder.add_*`` returns the name of the output tensor, so a model reads as a
chain of calls.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class ModelBuilder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def add_input(self, name: str, shape: list, dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def add_output(self, name: str, shape: list | None = None, dtype: int = TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def add_initializer(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add_node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or self._name(op.lower())
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def add_conv(self, x: str, in_ch: int, out_ch: int, kernel: int = 3, name: str | None = None,
                 bias: bool = True, scale: float = 0.3, group: int = 1) -> str:
        w = self.rng.normal(0, scale, (out_ch, in_ch // group, kernel, kernel)).astype(np.float32)
        inputs = [x, self.add_initializer(w)]
        if bias:
            inputs.append(self.add_initializer(self.rng.normal(0, 0.1, out_ch).astype(np.float32), "b"))
        return self.add_node("Conv", inputs, name, pads=[kernel // 2] * 4, group=group)

    def add_gemm(self, x: str, in_f: int, out_f: int, name: str | None = None, scale: float = 0.3) -> str:
        w = self.rng.normal(0, scale, (out_f, in_f)).astype(np.float32)
        b = self.rng.normal(0, 0.1, out_f).astype(np.float32)
        return self.add_node("Gemm", [x, self.add_initializer(w), self.add_initializer(b, "b")], name, transB=1)

    def add_matmul(self, x: str, in_f: int, out_f: int, name: str | None = None, scale: float = 0.3) -> str:
        w = self.rng.normal(0, scale, (in_f, out_f)).astype(np.float32)
        return self.add_node("MatMul", [x, self.add_initializer(w)], name)

    def add_relu(self, x: str) -> str:
        return self.add_node("Relu", [x])

    def build(self, opset: int = 13, name: str = "tiny") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="aaq-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def conv_net(seed: int = 0, batch: str | int = "N", opset: int = 13) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(3→8) -> Relu -> Conv(8→8) -> Relu -> Flatten -> Gemm(512→10) -> y[N,10]"""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", [batch, 3, 8, 8])
    x = mb.add_relu(mb.add_conv(x, 3, 8, name="conv1"))
    x = mb.add_relu(mb.add_conv(x, 8, 8, name="conv2"))
    x = mb.add_node("Flatten", [x], "flatten", axis=1)
    y = mb.add_gemm(x, 8 * 8 * 8, 10, name="fc")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", [batch, 10])
    return mb.build(opset)


def mlp(seed: int = 0, batch: str | int = "N", features: int = 16, hidden: int = 32,
        classes: int = 4) -> onnx.ModelProto:
    """x[N,F] -> MatMul(F→H) -> Relu -> MatMul(H→H) -> Relu -> Gemm(H→C) -> y[N,C]"""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", [batch, features])
    x = mb.add_relu(mb.add_matmul(x, features, hidden, name="mm1"))
    x = mb.add_relu(mb.add_matmul(x, hidden, hidden, name="mm2"))
    y = mb.add_gemm(x, hidden, classes, name="fc")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", [batch, classes])
    return mb.build()


def labeled_data(model_fn, n: int = 64, seed: int = 1, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Inputs for ``model_fn`` and the float model's own argmax as labels (top-1 = 1.0 in float)."""
    import onnxruntime as ort

    model = model_fn(**kwargs)
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    shape[0] = n
    x = np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {model.graph.input[0].name: x})[0]
    return x, y.argmax(axis=1)


def write_case(root: Path, model_fn, n: int) -> Path:
    """``root/model.onnx`` and ``root/data.npz`` (``x``, and the float model's own labels ``y``): a spec's files."""
    onnx.save(model_fn(), str(root / "model.onnx"))
    x, y = labeled_data(model_fn, n=n)
    np.savez(root / "data.npz", x=x, y=y)
    return root


def add_hardswish(mb: ModelBuilder, x: str, form: str = "div") -> str:
    """The hard-swish as exporters write it: ``x * Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``, or ``/ 6`` first)."""
    three, zero, six = (mb.add_initializer(np.array(v, np.float32), "c") for v in (3.0, 0.0, 6.0))
    clip = mb.add_node("Clip", [mb.add_node("Add", [x, three]), zero, six])
    if form == "div":
        return mb.add_node("Div", [mb.add_node("Mul", [x, clip]), six])
    if form == "sixth":
        return mb.add_node("Mul", [mb.add_node("Mul", [clip, x]), mb.add_initializer(np.array(1 / 6, np.float32), "c")])
    return mb.add_node("Mul", [x, mb.add_node("Div", [clip, six])])


def conv_hardswish_conv(seed: int = 0, opset: int = 13, form: str = "div", bias: float = 0.0) -> onnx.ModelProto:
    """x[N,16,8,8] -> Conv(16->32, 3x3) -> hard-swish (decomposed) -> Conv(32->32, 1x1) -> y"""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["N", 16, 8, 8])
    h = mb.add_conv(x, 16, 32, name="conv1")
    if bias:
        h = mb.add_node("Add", [h, mb.add_initializer(np.array(bias, np.float32), "c")], "shift")
    y = mb.add_conv(add_hardswish(mb, h, form), 32, 32, kernel=1, name="conv2")
    mb.add_output(y, ["N", 32, 8, 8])
    return mb.build(opset)


def streaming_vad(seed: int = 0, features: int = 24, hidden: int = 8) -> onnx.ModelProto:
    """A streaming voice-activity detector: its first axis is time and its recurrent state is an input.

    x[F, features] -> MatMul -> Relu -> Unsqueeze -> LSTM(h[1,1,H], c[1,1,H]) -> Reshape[F, H]
    -> MatMul -> Add -> logits[F, 2]; the LSTM's last state is given back as hn, cn.
    Stacking clips along a new first axis cannot feed it: one clip is one whole feed.
    """
    mb = ModelBuilder(seed)
    x = mb.add_input("x", ["F", features])
    h0 = mb.add_input("h", [1, 1, hidden])
    c0 = mb.add_input("c", [1, 1, hidden])
    y = mb.add_relu(mb.add_matmul(x, features, 16, name="proj", scale=0.4))
    y = mb.add_node("Unsqueeze", [y, mb.add_initializer(np.array([1], np.int64), "axes")], "unsqueeze")
    w = mb.add_initializer(mb.rng.normal(0, 0.4, (1, 4 * hidden, 16)).astype(np.float32))
    r = mb.add_initializer(mb.rng.normal(0, 0.4, (1, 4 * hidden, hidden)).astype(np.float32))
    b = mb.add_initializer(mb.rng.normal(0, 0.1, (1, 8 * hidden)).astype(np.float32), "b")
    mb.nodes.append(helper.make_node("LSTM", [y, w, r, b, "", h0, c0], ["seq", "hn", "cn"], name="lstm",
                                     hidden_size=hidden))
    seq = mb.add_node("Reshape", ["seq", mb.add_initializer(np.array([-1, hidden], np.int64), "shape")],
                      "flatten_time")
    logits = mb.add_matmul(seq, hidden, 2, name="head", scale=0.8)
    mb.nodes.append(helper.make_node("Add", [logits, mb.add_initializer(np.array([0.1, -0.1], np.float32), "b")],
                                     ["logits"], name="head_bias"))
    mb.add_output("logits", ["F", 2])
    mb.add_output("hn", [1, 1, hidden])
    mb.add_output("cn", [1, 1, hidden])
    return mb.build(13, name="vad")


def unbatched_mlp(seed: int = 0, features: int = 12, classes: int = 3) -> onnx.ModelProto:
    """x[features] -> MatMul -> Relu -> MatMul -> y[classes]: no batch axis at all."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", [features])
    x = mb.add_relu(mb.add_matmul(x, features, 16, name="mm1"))
    y = mb.add_matmul(x, 16, classes, name="mm2")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", [classes])
    return mb.build()


def sensitive_mlp(seed: int = 0, batch: str | int = "N") -> onnx.ModelProto:
    """x[N,16] -> Gemm g1 -> Relu -> Gemm g2 -> Relu -> Gemm fc -> y[N,4], one layer INT8 destroys.

    g1's bias puts 1000 on channel 0, which g2 reads with zero weights: the float model
    does not care, but g2's per-tensor input quantizer must stretch to 1000 and rounds
    every other value to zero. Only reverting g2's group (which owns that quantizer)
    brings the accuracy back.
    """
    mb = ModelBuilder(seed)
    x = mb.add_input("x", [batch, 16])
    h = mb.add_relu(mb.add_gemm(x, 16, 32, name="g1"))
    h = mb.add_relu(mb.add_gemm(h, 32, 32, name="g2"))
    y = mb.add_gemm(h, 32, 4, name="fc")
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", [batch, 4])
    inits = {i.name: i for i in mb.initializers}
    g1, g2 = (next(n for n in mb.nodes if n.name == name) for name in ("g1", "g2"))
    bias = numpy_helper.to_array(inits[g1.input[2]]).copy()
    bias[0] = 1000.0
    inits[g1.input[2]].CopyFrom(numpy_helper.from_array(bias, g1.input[2]))
    weight = numpy_helper.to_array(inits[g2.input[1]]).copy()
    weight[:, 0] = 0.0
    inits[g2.input[1]].CopyFrom(numpy_helper.from_array(weight, g2.input[1]))
    return mb.build()


def depthwise_block(seed: int = 3, channels: int = 24, batch: str | int = "N") -> onnx.ModelProto:
    """x[N,16,8,8] -> Conv 1x1 (16->C) -> Relu -> depthwise 3x3 (C) -> Relu -> Conv 1x1 (C->16) -> y: a depthwise conv
    under 64 channels, a kind ``latency_aware: "measure"`` times in float and int8."""
    mb = ModelBuilder(seed)
    x = mb.add_input("x", [batch, 16, 8, 8])
    h = mb.add_relu(mb.add_conv(x, 16, channels, kernel=1, name="expand"))
    h = mb.add_relu(mb.add_conv(h, channels, channels, kernel=3, name="dw", group=channels))
    y = mb.add_node("Flatten", [mb.add_conv(h, channels, 16, kernel=1, name="project")], "flatten", axis=1)
    mb.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    mb.add_output("y", [batch, 16 * 8 * 8])
    return mb.build()


def feature_maps(n: int = 64, channels: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, channels, 8, 8)).astype(np.float32)


def dw_hardswish_block(channels: int, dw_relu: bool = False) -> onnx.ModelProto:
    """x[N,16,8,8] -> Conv 1x1 (16->C) -> Relu -> depthwise 3x3 (C) -> [Relu | hard-swish] -> Conv 1x1 (C->16) -> y"""
    mb = ModelBuilder(3)
    x = mb.add_input("x", ["N", 16, 8, 8])
    h = mb.add_relu(mb.add_conv(x, 16, channels, kernel=1, name="expand"))
    h = mb.add_conv(h, channels, channels, kernel=3, name="dw", group=channels)
    h = mb.add_relu(h) if dw_relu else add_hardswish(mb, h)
    y = mb.add_conv(h, channels, 16, kernel=1, name="project")
    mb.add_output(y, ["N", 16, 8, 8])
    return mb.build()
