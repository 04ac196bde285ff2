"""Helpers the test modules share: the tiny sample's spec, a fake engine, running models and quantizing them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from aaq.algorithms.base import run_algorithm
from aaq.algorithms.default import DefaultQuantization
from aaq.engine.datasets import ArrayDataset
from aaq.state import PipelineState

TINY = Path(__file__).resolve().parents[1] / "samples" / "tiny"


def base_spec() -> dict:
    return {
        "model": {"path": str(TINY / "model.onnx")},
        "engine": {
            "dataset": {"type": "npz", "path": str(TINY / "data.npz"), "inputs": {"x": "x"}, "labels": "y"},
            "metrics": [{"name": "top1", "type": "accuracy"}],
        },
        "compression": {"algorithms": [{"name": "TagModel", "params": {"value": "v"}}]},
    }


class FakeEngine:
    """The part of the Engine the statistics pass uses, on onnxruntime: ``run`` and ``calibration_indices``
    (and ``dataset``, a batch of which ``latency_aware: "measure"`` times).

    ``calls`` records the outputs of every ``run``, to check that one pass serves all requests.
    """

    providers = ("CPUExecutionProvider",)
    progress = False
    metrics: list = []  # no metric: ``auto`` ranges decide by output error

    def __init__(self, inputs: dict[str, np.ndarray] | np.ndarray, batch_size: int = 4) -> None:
        self.inputs = inputs if isinstance(inputs, dict) else {"x": inputs}
        self.dataset = ArrayDataset(self.inputs)  # what latency_aware "measure" times a batch of
        self.batch_size = batch_size
        self.calls: list[list[str]] = []

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def calibration_indices(self, n: int) -> np.ndarray:
        return np.arange(min(n, len(self)))

    def run(self, model, indices, *, outputs, calibration=True, progress_desc=None):
        self.calls.append(list(outputs))
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        present = {o.name for o in copy.graph.output}
        copy.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs if t not in present)
        session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
        for start in range(0, len(indices), self.batch_size):
            batch = np.asarray(indices[start:start + self.batch_size])
            feed = {name: value[batch] for name, value in self.inputs.items()}
            yield batch, dict(zip(outputs, session.run(list(outputs), feed)))


def all_outputs(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Every named tensor for the whole of ``x`` at once: the direct computation to compare with."""
    return next(FakeEngine(x, batch_size=len(x)).run(model, np.arange(len(x)), outputs=names))[1]


MINMAX = {"range_estimator": {"preset": "minmax"}}
"""DefaultQuantization's ``activations`` for the observed range (min / max over samples), which tests of
exact ranges and scales compute by hand (the default estimator averages per-sample extremes)."""


def quantize(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 16, **params):
    """Run DefaultQuantization through ``run_algorithm`` as the pipeline does; returns (state, algorithm).

    ``latency_aware`` is "rules" unless given: the graph properties tested are the rules' (timings on
    tiny models decide nothing that holds elsewhere)."""
    params.setdefault("latency_aware", "rules")
    algorithm = DefaultQuantization(DefaultQuantization.Params(**params))
    state = PipelineState(float_model=model, model=model)
    return run_algorithm(algorithm, state, FakeEngine(x, batch_size), progress=False), algorithm


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})[0]


def images(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


def optimized_op_types(model: onnx.ModelProto) -> list[str]:
    """The node types ONNX Runtime really runs, from the optimized graph it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def mlp_case(root: Path) -> Path:
    """``models.mlp`` and 256 labelled inputs in ``root`` (model.onnx, data.npz): a tiny case for Tuning runs.

    On it, with an absolute criterion of 0.02, only per-channel symmetric configs calibrated on
    64 samples (minmax or percentile ranges) pass: 2 of the 24 configs of ``MLP_SPACE``.
    """
    from models import labeled_data, mlp

    onnx.save(mlp(), str(root / "model.onnx"))
    x, y = labeled_data(mlp, n=256)
    np.savez(root / "data.npz", x=x, y=y)
    return root


MLP_SPACE = {"calibration": {"sampling_size": [16, 64]},
             "tuning_space": {"model_wise": {"activation": {"algorithm": ["minmax", "kl", "percentile"]}}}}


def tuning_spec(root: Path, params: dict) -> dict:
    """A spec running ``Tuning`` with ``params`` on the case in ``root`` (model.onnx, data.npz with x, y)."""
    return {"model": {"name": "m", "path": str(root / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(root / "data.npz"), "inputs": {"x": "x"},
                                   "labels": "y"},
                       "metrics": [{"name": "top1", "type": "accuracy"}], "batch_size": 32},
            "compression": {"algorithms": [{"name": "Tuning", "params": params}]}}


def accuracy_aware_spec(root: Path, params: dict | None = None, *, alone: bool = False, dq: dict | None = None) -> dict:
    """DefaultQuantization (unless ``alone``) then AccuracyAwareQuantization on the case ``write_case`` wrote."""
    algos = [] if alone else [{"name": "DefaultQuantization", "params": dq or {}}]
    algos.append({"name": "AccuracyAwareQuantization", "params": {"maximal_drop": 0.05, **(params or {})}})
    return {"model": {"path": str(root / "model.onnx")},
            "engine": {"dataset": {"type": "npz", "path": str(root / "data.npz"), "inputs": {"x": "x"},
                                   "labels": "y"},
                       "metrics": [{"name": "top1", "type": "accuracy"}], "batch_size": 32},
            "compression": {"algorithms": algos}}
