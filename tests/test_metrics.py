from __future__ import annotations

import textwrap
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from aaq.engine import Accuracy, Agreement, MeanSquaredError, Metric, metric_from_spec, metrics, register_metric
from aaq.engine.datasets import check_plugin_schema
from aaq.errors import BadInputError, DataError, PluginError

LOGITS = np.array([[0.1, 0.7, 0.2],
                   [0.5, 0.1, 0.4],
                   [0.2, 0.3, 0.5],
                   [0.6, 0.3, 0.1]], dtype=np.float32)


@pytest.mark.parametrize("top_k, labels, expected", [
    pytest.param(1, [1, 0, 2, 2], [1, 1, 1, 0], id="top1"),
    pytest.param(2, [2, 2, 1, 1], [1, 1, 1, 1], id="top2"),
    pytest.param(2, [0, 1, 0, 2], [0, 0, 0, 0], id="top2-misses"),
    pytest.param(5, [0, 1, 2, 0], [1, 1, 1, 1], id="k-above-classes"),
])
def test_accuracy_top_k(top_k, labels, expected):
    got = Accuracy(top_k=top_k).score({"y": LOGITS}, np.array(labels))
    assert got.dtype == np.float64 and got.tolist() == expected


@pytest.mark.parametrize("outputs, labels", [
    pytest.param(LOGITS[:, :, None, None], [1, 0, 2, 2], id="B,C,1,1"),
    pytest.param(LOGITS[:, None, :], [1, 0, 2, 2], id="B,1,C"),
    pytest.param(LOGITS, np.array([[1], [0], [2], [2]]), id="labels-B,1"),
    pytest.param(LOGITS, [1.0, 0.0, 2.0, 2.0], id="integral-floats"),
])
def test_accuracy_accepted_shapes(outputs, labels):
    assert Accuracy().score({"y": outputs}, labels).tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("outputs, labels, phrase", [
    pytest.param(LOGITS, None, "needs labels; the dataset has none", id="no-labels"),
    pytest.param(LOGITS, np.eye(3)[[1, 0, 2, 2]], r"one class index per sample, shape \(4,\), got labels of "
                 r"shape \[4, 3\]", id="one-hot"),
    pytest.param(LOGITS, [0.5, 1, 2, 2], "integer class indices, got float64", id="fractional"),
    pytest.param(np.zeros((4, 2, 3)), [0, 1, 2, 2], r"class scores of shape \(B, C\), got \[4, 2, 3\]",
                 id="sequence-output"),
])
def test_accuracy_refuses_what_it_cannot_read(outputs, labels, phrase):
    with pytest.raises(DataError, match=phrase):
        Accuracy().score({"y": outputs}, labels)


def test_accuracy_reads_the_named_output():
    outputs = {"aux": np.zeros((4, 3)), "y": LOGITS}
    assert Accuracy(output="y").score(outputs, [1, 0, 2, 2]).tolist() == [1, 1, 1, 0]
    assert Accuracy().score(outputs, [0, 0, 0, 0]).tolist() == [1, 1, 1, 1]  # the first output
    with pytest.raises(BadInputError, match="no output 'logits'; its outputs: aux, y"):
        Accuracy(output="logits").score(outputs, [0, 0, 0, 0])


def test_mse_per_sample():
    pred = np.array([[1.0, 2.0], [0.0, 0.0]], dtype=np.float32)
    target = np.array([[1.0, 0.0], [1.0, 1.0]])
    metric = MeanSquaredError()
    assert not metric.higher_is_better
    assert metric.score({"y": pred}, target).tolist() == [2.0, 1.0]
    assert metric.aggregate(np.array([2.0, 1.0])) == 1.5
    with pytest.raises(DataError, match="differ in size"):
        metric.score({"y": pred}, target[:1])


def test_agreement_measures():
    ref = {"y": np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])}
    out = {"y": np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])}
    assert Agreement("top1").score(ref, ref).tolist() == [1, 1, 1]
    assert Agreement("top1").score(out, ref).tolist() == [1, 0, 1]
    np.testing.assert_allclose(Agreement("cosine").score(out, ref), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(Agreement("nmse").score(out, ref)[:2], [1.0, 1.25])
    assert Agreement("nmse").higher_is_better is False and Agreement("cosine").higher_is_better
    assert Agreement.reference and not Accuracy.reference
    seq = np.zeros((1, 4, 3))
    seq[0, :, 0] = 1
    other = seq.copy()
    other[0, 1] = [0, 1, 0]
    assert Agreement("top1").score({"y": other}, {"y": seq}).tolist() == [0.75]  # share of positions
    with pytest.raises(BadInputError, match="top1, cosine or nmse"):
        Agreement("l1")


def test_from_spec_names_the_metric_and_builtins_are_registered():
    assert {"accuracy", "mse", "agreement", "python"} <= set(metrics.names())
    for name in ("accuracy", "mse", "agreement", "python"):
        check_plugin_schema(name, metrics.get(name))
    top5 = metrics.get("accuracy").from_spec("my_top5", {"top_k": 5, "output": None}, Path("."))
    assert isinstance(top5, Accuracy) and top5.name == "my_top5" and top5.top_k == 5
    cos = metrics.get("agreement").from_spec("cos", {"measure": "cosine", "output": None}, Path("."))
    assert cos.name == "cos" and cos.measure == "cosine"


def test_python_metric_factory(tmp_path):
    (tmp_path / "aaq_test_metric_factory.py").write_text(textwrap.dedent("""
        import numpy as np
        from aaq.engine import Metric

        class Const(Metric):
            higher_is_better = False
            def __init__(self, value):
                self.value = value
            def score(self, outputs, labels):
                return np.full(len(next(iter(outputs.values()))), self.value)

        def make(value=1.0):
            return Const(value)

        def not_a_metric():
            return object()
    """))
    metric = metrics.get("python").from_spec(
        "const", {"factory": "aaq_test_metric_factory:make", "kwargs": {"value": 3.0}}, tmp_path)
    assert metric.name == "const" and metric.higher_is_better is False
    assert metric.score({"y": np.zeros((2, 1))}, None).tolist() == [3.0, 3.0]
    with pytest.raises(PluginError, match="'aaq_test_metric_nowhere:make'.*cannot import module"):
        metrics.get("python").from_spec("m", {"factory": "aaq_test_metric_nowhere:make"}, tmp_path)
    with pytest.raises(PluginError, match="must return an aaq.engine.Metric instance, got object"):
        metrics.get("python").from_spec("m", {"factory": "aaq_test_metric_factory:not_a_metric"}, tmp_path)


def test_registration_refuses_broken_metric_plugins():
    @register_metric("aaq_test_not_a_metric")
    class NotAMetric:  # a builder may register; what it builds must be a Metric
        schema: ClassVar[dict] = {"type": "object", "additionalProperties": False}

        @classmethod
        def from_spec(cls, name, options, base_dir):
            return None

    with pytest.raises(PluginError, match="from_spec must return an aaq.engine.Metric, got NoneType"):
        metric_from_spec({"name": "m", "type": "aaq_test_not_a_metric"}, Path("."))

    with pytest.raises(PluginError, match="must define 'schema'"):
        @register_metric("aaq_test_no_schema")
        class NoSchema(Metric):
            schema = None

            def score(self, outputs, labels):
                return []

    with pytest.raises(PluginError, match="not a valid JSON Schema"):
        @register_metric("aaq_test_bad_schema")
        class BadSchema(Metric):
            schema: ClassVar[dict] = {"type": "object", "additionalProperties": False, "properties": 3}

            def score(self, outputs, labels):
                return []

    @register_metric("aaq_test_recall")
    class Recall(Metric):
        schema: ClassVar[dict] = {"type": "object", "additionalProperties": False,
                                  "properties": {"positive": {"type": "integer", "default": 1}}}

        def __init__(self, positive=1):
            self.positive = positive

        def score(self, outputs, labels):
            return np.ones(len(labels))

    assert metrics.get("aaq_test_recall") is Recall
    assert metrics.source("aaq_test_recall").startswith("module ")
