"""Batched datasets: every sample a whole model feed, run as given (streaming models, no batch axis, any size)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from aaq import Pipeline
from aaq.accuracy import workers
from aaq.engine.executors import Shared
from aaq.cli import main
from aaq.engine import Agreement, Engine, Metric, Sample
from aaq.engine.datasets import BatchedDataset, SampleList, dataset_from_spec
from aaq.errors import DataError
from aaq.statistics.collector import collect_statistics
from aaq.statistics.requests import StatisticRequest
from models import streaming_vad, unbatched_mlp

HIDDEN = 8


def clips(n: int = 24, seed: int = 3) -> list[dict[str, np.ndarray]]:
    """Clips of 6-30 frames, each with the recurrent state it starts from: whole feeds of different sizes."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (int(rng.integers(6, 31)), 24)).astype(np.float32),
             "h": rng.normal(0, 0.3, (1, 1, HIDDEN)).astype(np.float32),
             "c": rng.normal(0, 0.3, (1, 1, HIDDEN)).astype(np.float32)} for _ in range(n)]


def float_labels(model: onnx.ModelProto, feeds: list[dict]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(["logits"], feed)[0].argmax(axis=1) for feed in feeds]


class FrameAccuracy(Metric):
    """Per clip: the share of frames whose argmax equals the clip's frame labels (a user's metric)."""

    name = "frames"
    bounds = (0.0, 1.0)

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, int]] = []

    def score(self, outputs, labels):
        logits = outputs["logits"]
        self.calls.append((logits.shape, len(labels)))
        return [float(np.mean(logits.argmax(axis=1) == labels[0]))]


@pytest.fixture(scope="module")
def vad():
    model = streaming_vad()
    feeds = clips()
    labels = float_labels(model, feeds)
    return model, SampleList([Sample(f, y) for f, y in zip(feeds, labels)], batched=True)


def test_a_streaming_model_is_refused_stacked_and_runs_batched(vad) -> None:
    model, data = vad
    stacked = Engine(SampleList(list(data)), [FrameAccuracy()], progress=False)
    with pytest.raises(DataError, match=r"the model expects \[N, 24\] float32 \(\[24\] per sample\), the "
                                         r"dataset gives \[\d+, 24\] float32 per sample; .* \"batched\": true"):
        stacked.set_float_model(model)  # h and c fix the batch at 1, x's first axis is time
    metric = FrameAccuracy()
    engine = Engine(data, [metric], batch_size=8, progress=False)
    engine.set_float_model(model)
    ev = engine.evaluate(model)
    assert ev.values["frames"] == 1.0 and engine.session_runs == len(data)
    assert [shape[0] for shape, _ in metric.calls] == [len(s.inputs["x"]) for s in data]  # one run per clip, as given
    assert {count for _, count in metric.calls} == {1}                                  # a one-element label list
    assert engine.evaluate(model).samples_inferred == 0                                 # the cache holds per clip
    out = engine.outputs(model, [2, 5])
    assert out["logits"].dtype == object and out["logits"][1].shape == (len(data[5].inputs["x"]), 2)
    batches = list(engine.run(model, [0, 1, 2]))
    assert [list(b) for b, _ in batches] == [[0], [1], [2]] and batches[1][1]["hn"].shape == (1, 1, HIDDEN)


def test_built_in_metrics_see_one_run_as_one_sample(vad) -> None:
    model, data = vad
    engine = Engine(data, [Agreement("cosine")], progress=False)
    engine.set_float_model(model)
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    for init in noisy.graph.initializer:
        if init.name == "w4":  # the head's weight
            w = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(w + np.float32(0.3), init.name))
    ev = engine.evaluate(noisy)
    assert ev.per_sample["agreement_cosine"].shape == (len(data),)
    assert -1.0 < ev.values["agreement_cosine"] < 0.99


def test_statistics_reduce_each_run_as_one_sample(vad) -> None:
    model, data = vad
    engine = Engine(data, [FrameAccuracy()], calibration_dataset=data, progress=False)
    requests = [StatisticRequest("proj_out", "max", "mean"), StatisticRequest("proj_out", "max", "max"),
                StatisticRequest("proj_out", "max", "mean", axis=-1)]
    values = collect_statistics(engine, model, requests, 10)
    session = ort.InferenceSession(_with_output(model, "proj_out").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    per_clip = [session.run(["proj_out"], data[i].inputs)[0] for i in range(10)]
    np.testing.assert_allclose(values[requests[0]], np.mean([a.max() for a in per_clip]), rtol=1e-6)
    np.testing.assert_allclose(values[requests[1]], max(a.max() for a in per_clip), rtol=1e-6)
    np.testing.assert_allclose(values[requests[2]], np.mean([a.max(axis=0) for a in per_clip], axis=0), rtol=1e-6)


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def test_a_model_without_a_batch_axis_runs_batched() -> None:
    model = unbatched_mlp()
    rng = np.random.default_rng(0)
    samples = [Sample({"x": rng.normal(0, 1, 12).astype(np.float32)}) for _ in range(16)]
    engine = Engine(SampleList(samples, batched=True), [Agreement("top1")], progress=False)
    engine.set_float_model(model)
    assert engine.evaluate(model).values["agreement_top1"] == 1.0


@pytest.mark.parametrize("bad, phrase", [
    ({"h": np.zeros((1, HIDDEN), np.float32)}, r"sample 4: .*model input 'h': the model expects \[1, 1, 8\] "
                                               r"float32, the sample gives \[1, 8\] float32"),
    ({"x": np.zeros((9, 23), np.float32)}, r"sample 4: .*model input 'x': the model expects \[\?, 24\]"),
    ({"c": np.zeros((1, 1, HIDDEN), np.float64)}, r"sample 4: .*input 'c'.*float64"),
    ({"c": None}, r"sample 4: the dataset's feed has no array for model input 'c'"),
])
def test_a_feed_that_does_not_fit_names_the_sample_and_the_input(vad, bad, phrase) -> None:
    model, data = vad
    samples = list(data)
    inputs = {k: v for k, v in {**samples[4].inputs, **bad}.items() if v is not None}
    samples[4] = Sample(inputs, samples[4].label)
    engine = Engine(SampleList(samples, batched=True), [FrameAccuracy()], progress=False)
    engine.set_float_model(model)  # sample 0 fits; sample 4 is found out when it is read
    with pytest.raises(DataError, match=phrase):
        engine.evaluate(model)


PLUGIN = textwrap.dedent('''
    import numpy as np
    import onnxruntime as ort
    from aaq import Metric

    def clips(n, seed, model):
        """The user's own loader: raw items (a dict a file reader might give), not samples."""
        rng = np.random.default_rng(seed)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        items = []
        for i in range(n):
            frames = rng.normal(0, 1, (int(rng.integers(6, 31)), 24)).astype(np.float32)
            state = rng.normal(0, 0.3, (2, 1, 1, 8)).astype(np.float32)
            labels = session.run(["logits"], {"x": frames, "h": state[0], "c": state[1]})[0].argmax(axis=1)
            items.append({"id": f"clip{i}", "frames": frames, "state": state, "speech": labels})
        return items

    def to_feed(item):
        if item["id"] == "clip5" and BROKEN:
            raise ValueError("unreadable clip")
        return {"x": item["frames"], "h": item["state"][0], "c": item["state"][1]}, item["speech"]

    BROKEN = False

    class Frames(Metric):
        bounds = (0.0, 1.0)

        def score(self, outputs, labels):
            return [float(np.mean(outputs["logits"].argmax(axis=1) == labels[0]))]

    def frames():
        return Frames()
''')


def vad_spec(tmp_path: Path, module: str = "aaq_test_vad", broken: bool = False) -> Path:
    model_path = tmp_path / "vad.onnx"
    onnx.save(streaming_vad(), str(model_path))
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("BROKEN = False", f"BROKEN = {broken}"))
    data = {"type": "python", "factory": f"{module}:clips", "transform": f"{module}:to_feed",
            "kwargs": {"n": 32, "seed": 1, "model": str(model_path)}, "batched": True}
    spec = {
        "model": {"name": "vad", "path": "vad.onnx"},
        "engine": {"dataset": data, "calibration_dataset": {**data, "kwargs": {**data["kwargs"], "seed": 2}},
                   "metrics": [{"name": "frames", "type": "python", "factory": f"{module}:frames"}]},
        "compression": {"algorithms": [
            {"name": "DefaultQuantization", "params": {"stat_subset_size": 16}},
            {"name": "AccuracyAwareQuantization", "params": {"maximal_drop": 0.0, "ranking_subset_size": 8}}]},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_dq_then_aaq_on_a_streaming_model_from_a_spec(tmp_path: Path) -> None:
    """The user's loader and transform, batched: quantized, evaluated, ranked and reverted end to end."""
    result = Pipeline(vad_spec(tmp_path), progress=False).run()
    summary = result.algorithms[0].summary
    assert summary["layers_quantized"] == 2 and summary["calibration_samples"] == 16
    assert result.metrics["frames"].float == 1.0
    assert result.target_met and result.metrics["frames"].drop <= 0.0
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((40, 24), np.float32), "h": np.zeros((1, 1, 8), np.float32),
                              "c": np.zeros((1, 1, 8), np.float32)})[0].shape == (40, 2)


def test_ranking_workers_get_the_whole_feeds(vad) -> None:
    """What a worker is sent of a batched subset (its whole feeds), and what it scores there (in this process)."""
    model, data = vad
    engine = Engine(data, [FrameAccuracy()], progress=False)
    engine.set_float_model(model)
    samples = workers.subset_context(engine, np.array([1, 4, 9]), by_reference=False)
    assert isinstance(samples, list) and len(samples) == 3
    shared = [Shared(str(i), v) for i, v in enumerate([workers.recipe(engine, model, 1), samples, ()])]
    scored = workers.score_task(*shared, workers.ScoreTask(-1, frozenset(), "frames", False,
                                                           model.SerializeToString()))
    assert list(scored.entries["frames"]) == [1.0, 1.0, 1.0] and scored.digest == workers.model_bytes(model)[1]
    distance = workers.score_task(*shared, workers.ScoreTask(-1, frozenset(), "frames", True,
                                                             model.SerializeToString()))
    assert list(distance.distances) == [0.0, 0.0, 0.0]

def test_a_transform_that_raises_names_the_item_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    spec = vad_spec(tmp_path, "aaq_test_vad_broken", broken=True)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sample 5: the transform 'aaq_test_vad_broken:to_feed' failed on item 5 ({'id': 'clip5'" in err
    assert "ValueError: unreadable clip" in err
    assert not (out / "vad.quantized.onnx").exists() and not (out / "report.json").exists()


def test_batched_is_a_key_of_every_dataset_entry(tmp_path: Path) -> None:
    np.savez(tmp_path / "clips.npz", x=np.zeros((3, 10, 24), np.float32), h=np.zeros((3, 1, 1, 8), np.float32),
             c=np.zeros((3, 1, 1, 8), np.float32))
    entry = {"type": "npz", "path": "clips.npz", "inputs": {"x": "x", "h": "h", "c": "c"}, "batched": True}
    dataset = dataset_from_spec(entry, tmp_path)
    assert isinstance(dataset, BatchedDataset) and dataset[1].inputs["x"].shape == (10, 24)
    engine = Engine(dataset, [Agreement()], progress=False)
    engine.set_float_model(streaming_vad())
    assert engine.evaluate(streaming_vad()).values["agreement_top1"] == 1.0
