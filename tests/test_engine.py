from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from aaq.engine import Accuracy, Agreement, ArrayDataset, Engine, MeanSquaredError, Metric, Sample
from aaq.errors import BadInputError, DataError, ModelError
from models import conv_net, labeled_data, mlp

N = 40


@pytest.fixture(scope="module")
def data():
    return labeled_data(conv_net, N)


@pytest.fixture
def engine(data):
    x, y = data
    return Engine(ArrayDataset({"x": x}, y), [Accuracy()], batch_size=8, progress=False)


def perturbed(model: onnx.ModelProto, scale: float = 0.5, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` with noise on every weight: a stand-in for a badly quantized model."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for init in copy.graph.initializer:
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, scale, w.shape)).astype(w.dtype), init.name))
    return copy


def direct(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


# ---------------------------------------------------------------------- batching


def test_batched_and_per_sample_runs_agree(data):
    x, y = data
    free, fixed = conv_net(batch="N"), conv_net(batch=1)
    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], batch_size=8, progress=False)
    batched = list(engine.run(free, np.arange(N)))
    assert [len(b) for b, _ in batched] == [8] * 5 and engine.session_runs == 5
    single = list(engine.run(fixed, np.arange(N)))
    assert [len(b) for b, _ in single] == [1] * N and engine.session_runs == 5 + N
    got_free = np.concatenate([o["y"] for _, o in batched])
    got_fixed = np.concatenate([o["y"] for _, o in single])
    np.testing.assert_allclose(got_free, got_fixed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_free, direct(free, x), rtol=1e-5, atol=1e-6)
    assert engine.evaluate(free).values == engine.evaluate(fixed).values == {"top1": 1.0}


def test_model_fixed_at_batch_4_is_padded_on_the_last_batch(data):
    x, y = data
    engine = Engine(ArrayDataset({"x": x[:10]}, y[:10]), [Accuracy()], batch_size=3, progress=False)
    batches = list(engine.run(conv_net(batch=4), np.arange(10)))
    assert [len(b) for b, _ in batches] == [4, 4, 2]
    got = np.concatenate([o["y"] for _, o in batches])
    np.testing.assert_allclose(got, direct(conv_net(), x[:10]), rtol=1e-5, atol=1e-6)


def test_run_yields_in_order_and_reads_the_calibration_dataset(data):
    x, y = data
    calib = ArrayDataset({"x": x[:5] * 2})
    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], calibration_dataset=calib, batch_size=2,
                    progress=False)
    model = conv_net()
    out = list(engine.run(model, [4, 0, 3], calibration=True))
    assert [b.tolist() for b, _ in out] == [[4, 0], [3]]
    np.testing.assert_allclose(np.concatenate([o["y"] for _, o in out]), direct(model, x[[4, 0, 3]] * 2),
                               rtol=1e-5, atol=1e-5)
    assert engine.calibration_indices(3).tolist() == [0, 1, 2]
    assert engine.calibration_indices(100).tolist() == list(range(5))
    with pytest.raises(DataError, match="index 5 is out of range: the calibration dataset has 5"):
        engine.run(model, [5], calibration=True)


def test_intermediate_outputs_equal_a_direct_computation():
    x = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    model = mlp()
    before = model.SerializeToString()
    engine = Engine(ArrayDataset({"x": x}), [], batch_size=4, progress=False)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    mm1 = next(n for n in model.graph.node if n.name == "mm1")
    relu = next(n for n in model.graph.node if n.op_type == "Relu" and n.input[0] == mm1.output[0])
    names = [mm1.output[0], relu.output[0], "y"]
    parts = list(engine.run(model, np.arange(10), outputs=names))
    got = {n: np.concatenate([o[n] for _, o in parts]) for n in names}
    expected = x @ weights[mm1.input[1]]
    np.testing.assert_allclose(got[mm1.output[0]], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[relu.output[0]], np.maximum(expected, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["y"], direct(model, x), rtol=1e-5, atol=1e-5)
    assert model.SerializeToString() == before  # outputs were added on a copy
    with pytest.raises(ModelError, match="no tensor 'nope'"):
        engine.run(model, [0], outputs=["nope"])


# ---------------------------------------------------------------------- evaluation and caches


def test_evaluation_cache_avoids_rerunning(engine):
    model = conv_net()
    first = engine.evaluate(model, [0, 1, 2, 3, 4])
    assert first.samples_inferred == 5 and engine.session_runs == 1
    full = engine.evaluate(model)
    assert full.samples_inferred == N - 5 and engine.session_runs == 1 + 5  # 35 samples, batches of 8
    runs = engine.session_runs
    again = engine.evaluate(model)
    sub = engine.evaluate(model, engine.subset(10, seed=1))
    assert again.samples_inferred == sub.samples_inferred == 0 and engine.session_runs == runs
    assert again.values == full.values
    other = engine.evaluate(perturbed(model))
    assert other.samples_inferred == N
    assert [r.inferred for r in engine.history] == [5, N - 5, 0, 0, N]
    assert [r.full for r in engine.history] == [False, True, True, False, True]


def test_per_sample_values_aggregate_to_the_value(data):
    x, y = data
    targets = direct(conv_net(), x)
    dataset = ArrayDataset({"x": x}, targets)
    engine = Engine(dataset, [MeanSquaredError()], batch_size=8, progress=False)
    ev = engine.evaluate(perturbed(conv_net(), 0.1), [3, 1, 7, 20, 35])
    assert ev.indices.tolist() == [3, 1, 7, 20, 35]
    assert ev.per_sample["mse"].shape == (5,)
    assert ev.values["mse"] == pytest.approx(float(np.mean(ev.per_sample["mse"])))
    assert ev.per_sample["mse"][1] == pytest.approx(
        float(np.mean((direct(perturbed(conv_net(), 0.1), x[1:2]) - targets[1]) ** 2)), rel=1e-4)

    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], batch_size=8, progress=False)
    ev = engine.evaluate(perturbed(conv_net(), 0.3))
    assert 0 < ev.values["top1"] < 1
    assert ev.values["top1"] == pytest.approx(ev.per_sample["top1"].mean())


class _Corpus(Metric):
    """Not a mean: total hits over total count, built from (hits, count) records."""

    per_sample = False

    def __init__(self):
        self.name = "corpus"

    def score(self, outputs, labels):
        hits = outputs["y"].argmax(axis=1) == np.asarray(labels)
        return [(int(h), 1 + int(lab) % 3) for h, lab in zip(hits, labels)]

    def aggregate(self, entries):
        return sum(h * w for h, w in entries) / sum(w for _, w in entries)


def test_metric_that_does_not_decompose_is_cached_as_records(data):
    x, y = data
    engine = Engine(ArrayDataset({"x": x}, y), [_Corpus()], batch_size=8, progress=False)
    model = perturbed(conv_net(), 0.3)
    engine.evaluate(model, [0, 1, 2])
    ev = engine.evaluate(model)
    hits = direct(model, x).argmax(axis=1) == y
    weights = 1 + y % 3
    assert ev.per_sample["corpus"] is None and ev.samples_inferred == N - 3
    assert ev.values["corpus"] == pytest.approx(float((hits * weights).sum() / weights.sum()))


def test_subsets_are_seeded_sorted_and_distinct(engine):
    a, b, c = engine.subset(10, seed=3), engine.subset(10, seed=3), engine.subset(10, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < N
    among = engine.subset(5, seed=0, among=a)
    assert set(among) <= set(a) and len(among) == 5
    assert engine.subset(100, seed=0).tolist() == list(range(N))


def test_agreement_is_one_for_the_float_model_and_less_for_a_perturbed_one(data):
    x, _ = data
    metrics = [Agreement("top1"), Agreement("cosine"), Agreement("nmse")]
    engine = Engine(ArrayDataset({"x": x}), metrics, batch_size=8, progress=False)
    model = conv_net()
    engine.set_float_model(model)
    ref = engine.evaluate(model)
    assert ref.values == pytest.approx({"agreement_top1": 1.0, "agreement_cosine": 1.0, "agreement_nmse": 0.0})
    runs = engine.session_runs
    bad = engine.evaluate(perturbed(model))
    assert engine.session_runs == runs + 5  # the float outputs were kept, not re-run
    assert bad.values["agreement_top1"] < 1 and bad.values["agreement_cosine"] < 1
    assert bad.values["agreement_nmse"] > 0
    np.testing.assert_allclose(engine.outputs(model, [2, 9])["y"], direct(model, x[[2, 9]]), rtol=1e-5, atol=1e-6)
    assert engine.session_runs == runs + 5


def test_agreement_runs_the_float_model_once_when_needed(data):
    x, _ = data
    engine = Engine(ArrayDataset({"x": x}), [Agreement()], batch_size=8, progress=False)
    with pytest.raises(BadInputError, match="set_float_model"):
        engine.evaluate(conv_net(), [0])
    engine.set_float_model(conv_net())
    assert engine.session_runs == 0
    engine.evaluate(perturbed(conv_net()), [0, 1, 2])
    assert engine.session_runs == 2  # the float model on 3 samples, then the candidate
    assert engine.evaluate(conv_net(), [0, 1, 2]).samples_inferred == 0  # scored on the way


def test_float_outputs_are_kept_only_where_something_reads_them(engine, data):
    x, _ = data
    model = conv_net()
    engine.set_float_model(model)
    engine.evaluate(model)  # accuracy needs labels, not the float outputs: none are stored
    assert not engine._reference.have.any() and not engine._reference.arrays
    runs = engine.session_runs
    np.testing.assert_allclose(engine.outputs(model, [3, 4])["y"], direct(model, x[[3, 4]]), rtol=1e-5, atol=1e-6)
    assert engine.session_runs == runs + 1 and engine._reference.have.sum() == 2
    engine.outputs(model, [4, 3])
    assert engine.session_runs == runs + 1  # asked again: served from the store


def test_session_cache_is_bounded(data):
    x, y = data
    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], progress=False, session_cache_size=2)
    for seed in range(4):
        engine.evaluate(conv_net(seed=seed), [0])
    assert len(engine._sessions) == 2 and engine._sessions.created == 4


# ---------------------------------------------------------------------- early stop


def test_stop_hook_ends_the_evaluation(engine):
    seen = []

    def stop(partial):
        seen.append((len(partial.indices), partial.complete, partial.values["top1"]))
        return len(partial.indices) >= 16

    ev = engine.evaluate(conv_net(), stop=stop)
    assert ev.stopped_early and not ev.complete and ev.requested == N
    assert ev.indices.tolist() == list(range(16)) and ev.samples_inferred == 16
    assert [s[:2] for s in seen] == [(8, False), (16, False)]
    assert ev.per_sample["top1"].shape == (16,)
    assert engine.history[-1].complete is False
    rest = engine.evaluate(conv_net())  # what was done before is not done again
    assert rest.complete and rest.samples_inferred == N - 16


def test_stop_hook_counts_cached_samples(engine):
    model = conv_net()
    engine.evaluate(model, np.arange(10))
    runs = engine.session_runs
    sizes = []

    def stop(partial):
        sizes.append(len(partial.indices))
        return len(partial.indices) >= 10

    ev = engine.evaluate(model, stop=stop)
    assert sizes == [10] and ev.stopped_early and ev.samples_inferred == 0
    assert engine.session_runs == runs and ev.indices.tolist() == list(range(10))
    never = engine.evaluate(model, stop=lambda p: False)
    assert never.complete and not never.stopped_early and never.samples_inferred == N - 10


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("arrays, phrase", [
    pytest.param(lambda x: {"z": x}, r"no array for model input 'x' \(expected \[N, 3, 8, 8\] float32\)",
                 id="name"),
    pytest.param(lambda x: {"x": x[:, 0]}, r"model input 'x'.*expects \[N, 3, 8, 8\].*gives \[8, 8\] float32",
                 id="rank"),
    pytest.param(lambda x: {"x": x.astype(np.float64)}, r"expects \[N, 3, 8, 8\] float32.*gives \[3, 8, 8\] "
                 r"float64", id="dtype"),
    pytest.param(lambda x: {"x": np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))},
                 r"expects \[N, 3, 8, 8\] float32 \(\[3, 8, 8\] per sample\).*gives \[3, 9, 9\]", id="dims"),
])
def test_data_that_does_not_fit_the_model(data, arrays, phrase):
    engine = Engine(ArrayDataset(arrays(data[0]), data[1]), [Accuracy()], progress=False)
    with pytest.raises(DataError, match=phrase):
        engine.set_float_model(conv_net())
    with pytest.raises(DataError, match=phrase):
        engine.evaluate(conv_net())
    assert engine.session_runs == 0


def test_calibration_dataset_is_checked_before_any_inference(data):
    x, y = data
    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], progress=False,
                    calibration_dataset=ArrayDataset({"x": x[:, :, :4]}))
    with pytest.raises(DataError, match=r"calibration dataset does not fit model input 'x'.*\[3, 4, 8\]"):
        engine.set_float_model(conv_net())
    assert engine.session_runs == 0


def test_index_out_of_range(engine):
    with pytest.raises(DataError, match=r"sample 40: index 40 is out of range: the dataset has 40 samples") as info:
        engine.evaluate(conv_net(), [0, 40])
    assert info.value.sample_index == 40
    with pytest.raises(DataError, match="index -1"):
        engine.run(conv_net(), [-1])


def test_nan_in_an_output_names_the_sample(data):
    x, y = data
    x = x.copy()
    x[13] = 3e38  # finite, but the model's output overflows (NaN in an input is refused before: test_datasets)
    engine = Engine(ArrayDataset({"x": x}, y), [Accuracy()], batch_size=8, progress=False)
    with pytest.raises(DataError, match=r"sample 13: the model output 'y' holds NaN or Inf") as info:
        engine.evaluate(conv_net())
    assert info.value.sample_index == 13


class _Fragile(Metric):
    def __init__(self):
        self.name = "fragile"

    def score(self, outputs, labels):
        if 7 in np.asarray(labels).tolist():
            raise ValueError("cannot score class 7")
        return np.ones(len(labels))


def test_a_metric_that_raises_names_itself_and_the_sample(data):
    x, _ = data
    labels = np.zeros(N, dtype=np.int64)
    labels[11] = 7
    engine = Engine(ArrayDataset({"x": x}, labels), [_Fragile()], batch_size=8, progress=False)
    with pytest.raises(DataError, match=r"sample 11: metric 'fragile' failed: ValueError: cannot score class 7"):
        engine.evaluate(conv_net())
    engine = Engine(ArrayDataset({"x": x}), [Accuracy()], batch_size=8, progress=False)
    with pytest.raises(DataError, match=r"sample 0: metric 'top1' failed: .*needs labels"):
        engine.evaluate(conv_net())


def test_engine_arguments_are_checked(data):
    x, y = data
    with pytest.raises(BadInputError, match="batch_size must be >= 1"):
        Engine(ArrayDataset({"x": x}), [], batch_size=0)
    with pytest.raises(BadInputError, match="metric names must be unique"):
        Engine(ArrayDataset({"x": x}), [Accuracy(), Accuracy()])
    with pytest.raises(BadInputError, match=r"\['NoSuchExecutionProvider'\] are not available"):
        Engine(ArrayDataset({"x": x}), [], providers=["NoSuchExecutionProvider"])
    with pytest.raises(ModelError, match="ONNX Runtime cannot load the model"):
        Engine(ArrayDataset({"x": x}), [], progress=False).evaluate(b"not a model")


# ---------------------------------------------------------------------- from_spec and plugins


def test_from_spec_with_npz_and_python_plugins(tmp_path, data):
    x, y = data
    np.savez(tmp_path / "val.npz", images=x, classes=y)
    np.savez(tmp_path / "calib.npz", images=x[:6])
    (tmp_path / "aaq_test_engine_plugins.py").write_text(textwrap.dedent("""
        import numpy as np
        from aaq.engine import ArrayDataset, Metric

        class Hits(Metric):
            def __init__(self, offset):
                self.offset = offset
            def score(self, outputs, labels):
                return (outputs["y"].argmax(axis=1) == np.asarray(labels)) + self.offset

        def make_metric(offset=0.0):
            return Hits(offset)

        def make_data(path, n):
            z = np.load(path)
            return ArrayDataset({"x": z["images"][:n]}, z["classes"][:n])
    """))
    spec = {
        "type": "onnxruntime",
        "dataset": {"type": "npz", "path": "val.npz", "inputs": {"x": "images"}, "labels": "classes"},
        "calibration_dataset": {"type": "npz", "path": "calib.npz", "inputs": {"x": "images"}},
        "metrics": [{"name": "acc", "type": "accuracy", "top_k": 1},
                    {"name": "hits", "type": "python", "factory": "aaq_test_engine_plugins:make_metric",
                     "kwargs": {"offset": 1.0}}],
        "batch_size": 16,
    }
    engine = Engine.from_spec(json.loads(json.dumps(spec)), tmp_path, progress=False)
    assert engine.num_samples == N and engine.num_calibration_samples == 6
    assert engine.evaluate(conv_net()).values == {"acc": 1.0, "hits": 2.0}
    assert engine.session_runs == 3

    spec["dataset"] = {"type": "python", "factory": "aaq_test_engine_plugins:make_data",
                       "kwargs": {"path": str(tmp_path / "val.npz"), "n": 12}}
    del spec["calibration_dataset"]
    engine = Engine.from_spec(spec, tmp_path, progress=False)
    assert engine.num_samples == engine.num_calibration_samples == 12
    assert engine.evaluate(conv_net()).values == {"acc": 1.0, "hits": 2.0}


def test_onnx_runtime_threads_spin_only_when_the_spec_asks(tmp_path, data):
    x, _ = data
    np.savez(tmp_path / "val.npz", images=x)
    spinning = "session.intra_op.allow_spinning"
    spec = {"dataset": {"type": "npz", "path": "val.npz", "inputs": {"x": "images"}},
            "metrics": [{"name": "a", "type": "agreement"}]}
    default = Engine.from_spec(spec, tmp_path, progress=False)
    assert default.session_options.get_session_config_entry(spinning) == "0"
    asked = Engine.from_spec({**spec, "allow_spinning": True, "intra_op_threads": 1}, tmp_path, progress=False)
    assert asked.session_options.get_session_config_entry(spinning) == "1"
    assert asked.session_options.intra_op_num_threads == 1
    assert asked.session(conv_net()).get_session_options().get_session_config_entry(spinning) == "1"


def test_a_dataset_without_the_batch_fast_path_works(data):
    x, y = data

    class Plain:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return Sample({"x": x[i]}, int(y[i]))

    engine = Engine(Plain(), [Accuracy()], batch_size=4, progress=False)
    ev = engine.evaluate(conv_net())
    assert ev.values == {"top1": 1.0} and engine.session_runs == 3


class _Short(Metric):
    def __init__(self):
        self.name = "short"

    def score(self, outputs, labels):
        return np.ones(1)


def test_a_metric_must_give_one_entry_per_sample(data):
    engine = Engine(ArrayDataset({"x": data[0]}), [_Short()], batch_size=4, progress=False)
    with pytest.raises(DataError, match=r"sample 0: metric 'short' returned 1 entries for a batch of 4"):
        engine.evaluate(conv_net())


def test_from_spec_refuses_unknown_types(tmp_path):
    from aaq.errors import SpecError

    with pytest.raises(SpecError, match=r"engine.dataset.type: unknown dataset 'csv'"):
        Engine.from_spec({"type": "onnxruntime", "dataset": {"type": "csv"}, "metrics": []}, tmp_path)
    with pytest.raises(SpecError, match="engine.type: must be 'onnxruntime'"):
        Engine.from_spec({"type": "openvino", "dataset": {"type": "npz"}, "metrics": []}, tmp_path)
