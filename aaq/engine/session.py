"""ONNX Runtime sessions built from model bytes, cached by digest in a small LRU.

Building a session costs far more than hashing the model, and the same model is
run again and again (the float model, the current candidate), so sessions are kept;
the LRU bound keeps memory flat when a search tries hundreds of candidates. No
temporary files: sessions are built from bytes.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from aaq.errors import ModelError
from aaq.quantization.graph import GraphIndex

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputInfo:
    """One model input as ONNX Runtime sees it: a dim is an int when fixed, else None."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype | None

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d))
                         for i, d in enumerate(self.shape))
        return f"[{dims}] {self.dtype.name if self.dtype is not None else 'tensor'}"


@dataclass
class SessionEntry:
    """A session and what the engine reads from it on every batch."""

    session: ort.InferenceSession
    inputs: tuple[InputInfo, ...]
    output_names: tuple[str, ...]
    fixed_batch: int | None
    """The batch size the model insists on (its first input dim), or None when it is free."""
    checked: set = field(default_factory=set)
    """Which datasets were already checked against the inputs (by id)."""


def model_bytes(model: onnx.ModelProto | bytes) -> tuple[bytes, str]:
    """The serialized model and its digest (the same digest as ``aaq.state.model_digest``)."""
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString(deterministic=True)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    else:
        raise TypeError(f"expected an onnx.ModelProto or bytes, got {type(model).__name__}")
    return data, hashlib.sha256(data).hexdigest()


def session_options(intra_op_threads: int = 0, graph_optimization_level: str = "all",
                    allow_spinning: bool = False) -> ort.SessionOptions:
    """The options every session of an engine shares (the benchmark's bare loop uses them too).

    Spinning is off unless asked for: ONNX Runtime's intra-op threads otherwise busy-wait
    between ops, taking the core from the thread that has work (the next op, or the
    metric scoring the last batch). On 2 vCPUs that made PP-OCR cls 1.6x slower at
    batch 64 (50 vs 31 ms) and its timings noisy; PP-OCR rec, whose ops are long,
    is the same either way.
    """
    if graph_optimization_level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"graph_optimization_level must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                         f"got {graph_optimization_level!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = OPTIMIZATION_LEVELS[graph_optimization_level]
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return options


class SessionCache:
    """At most ``capacity`` sessions, least recently used dropped first."""

    def __init__(self, options: ort.SessionOptions, providers: Sequence[str], capacity: int = 8) -> None:
        self.options = options
        self.providers = list(providers)
        self.capacity = capacity
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self.created = 0

    def get(self, data: bytes, digest: str) -> SessionEntry:
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries.move_to_end(digest)
            return entry
        try:
            session = ort.InferenceSession(data, self.options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types for invalid models
            raise ModelError(f"ONNX Runtime cannot load the model: {exc}") from None
        entry = _entry(session)
        self.created += 1
        self._entries[digest] = entry
        if len(self._entries) > self.capacity:
            dropped, _ = self._entries.popitem(last=False)
            logger.debug("session cache full: dropped %s", dropped[:12])
        logger.debug("session %s built (%d cached)", digest[:12], len(self._entries))
        return entry

    def __len__(self) -> int:
        return len(self._entries)


def _entry(session: ort.InferenceSession) -> SessionEntry:
    inputs = tuple(
        InputInfo(arg.name, tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape),
                  np.dtype(_DTYPES[arg.type]) if arg.type in _DTYPES else None)
        for arg in session.get_inputs())
    fixed = {i.shape[0] for i in inputs if i.shape and i.shape[0] is not None}
    for info in inputs:
        if not info.shape:
            raise ModelError(f"input {info.name!r} is a scalar: the engine needs a batch axis first")
    if len(fixed) > 1:
        raise ModelError(f"the model's inputs disagree on the batch size: {sorted(fixed)}")
    outputs = tuple(arg.name for arg in session.get_outputs())
    return SessionEntry(session, inputs, outputs, fixed.pop() if fixed else None)


def with_outputs(data: bytes, digest: str, names: Sequence[str]) -> tuple[bytes, str, set[str]]:
    """A model whose graph outputs include ``names`` (a copy when some are intermediate), its digest
    and the original graph output names; an unknown name is a ModelError with the nearest names."""
    model = onnx.load_from_string(data)
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    known = GraphIndex(graph).fetchable
    present = set(graph_outputs)
    for name in names:
        if name in present:
            continue
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; nearest: {', '.join(map(repr, near))}" if near else ""
            raise ModelError(f"no tensor {name!r} in the model (not an output of any node nor an input{hint})")
        graph.output.append(onnx.ValueInfoProto(name=name))
        present.add(name)
    if present == graph_outputs:
        return data, digest, graph_outputs
    return (*model_bytes(model), graph_outputs)
