"""Metrics: how good a model's outputs are, sample by sample, and the built-in types.

Every metric scores samples one batch at a time and the engine caches those scores
by (model digest, sample index): that is what lets a model never be run twice on
the same sample, and what gives AccuracyAwareQuantization per-sample values to rank
layers with (POT asked metrics for per-sample values too, §2.8 of POT_REFERENCE).
"""
from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from aaq.engine.datasets import check_plugin_schema, plugin_options
from aaq.engine.python_datasets import call_factory
from aaq.errors import BadInputError, DataError, PluginError
from aaq.registry import Registry

logger = logging.getLogger(__name__)

_OUTPUT_OPTION = {"type": ["string", "null"], "default": None,
                  "description": "the model output to read; null = the first graph output"}


class Metric(abc.ABC):
    """A measure of model quality, declared with its direction and whether it decomposes.

    Call order (what the engine does for one evaluation):

    1. ``score(outputs, labels)`` once per batch. It returns one entry per sample of
       the batch. The engine caches entries by (model, sample), across evaluations.
    2. ``aggregate(entries)`` once, over the entries of all samples evaluated
       (cached or new, in the order of the requested indices): the metric's value.

    ``per_sample=True``: entries are float scores (an array of shape ``(B,)``) and the
    value is their mean unless ``aggregate`` says otherwise; these scores are the
    per-sample values that ranking and early stopping read.

    ``per_sample=False``, for a metric that is not a mean of per-sample scores (F1,
    character accuracy over a corpus, mAP): ``score`` is the *update* step and
    returns, per sample, the partial result the value is built from (counts, decoded
    text, detections: any object); ``aggregate`` is the *finish* step that folds them.
    Splitting the accumulation this way is what keeps such metrics cacheable. Their
    ``Evaluation.per_sample`` is None and ranking falls back to output distances.

    ``bounds = (low, high)`` declares that every per-sample score lies in that range
    and the value is their mean: then a partial evaluation bounds the final value
    exactly, which is what lets AccuracyAwareQuantization stop an evaluation early.
    Leave it None when either is not true.

    Confidence intervals (a paired bootstrap over samples, ``aaq.accuracy.confidence``)
    need nothing more from a metric: a plain mean is resampled from the cached scores;
    any other ``aggregate`` is called once per resample on the entries of the
    resampled samples, in resample order and with repeats (the same sample may come
    several times). A metric must therefore fold any multiset of its per-sample entries
    (what F1 or character accuracy over a corpus do: sum counts, then divide). One that
    cannot (entries that are not independent per sample, a value that needs each
    sample once) sets ``resamplable = False``: an interval asked for it is a spec error.

    ``outputs`` is ``{graph output name: batched array}`` in the model's output order.
    ``labels`` are the dataset's labels of the batch (a list or array aligned with
    the batch, or None), except for a metric with ``reference = True``: it gets the
    float model's outputs for the same samples, in the same dict form.

    On a batched dataset (every sample a whole feed) ``score`` is called once per run:
    ``outputs`` are that run's arrays as the model gave them, ``labels`` a one-element
    list, and it returns one entry. A metric written for stacked batches sets
    ``stack_runs = True`` (the built-in ones do): it then gets each run's arrays with a
    leading axis of one sample added, the float model's too.
    """

    name: str = ""
    higher_is_better: bool = True
    per_sample: bool = True
    reference: ClassVar[bool] = False
    stack_runs: ClassVar[bool] = False
    bounds: tuple[float, float] | None = None
    resamplable: ClassVar[bool] = True
    schema: ClassVar[dict] = {"type": "object", "additionalProperties": False, "properties": {}}

    @classmethod
    def from_spec(cls, name: str, options: dict, base_dir: Path) -> "Metric":
        """An instance for validated, default-filled options (every key of the entry but name/type)."""
        metric = cls(**options)
        metric.name = name
        return metric

    @abc.abstractmethod
    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray | Sequence[Any]:
        """One entry per sample of the batch (floats when ``per_sample``)."""

    def aggregate(self, entries: np.ndarray | Sequence[Any]) -> float:
        """The value over the given entries; the mean of the scores by default."""
        return float(np.mean(entries)) if len(entries) else float("nan")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_metric_class(name: str, obj: object) -> None:
    """Refuse, at registration, a metric type without an options schema and ``from_spec``.

    A metric type is usually a ``Metric`` subclass; a builder of metrics (such as
    ``python``) only needs ``schema`` and ``from_spec``: what ``from_spec`` returns
    is checked to be a ``Metric`` when the spec is read.
    """
    if not isinstance(obj, type):
        raise PluginError("a metric plugin must be a class (a Metric subclass, or a builder with from_spec)", name)
    check_plugin_schema(name, obj)


metrics: Registry[type[Metric]] = Registry("metric", "aaq.metrics", builtins="aaq.engine.metrics",
                                           check=check_metric_class)


def register_metric(name: str) -> Callable[[type[Metric]], type[Metric]]:
    """Class decorator: make the metric usable from a spec as ``{"type": name, ...}``."""
    return metrics.decorator(name)


def metric_from_spec(entry: dict, base_dir: Path, json_path: str = "engine.metrics[0]") -> Metric:
    """The metric of a spec entry ``{"name": ..., "type": ..., options}``."""
    cls = metrics.get(entry.get("type", ""), f"{json_path}.type")
    metric = cls.from_spec(entry["name"], plugin_options(entry, cls.schema, ("name", "type")), Path(base_dir))
    if not isinstance(metric, Metric):
        raise PluginError(f"from_spec must return an aaq.engine.Metric, got {type(metric).__name__}",
                          entry.get("type", ""))
    return metric


def select_output(outputs: dict[str, np.ndarray], output: str | None, metric: str) -> np.ndarray:
    """The output a metric reads: ``output`` by name, or the first graph output."""
    if output is None:
        return next(iter(outputs.values()))
    try:
        return outputs[output]
    except KeyError:
        raise BadInputError(f"metric {metric!r}: the model has no output {output!r}; "
                            f"its outputs: {', '.join(outputs)}") from None


@register_metric("accuracy")
class Accuracy(Metric):
    """Top-k accuracy of a classifier.

    Accepted shapes: the output holds scores (logits or probabilities) as ``(B, C)``;
    singleton axes after the batch axis are dropped first, so ``(B, C, 1, 1)`` or
    ``(B, 1, C)`` work too. Labels are class indices: integers of shape ``(B,)`` or
    ``(B, 1)`` (an array or a list). One-hot labels are not accepted.
    """

    stack_runs: ClassVar[bool] = True
    schema: ClassVar[dict] = {
        "type": "object", "additionalProperties": False,
        "properties": {"top_k": {"type": "integer", "minimum": 1, "default": 1}, "output": _OUTPUT_OPTION},
    }

    bounds = (0.0, 1.0)

    def __init__(self, top_k: int = 1, output: str | None = None) -> None:
        self.name = f"top{top_k}"
        self.top_k = top_k
        self.output = output

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        scores = select_output(outputs, self.output, self.name)
        batch = scores.shape[0]
        scores = scores.reshape(batch, *[d for d in scores.shape[1:] if d != 1])
        if scores.ndim != 2:
            raise DataError(f"metric {self.name!r} expects class scores of shape (B, C), "
                            f"got {list(scores.shape)}")
        target = class_labels(labels, batch, self.name, classes=scores.shape[1])
        if self.top_k == 1:
            return (scores.argmax(axis=1) == target).astype(np.float64)
        k = min(self.top_k, scores.shape[1])
        top = np.argpartition(scores, -k, axis=1)[:, -k:]
        return (top == target[:, None]).any(axis=1).astype(np.float64)


def class_labels(labels: Any, batch: int, metric: str, classes: int | None = None) -> np.ndarray:
    """Labels as a ``(B,)`` integer array; anything else is a DataError that says what was given.

    With ``classes``, a label outside ``0..classes-1`` is refused too (1-based labels for a
    0-based classifier would otherwise score 0 and look like a met target).
    """
    if labels is None:
        raise DataError(f"metric {metric!r} needs labels; the dataset has none")
    target = np.asarray(labels)
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != (batch,):
        raise DataError(f"metric {metric!r} expects one class index per sample, shape ({batch},), "
                        f"got labels of shape {list(target.shape)}")
    if not np.issubdtype(target.dtype, np.integer):
        if not (np.issubdtype(target.dtype, np.floating) and np.all(target == np.round(target))):
            raise DataError(f"metric {metric!r} expects integer class indices, got {target.dtype} labels")
        target = target.astype(np.int64)
    if classes is not None:
        outside = (target < 0) | (target >= classes)
        if outside.any():
            j = int(np.argmax(outside))
            raise DataError(f"metric {metric!r}: label {target[j]} is not a class of the model's output, which "
                            f"has {classes} classes (0..{classes - 1}); are the labels 1-based?")
    return target


@register_metric("mse")
class MeanSquaredError(Metric):
    """Mean squared error between an output and the label (same number of elements per sample)."""

    higher_is_better = False
    stack_runs: ClassVar[bool] = True
    schema: ClassVar[dict] = {"type": "object", "additionalProperties": False,
                              "properties": {"output": _OUTPUT_OPTION}}

    def __init__(self, output: str | None = None) -> None:
        self.name = "mse"
        self.output = output

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        pred = select_output(outputs, self.output, self.name)
        batch = pred.shape[0]
        if labels is None:
            raise DataError(f"metric {self.name!r} needs labels; the dataset has none")
        try:
            target = np.asarray(labels, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"metric {self.name!r} expects numeric labels: {exc}") from None
        if not np.isfinite(target).all():
            raise DataError(f"metric {self.name!r}: the labels hold NaN or Inf")
        if target.size != pred.size:
            raise DataError(f"metric {self.name!r}: output {list(pred.shape)} and labels "
                            f"{list(target.shape)} differ in size")
        diff = pred.reshape(batch, -1).astype(np.float64) - target.reshape(batch, -1)
        return np.mean(diff * diff, axis=1)


@register_metric("agreement")
class Agreement(Metric):
    """How close a model's outputs stay to the float model's, per sample; needs no labels.

    ``top1``: share of positions whose argmax over the last axis agrees (for ``(B, C)``
    outputs, 1 or 0 per sample); ``cosine``: cosine similarity of the flattened
    outputs; ``nmse``: squared error over the float output's energy (lower is better).
    """

    reference: ClassVar[bool] = True
    stack_runs: ClassVar[bool] = True
    schema: ClassVar[dict] = {
        "type": "object", "additionalProperties": False,
        "properties": {"measure": {"enum": ["top1", "cosine", "nmse"], "default": "top1"},
                       "output": _OUTPUT_OPTION},
    }

    def __init__(self, measure: str = "top1", output: str | None = None) -> None:
        if measure not in ("top1", "cosine", "nmse"):
            raise BadInputError(f"agreement measure must be top1, cosine or nmse, got {measure!r}")
        self.name = f"agreement_{measure}"
        self.measure = measure
        self.bounds = {"top1": (0.0, 1.0), "cosine": (-1.0, 1.0)}.get(measure)
        self.output = output
        self.higher_is_better = measure != "nmse"

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        pred = select_output(outputs, self.output, self.name)
        ref = select_output(labels, self.output, self.name)
        batch = pred.shape[0]
        if self.measure == "top1":
            same = pred.argmax(axis=-1) == ref.argmax(axis=-1)
            return same.reshape(batch, -1).mean(axis=1, dtype=np.float64)
        p = pred.reshape(batch, -1).astype(np.float64)
        r = ref.reshape(batch, -1).astype(np.float64)
        tiny = np.finfo(np.float64).tiny
        if self.measure == "cosine":
            norms = np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1)
            cos = np.einsum("ij,ij->i", p, r) / np.maximum(norms, tiny)
            return np.where(norms > 0, cos, np.where(np.all(p == r, axis=1), 1.0, 0.0))
        err = np.einsum("ij,ij->i", p - r, p - r)
        return err / np.maximum(np.einsum("ij,ij->i", r, r), tiny)


@register_metric("python")
class PythonMetric:
    """Builds the metric user code makes: ``factory`` (``"module:callable"``) returns a Metric instance."""

    schema: ClassVar[dict] = {
        "type": "object", "additionalProperties": False, "required": ["factory"],
        "properties": {
            "factory": {"type": "string", "pattern": "^[A-Za-z_][\\w.]*:[A-Za-z_][\\w.]*$",
                        "description": "module:callable returning an aaq.engine.Metric; a module beside "
                                       "the spec works"},
            "kwargs": {"type": "object", "default": {}},
        },
    }

    @classmethod
    def from_spec(cls, name: str, options: dict, base_dir: Path) -> Metric:
        ref = options["factory"]
        metric = call_factory(ref, base_dir, options.get("kwargs", {}), "metric")
        if not isinstance(metric, Metric):
            raise PluginError(f"the factory must return an aaq.engine.Metric instance, "
                              f"got {type(metric).__name__}", ref)
        metric.name = name
        return metric
