"""What this machine's ONNX Runtime integer kernels can do, measured rather than read off the CPU's name.

On x86 without VNNI (AVX2, AVX-512 without VNNI: most AMD EPYC before Zen 4, Intel
before Cascade Lake), ONNX Runtime's u8 x s8 GEMM adds pairs of products into 16
bits (``vpmaddubsw``) and saturates: with activations near 255 and weights near 127
a pair reaches 2 * 255 * 127 = 64770 > 32767, and a 64-deep dot product of such
values came out at half its value (measured: 32.25 instead of 64). Conv and
MatMul both go through that GEMM. Weights on 7 bits ([-63, 63]) keep every pair below
32767, which is why ONNX Runtime's own quantizer has ``reduce_range``. Whether the
kernels saturate is measured once per process by running a one-MatMul QDQ model
whose exact result is known.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

_DEPTH = 64


def _probe_model() -> onnx.ModelProto:
    """``x (all 1.0 -> u8 255) @ w (all s8 127)``: the exact result is ``_DEPTH`` in every column."""
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.full((_DEPTH, 16), 127, np.int8), "w"),
        numpy_helper.from_array(np.array(1.0 / 127, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(2.0 * _DEPTH / 255, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "u8s8_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, _DEPTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@functools.lru_cache(maxsize=None)
def u8s8_saturates(providers: Sequence[str] = ("CPUExecutionProvider",)) -> bool:
    """Whether ONNX Runtime's integer MatMul/Conv kernels lose u8 x s8 products to 16-bit saturation here."""
    session = ort.InferenceSession(_probe_model().SerializeToString(), providers=list(providers))
    (y,) = session.run(None, {"x": np.ones((4, _DEPTH), np.float32)})
    saturates = bool(np.abs(y - _DEPTH).max() > 0.05 * _DEPTH)
    if saturates:
        logger.info("this CPU's int8 kernels saturate u8 x s8 products (%.1f instead of %d): weights get a "
                    "7-bit range", float(np.median(y)), _DEPTH)
    return saturates
