"""Ranking subset selection, output distances, group borders and the tie-break toward whole INT8 regions."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from aaq.accuracy.ranking import boundary_change, order_scores
from aaq.accuracy.subsets import hardest, output_distance
from aaq.engine import ArrayDataset, Engine
from aaq.engine.latency import MIN_RUNS, LatencyComparison, compare_latency
from aaq.quantization.graph import FLOAT, group_neighbours
from models import ModelBuilder, conv_net, mlp


def test_hardest_takes_the_largest_losses_and_breaks_ties_by_seed() -> None:
    indices = np.arange(10, 20)
    loss = np.array([0, 1, 0, 0, 2, 0, 0, 1, 0, 0], dtype=float)
    picked = hardest(indices, loss, 3, seed=0)
    assert set(picked) == {11, 14, 17} and list(picked) == sorted(picked)
    ties = [tuple(hardest(indices, np.zeros(10), 4, seed=s)) for s in range(5)]
    assert ties[0] == tuple(hardest(indices, np.zeros(10), 4, seed=0))  # seeded: reproducible
    assert len(set(ties)) > 1  # and really drawn
    # a large size: the 3 changed samples and ceil(3 / 4) = 1 unchanged one, not every sample
    roomy = hardest(indices, loss, 50, seed=0)
    assert len(roomy) == 4 and {11, 14, 17} < set(roomy)


def test_hardest_keeps_samples_the_quantized_model_gets_better_after_those_it_loses() -> None:
    indices = np.arange(12)
    loss = np.array([0.5, -0.2, 0, 0, 0.1, -0.6, 0, 0, 0, 0, 0, 0.3])
    assert list(hardest(indices, loss, 3, seed=0)) == [0, 4, 11]  # losses first, whatever the gains' size
    assert list(hardest(indices, loss, 4, seed=0)) == [0, 4, 5, 11]  # then the largest gain
    picked = hardest(indices, loss, 100, seed=1)
    assert {0, 1, 4, 5, 11} < set(picked) and len(picked) == 5 + 2  # ceil(5 / 4) unchanged samples


def test_output_distance_is_normalised_per_sample() -> None:
    ref = {"y": np.array([[1.0, 0.0], [2.0, 2.0]]), "z": np.array([[1.0], [1.0]])}
    out = {"y": np.array([[1.0, 1.0], [2.0, 2.0]]), "z": np.array([[1.0], [3.0]])}
    np.testing.assert_allclose(output_distance(ref, out), [(1.0 + 0.0) / 2, (0.0 + 4.0) / 2])


def branchy():
    """x -> c1 -> Relu -> c2 --\\
                        \\-> c3 -> Add -> Softmax -> y   (c2 and c3 both read c1's Relu)"""
    mb = ModelBuilder(0)
    x = mb.add_input("x", ["N", 3, 8, 8])
    h = mb.add_relu(mb.add_conv(x, 3, 4, name="c1"))
    a = mb.add_conv(h, 4, 4, name="c2")
    b = mb.add_conv(h, 4, 4, name="c3")
    s = mb.add_node("Add", [a, b], "add")
    mb.nodes.append(helper.make_node("Softmax", [s], ["y"], name="softmax", axis=1))
    mb.add_output("y", ["N", 4, 8, 8])
    return mb.build()


def test_group_neighbours_walk_through_transparent_ops_only() -> None:
    groups = {0: ("conv1",), 1: ("conv2",), 2: ("fc",)}
    got = group_neighbours(conv_net(), groups)
    assert sorted(got[0], key=str) == sorted([FLOAT, 1], key=str)  # graph input, and conv2 through Relu
    assert sorted(got[1], key=str) == [0, 2]                       # through Relu and Flatten
    assert sorted(got[2], key=str) == sorted([1, FLOAT], key=str)  # Identity then the graph output
    got = group_neighbours(branchy(), {0: ("c1",), 1: ("c2",), 2: ("c3",)})
    assert sorted(got[1], key=str) == sorted([0, FLOAT], key=str)  # the Add is no layer: float
    assert sorted(got[0], key=str) == sorted([FLOAT, 1, 2], key=str)


def test_boundary_change_counts_borders_added_minus_removed() -> None:
    neighbours = {0: [FLOAT, 1], 1: [0, 2], 2: [1, FLOAT]}
    assert boundary_change(0, frozenset(), neighbours) == 0
    assert boundary_change(1, frozenset(), neighbours) == 2
    assert boundary_change(1, frozenset({0}), neighbours) == 0
    assert boundary_change(1, frozenset({0, 2}), neighbours) == -2


def test_ties_go_to_the_group_that_keeps_int8_regions_whole() -> None:
    neighbours = {0: [FLOAT, 1], 1: [0, 2], 2: [1, 3], 3: [2, FLOAT]}
    scores = {1: 0.90, 2: 0.899, 0: 0.80, 3: 0.50}
    # within the tie, 2 and 1 border only INT8 groups; nothing reverted yet: plain score order
    assert [g for g, _ in order_scores(scores, 0.0, frozenset(), neighbours)] == [1, 2, 0, 3]
    # 3 is float already: 2 borders it, so among the tied 1 and 2, 2 comes first
    assert [g for g, _ in order_scores(scores, 0.005, frozenset({3}), neighbours)][:2] == [2, 1]
    # beyond the tolerance the better score wins whatever the borders
    assert [g for g, _ in order_scores(scores, 0.0005, frozenset({3}), neighbours)][:2] == [1, 2]


def test_compare_latency_times_both_models_interleaved() -> None:
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    result = compare_latency(mlp(), mlp(hidden=256), {"x": x}, runs=5, warmup=1)
    assert result.reference_ms > 0 and result.candidate_ms > 0 and result.batch_size == 8 and result.runs == 5
    assert result.slower == (result.candidate_ms > result.reference_ms)
    assert ("SLOWER" in result.statement()) == result.slower
    low, high = result.spread
    assert 0 < low <= high and result.as_dict()["ratio_quartiles"] == [low, high]
    assert (("within this machine's timing noise" in result.statement()) == (low <= 1 <= high))
    assert result.as_dict()["ratio"] == pytest.approx(result.candidate_ms / result.reference_ms)
    with pytest.raises(ValueError):
        compare_latency(mlp(), mlp(), {"x": x}, runs=0)


def test_latency_statement_says_when_the_ratio_is_within_the_noise() -> None:
    tie = LatencyComparison(10.0, 10.2, 20, 8, (0.95, 1.09))
    assert tie.slower and "SLOWER" in tie.statement() and "within this machine's timing noise" in tie.statement()
    clear = LatencyComparison(10.0, 10.6, 20, 8, (1.03, 1.08))
    assert "SLOWER" in clear.statement() and "x1.03-x1.08" in clear.statement() and "noise" not in clear.statement()


def test_compare_latency_reuses_sessions_and_keeps_to_its_budget() -> None:
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    engine = Engine(ArrayDataset({"x": x}), [], batch_size=8, progress=False)
    engine.evaluate(mlp())
    session = engine.session(mlp())
    assert engine.session(mlp()) is session and engine._sessions.created == 1  # the evaluation's session
    result = compare_latency(session, engine.session(mlp(hidden=256)), {"x": x}, runs=50, budget_seconds=0.0)
    assert result.runs == MIN_RUNS  # the budget is spent at once: only the minimum is timed
    assert compare_latency(session, session, {"x": x}, runs=7, budget_seconds=60.0).runs == 7


def test_wide_metric_bounds_do_not_let_the_boundary_tiebreak_override_scores() -> None:
    """Per-sample bounds wider than the spread of group scores must not turn every score into a tie."""
    from types import SimpleNamespace

    import numpy as np

    from aaq.accuracy.ranking import GroupRanker
    from aaq.engine.metrics import Metric

    class Wide(Metric):
        bounds = (-4.39, 1.74)

        def score(self, outputs, labels):
            return np.zeros(0)

    metric = Wide()
    metric.name = "m"
    n = 300

    def evaluate(model, idx, progress_desc=None):
        per = np.ones(len(idx))
        per[:10] = {"g_good": 0.9, "g_bad": 0.5}.get(next(iter(model), None), 0.0) if model else 0.0
        return SimpleNamespace(values={"m": per.mean()}, per_sample={"m": per}, samples_inferred=len(idx),
                               seconds=0.0)

    ranker = GroupRanker(SimpleNamespace(metrics=[metric], evaluate=evaluate), lambda r: frozenset(r), None,
                         method="metric", subset_size=n, comparison=np.arange(n), seed=0,
                         neighbours={"g_good": ["x", "y"], "g_bad": [FLOAT, FLOAT]})
    ranker.subset = lambda reverted, m: np.arange(n)
    assert [g for g, _ in ranker.rank(frozenset(), ["g_good", "g_bad"], "m")] == ["g_good", "g_bad"]


def test_subset_by_output_distance_streams_and_matches_a_direct_computation() -> None:
    """The distance pick equals numpy on the two models' outputs, and keeps no outputs of the whole set."""
    from aaq.accuracy.ranking import GroupRanker
    from aaq.engine import Agreement

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    reference, candidate = mlp(), mlp(seed=1)
    engine = Engine(ArrayDataset({"x": x}), [Agreement("cosine")], batch_size=8, progress=False)
    engine.set_float_model(reference)
    ranker = GroupRanker(engine, lambda reverted: candidate, reference, method="output_distance", subset_size=6,
                         comparison=np.arange(40), seed=0, neighbours={})
    picked = ranker.subset(frozenset(), "agreement_cosine")

    def run(model):
        import onnxruntime as ort
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    expected = output_distance({"y": run(reference)}, {"y": run(candidate)})
    assert list(picked) == sorted(np.argsort(-expected)[:6])
    assert not engine._reference.have.any()  # 40 samples compared, no float outputs kept for them
    assert ranker.counts.samples == 80  # both models inferred on the comparison set, and counted


def test_ranking_workers_leave_ctrl_c_to_the_run(monkeypatch) -> None:
    """A worker process ignores SIGINT and SIGHUP: the run handles them and closes the pool, with no worker traceback."""
    import signal

    from aaq.engine import executors

    handlers = {}
    monkeypatch.setattr(signal, "signal", lambda number, handler: handlers.__setitem__(number, handler))
    executors.ignore_interrupts()
    assert handlers == {signal.SIGINT: signal.SIG_IGN, signal.SIGHUP: signal.SIG_IGN}