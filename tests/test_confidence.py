"""Confidence on every drop: the paired bootstrap, ``require: "upper"`` in the searches, the held-out check."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from aaq import Pipeline, SpecError
from aaq.accuracy.confidence import Confidence, drop_interval
from aaq.accuracy.drops import MetricTarget, StopRule, Targets
from aaq.accuracy.search import Measurement
from aaq.engine.datasets import ArrayDataset
from aaq.engine.engine import Engine
from aaq.engine.holdout import Split
from aaq.engine.metrics import Accuracy
from aaq.spec.validate import load_spec
from helpers import accuracy_aware_spec
from models import labeled_data, sensitive_mlp, write_case
from search_fakes import FakeEvaluator, bisection_search, greedy_search


def planted(n: int, p: float = 0.9, flip: float = 0.03, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = (rng.random(n) < p).astype(float)
    cand = ref.copy()
    cand[rng.random(n) < flip] = 0.0
    return cand, ref


def test_a_mean_metric_interval_matches_the_normal_approximation() -> None:
    cand, ref = planted(20000)
    iv = drop_interval(cand, ref, higher_is_better=True, resamples=4000)
    diff = ref - cand
    half = 1.959964 * diff.std(ddof=1) / np.sqrt(len(diff))
    assert iv.point == pytest.approx(diff.mean())
    assert iv.low == pytest.approx(diff.mean() - half, abs=0.1 * half)
    assert iv.high == pytest.approx(diff.mean() + half, abs=0.1 * half)
    # continuous scores take the index-matrix path: the same agreement
    rng = np.random.default_rng(1)
    c = rng.random(5000)
    r = c + rng.normal(0.01, 0.05, 5000)
    iv = drop_interval(c, r, higher_is_better=True, resamples=2000)
    half = 1.959964 * (r - c).std(ddof=1) / np.sqrt(5000)
    assert iv.high - iv.low == pytest.approx(2 * half, rel=0.1)


def test_the_seeded_interval_is_identical_run_to_run_and_an_aggregating_metric_agrees() -> None:
    cand, ref = planted(500)
    a = drop_interval(cand, ref, higher_is_better=True, seed=7)
    assert a == drop_interval(cand, ref, higher_is_better=True, seed=7)
    assert a != drop_interval(cand, ref, higher_is_better=True, seed=8)
    # a ratio of summed counts, folded by the metric's own aggregate, resampled from its per-sample parts
    ratio = lambda entries: sum(c for c, _ in entries) / sum(t for _, t in entries)  # noqa: E731
    parts = lambda scores: [(s, 1.0) for s in scores]  # noqa: E731
    b = drop_interval(parts(cand), parts(ref), higher_is_better=True, seed=7, aggregate=ratio, resamples=1000)
    assert b == drop_interval(parts(cand), parts(ref), higher_is_better=True, seed=7, aggregate=ratio,
                              resamples=1000)
    assert b.point == pytest.approx(a.point)
    assert b.low == pytest.approx(a.low, abs=0.006) and b.high == pytest.approx(a.high, abs=0.006)


def test_relative_drops_lower_is_better_and_a_given_baseline() -> None:
    cand, ref = planted(2000)
    absolute = drop_interval(cand, ref, higher_is_better=True)
    relative = drop_interval(cand, ref, higher_is_better=True, relative=True)
    assert relative.drop_type == "relative" and relative.point == pytest.approx(absolute.point / ref.mean())
    assert relative.low < relative.point < relative.high
    errors = drop_interval(1 - cand, 1 - ref, higher_is_better=False)
    assert errors.point == pytest.approx(absolute.point)
    given = drop_interval(cand, 0.9, higher_is_better=True)  # only the candidate is resampled: a wider interval
    assert given.point == pytest.approx(0.9 - cand.mean()) and given.high - given.low > absolute.high - absolute.low


def test_a_set_without_disagreement_does_not_collapse_to_zero_width_and_covers_a_small_drop() -> None:
    ref = np.ones(300)
    plain = drop_interval(ref.copy(), ref, higher_is_better=True)
    assert (plain.low, plain.high) == (0.0, 0.0)  # the percentile bootstrap alone: sure of a zero drop
    smoothed = drop_interval(ref.copy(), ref, higher_is_better=True, bounds=(0.0, 1.0))
    assert smoothed.point == 0.0 and smoothed.low < -0.003 and smoothed.high > 0.003
    # coverage on a population where the models disagree on 0.7% of samples (true drop +0.003)
    true, hits, plain_hits = 0.003, 0, 0
    for k in range(200):
        u = np.random.default_rng(k).random(300)
        r, c = np.ones(300), np.ones(300)
        c[u < 0.005] = 0.0
        r[(u >= 0.005) & (u < 0.007)] = 0.0
        iv = drop_interval(c, r, higher_is_better=True, seed=k, bounds=(0.0, 1.0))
        hits += iv.low <= true <= iv.high
        bare = drop_interval(c, r, higher_is_better=True, seed=k)
        plain_hits += bare.low <= true <= bare.high
    assert hits / 200 >= 0.93 and plain_hits / 200 < 0.85
    # many samples: the pseudo-counts' weight vanishes and the interval is the plain one
    cand, ref = planted(20000)
    a = drop_interval(cand, ref, higher_is_better=True, bounds=(0.0, 1.0))
    b = drop_interval(cand, ref, higher_is_better=True)
    assert a.low == pytest.approx(b.low, abs=0.001) and a.high == pytest.approx(b.high, abs=0.001)


def test_the_too_few_samples_sentence() -> None:
    cand, ref = planted(300, flip=0.01, seed=3)
    iv = drop_interval(cand, ref, higher_is_better=True)
    assert iv.straddles(0.01)
    line = iv.statement(0.01, "top1")
    assert line.startswith(f"top1: drop {iv.point:.4f}, 95% interval [{iv.low:.4f}, {iv.high:.4f}] on 300 samples")
    assert "too few samples to tell; about" in line and "would be needed" in line
    assert iv.samples_needed(0.01) > 300
    assert iv.statement(0.5) is None
    with pytest.raises(ValueError):
        Confidence(level=1.0)
    with pytest.raises(ValueError):
        Confidence(require="lower")


class ConfidentFake(FakeEvaluator):
    """The fake evaluator with intervals: a complete measurement carries Targets.decision's values."""

    targets: Targets

    def measure(self, reverted, rule):
        m = super().measure(reverted, rule)
        if not m.complete:
            return m
        conf = self.targets.confidence
        intervals = {t.name: drop_interval(self.scores(reverted, t.name), t.reference, higher_is_better=True,
                                           level=conf.level, resamples=conf.resamples, seed=conf.seed)
                     for t in self.targets.targets}
        point = {n: v for n, (v, _) in m.values.items()}
        decision = self.targets.decision(point, intervals)
        return Measurement(reverted, {n: (v, v) for n, v in decision.items()}, True, dict(m.values), intervals)


def confident(require: str, maximal_drop: float = 0.02) -> tuple[ConfidentFake, Targets]:
    fake = ConfidentFake(300, {"top1": {"a": set(range(0, 20)), "b": set(range(20, 23)), "c": set(range(23, 24))}},
                         batch=10, seed=1)
    targets = Targets([MetricTarget("top1", True, 1.0, maximal_drop, (0.0, 1.0))],
                      Confidence(0.95, require, 1000, 0))
    fake.targets = targets
    return fake, targets


@pytest.mark.parametrize("search", [greedy_search, bisection_search], ids=["greedy", "bisection"])
def test_require_upper_reverts_one_more_group_when_only_the_point_drop_meets_the_target(search) -> None:
    outcomes = {}
    for require in ("point", "upper"):
        fake, targets = confident(require)
        start = fake.measure(frozenset(), StopRule(targets, (0.0,)))
        outcomes[require] = search(fake, targets, start, fake.groups)
    point, upper = outcomes["point"], outcomes["upper"]
    assert point.met and sorted(point.reverted) == ["a"]  # drop 4/300 <= 0.02, its upper bound is not
    iv = point.measurement.intervals["top1"]
    assert iv.point == pytest.approx(4 / 300) and iv.high > 0.02
    assert upper.met and sorted(upper.reverted) == ["a", "b"]
    assert upper.measurement.intervals["top1"].high <= 0.02
    assert upper.measurement.reported()["top1"] == pytest.approx(1 - 1 / 300)  # the report keeps the point value


@pytest.mark.parametrize("search", [greedy_search, bisection_search], ids=["greedy", "bisection"])
def test_under_upper_early_stop_and_full_evaluation_decide_the_same(search) -> None:
    results = {}
    for early in (True, False):
        fake, targets = confident("upper")
        start = fake.measure(frozenset(), StopRule(targets, (0.0,)) if early else None)
        results[early] = (search(fake, targets, start, fake.groups, early_stop=early), fake.inferred)
    (early, early_cost), (full, full_cost) = results[True], results[False]
    assert early.reverted == full.reverted and early.met == full.met
    assert [(s.group, s.kept) for s in early.steps] == [(s.group, s.kept) for s in full.steps]
    assert early_cost <= full_cost  # under upper only an evaluation sure to fail stops early


def test_a_partial_evaluation_stops_only_when_sure_to_fail_under_upper() -> None:
    targets = Targets([MetricTarget("top1", True, 1.0, 0.02, (0.0, 1.0))], Confidence(require="upper"))
    rule = StopRule(targets, (0.0,))
    ok = type("P", (), {"per_sample": {"top1": np.ones(250)}, "requested": 300, "indices": np.arange(250)})()
    bad = type("P", (), {"per_sample": {"top1": np.zeros(10)}, "requested": 300, "indices": np.arange(10)})()
    assert not rule(ok)  # looks like passing: the interval of the pessimistic value is open below
    assert rule(bad)  # 10 of 300 lost for sure: fails whatever the interval


# ------------------------------------------------------------------ holdout


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = write_case(tmp_path_factory.mktemp("confidence"), sensitive_mlp, 256)
    return root


def test_the_split_is_seeded_stratified_and_sized() -> None:
    labels = np.repeat([0, 1, 2], [100, 60, 40])
    split = Split.make(200, 0.25, labels)
    assert len(split.held_out) == 50 and len(split.search) == 150
    assert np.bincount(labels[split.held_out]).tolist() == [25, 15, 10]
    assert np.array_equal(split.held_out, Split.make(200, 0.25, labels).held_out)
    assert len(Split.make(200, 30).held_out) == 30
    assert not set(split.search) & set(split.held_out)


class CountingEngine(Engine):
    """Records the sample indices of every batch run through ONNX Runtime (evaluations, statistics, outputs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[np.ndarray] = []

    def _infer(self, entry, dataset, indices, names, finite):
        for item in super()._infer(entry, dataset, indices, names, finite):
            self.batches.append(np.array(item[0]))
            yield item


def test_held_out_samples_are_inferred_only_at_the_end_once_per_model(files: Path) -> None:
    data = np.load(files / "data.npz")
    engine = CountingEngine(ArrayDataset({"x": data["x"]}, data["y"]), [Accuracy()], batch_size=32,
                            progress=False, holdout=64)
    spec = accuracy_aware_spec(files, {"ranking_subset_size": 100})
    spec["engine"]["dataset"]["holdout"] = 64
    result = Pipeline(spec, progress=False).run(engine=engine)
    held = set(engine.holdout_indices.tolist())
    assert len(held) == 64 and result.target_met
    touching = [k for k, idx in enumerate(engine.batches) if held & set(idx.tolist())]
    assert touching == list(range(touching[0], touching[-1] + 1))  # one run at the end ...
    assert all(set(engine.batches[k].tolist()) <= held for k in touching)  # ... of held-out samples only
    counts = np.bincount(np.concatenate([engine.batches[k] for k in touching]), minlength=256)
    assert set(counts[sorted(held)].tolist()) == {2}  # the float model and the final model, once each
    assert touching[-1] == len(engine.batches) - 1  # nothing is inferred after it
    summary = result.algorithms[-1].summary
    top1 = summary["confidence"]["held_out"]["metrics"]["top1"]
    assert top1["interval"]["set"] == "held-out" and top1["interval"]["samples"] == 64
    assert summary["metrics"]["top1"]["interval"]["samples"] == 192
    report = result.report()["metrics"]["top1"]
    assert report["interval"]["set"] == "search" and report["held_out"]["set"] == "held-out"


def test_an_overfitted_search_fails_the_target_with_the_reason(tmp_path: Path, caplog) -> None:
    onnx.save(sensitive_mlp(), str(tmp_path / "model.onnx"))
    x, _ = labeled_data(sensitive_mlp, n=256)
    held = Split.make(256, 64).held_out  # float labels: the split is not stratified, so it is known here
    x[held] *= 40.0  # far outside what calibration (on search samples) saw: INT8 clips them
    import onnxruntime as ort
    y = ort.InferenceSession(sensitive_mlp().SerializeToString()).run(None, {"x": x})[0].argmax(axis=1)
    np.savez(tmp_path / "data.npz", x=x, y=y.astype(np.float64))
    spec = accuracy_aware_spec(tmp_path, {"ranking_subset_size": 100})
    spec["engine"]["dataset"]["holdout"] = 64
    with caplog.at_level(logging.WARNING, logger="aaq"):
        result = Pipeline(spec, progress=False).run()
    summary = result.algorithms[-1].summary
    assert summary["confidence"]["held_out"]["overfitted"] == ["top1"]
    assert not result.target_met and result.targets == {"top1": False}
    assert "overfitted" in result.report()["target_notes"]["top1"] and "overfitted" in summary["headline"]
    assert result.model is not None
    assert any("the search overfitted" in r.getMessage() for r in caplog.records)


def _problems(excinfo) -> dict[str, str]:
    return dict(excinfo.value.problems)


def test_bad_confidence_and_holdout_input_is_a_spec_error_before_any_inference(files: Path) -> None:
    for params, path in [({"confidence": {"level": 1.0}}, "confidence.level"),
                         ({"confidence": {"level": 0.5}}, "confidence.level"),
                         ({"confidence": {"require": "lower"}}, "confidence.require")]:
        with pytest.raises(SpecError) as exc:
            load_spec(accuracy_aware_spec(files, params))
        assert any(p.startswith(f"compression.algorithms[1].params.{path}") for p in _problems(exc)), exc.value
    spec = accuracy_aware_spec(files, {"confidence": None})
    spec["engine"]["dataset"]["holdout"] = 0.2
    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    assert "compression.algorithms[1].params.confidence" in _problems(exc)
    spec = accuracy_aware_spec(files)
    spec["compression"]["algorithms"] = spec["compression"]["algorithms"][:1]
    spec["engine"]["dataset"]["holdout"] = 0.2
    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    assert "engine.dataset.holdout" in _problems(exc)
    for holdout in (1.5, 0, -3):
        spec = accuracy_aware_spec(files)
        spec["engine"]["dataset"]["holdout"] = holdout
        with pytest.raises(SpecError) as exc:
            load_spec(spec)
        assert any(p.startswith("engine.dataset.holdout") for p in _problems(exc))


def test_holdout_sizes_and_unresamplable_metrics_are_refused_before_inference(files: Path, monkeypatch) -> None:
    inferred = []
    monkeypatch.setattr(Engine, "set_float_model", lambda self, m: inferred.append(m))
    for holdout, params, message in [(250, {"ranking_subset_size": 5}, "at least 10"),
                                     (0.5, {}, "fewer than compression.algorithms[1].params.ranking_subset_size")]:
        spec = accuracy_aware_spec(files, params)
        spec["engine"]["dataset"]["holdout"] = holdout
        with pytest.raises(SpecError) as exc:
            Pipeline(spec, progress=False).run()
        assert message in _problems(exc)["engine.dataset.holdout"]

    class Whole(Accuracy):
        resamplable = False

    data = np.load(files / "data.npz")
    engine = Engine(ArrayDataset({"x": data["x"]}, data["y"]), [Whole()], progress=False)
    with pytest.raises(SpecError) as exc:
        Pipeline(accuracy_aware_spec(files), progress=False).run(engine=engine)
    assert "cannot be resampled" in _problems(exc)["engine.metrics[0]"]
    Pipeline(accuracy_aware_spec(files, {"confidence": None, "max_iter_num": 0}), progress=False)  # no interval: accepted
    assert inferred == []
