"""The revert searches against a fake evaluator whose metric is a known function of the float groups.

Sample ``i`` of metric ``m`` scores 1 unless a group that is still quantized
damages it (``damage[m][g]``), or a group that was reverted harms it (``harm[g]``:
a revert that makes things worse, as real reverts sometimes do). ``bias`` skews the
ranking scores, to model a ranking that mispredicts.
"""
from __future__ import annotations

import numpy as np
import pytest

from aaq.accuracy.drops import MetricTarget, StopRule, Targets
from search_fakes import FakeEvaluator, bisection_search, greedy_search


def targets_for(fake: FakeEvaluator, maximal_drop: float, drop_type: str = "absolute",
                reference: dict[str, float] | None = None) -> Targets:
    ref = reference or fake.values(frozenset(fake.groups))
    from aaq.accuracy.drops import allowed_drop
    return Targets([MetricTarget(m, True, ref[m], allowed_drop(ref[m], maximal_drop, drop_type), (0.0, 1.0))
                    for m in fake.damage])


def run(search, fake, targets, **kwargs):
    start = fake.measure(frozenset(), StopRule(targets, (0.0,)))
    return search(fake, targets, start, fake.groups, **kwargs)


def disjoint(sizes: dict[str, int], start: int = 0) -> dict[str, set[int]]:
    out, i = {}, start
    for g, k in sizes.items():
        out[g] = set(range(i, i + k))
        i += k
    return out


# float: 1.0; quantized: groups damage A 10, B 5, C 2, D 0 of 100 samples.
BASIC = {"top1": disjoint({"A": 10, "B": 5, "C": 2, "D": 0})}


def test_greedy_reverts_the_right_groups_in_the_right_order() -> None:
    fake = FakeEvaluator(100, BASIC)
    result = greedy_search(fake, targets_for(fake, 0.04, reference={"top1": 1.0}),
                           fake.measure(frozenset(), None), fake.groups)
    assert result.met and result.reverted == ["A", "B"]
    assert result.measurement.point() == {"top1": pytest.approx(0.98)}
    # then A is tried back in INT8 (B alone does not meet the target): needed, stays in float
    assert [(s.group, s.kept) for s in result.steps] == [("A", True), ("B", True), ("A", True)]
    assert result.steps[-1].note == "needed" and not result.steps[-1].complete
    assert result.rankings == 1  # every kept revert lowered the drop: the ranking still predicts
    assert result.scores["A"] > result.scores["B"] > result.scores["C"]


def test_a_rolled_back_group_is_ranked_again_once_the_model_has_changed() -> None:
    # X looks best to the ranking (bias) but breaks 30 other samples when reverted; D looks second best
    # and changes nothing, so keeping it forces a new ranking: the model changed, so X is offered again.
    damage = {"top1": {**disjoint({"A": 10, "B": 5, "C": 1}), "X": set(), "D": set()}}
    fake = FakeEvaluator(100, damage, harm={"X": set(range(50, 80))}, bias={"X": 1.0, "D": 0.5})
    targets = targets_for(fake, 0.005, reference={"top1": 1.0})
    result = run(greedy_search, fake, targets)
    # D changed nothing, yet was kept (it did not raise the drop): once the target is met it goes back
    # to INT8, least important first after C (B and A are needed), and the model ends with 3 groups in float
    assert [(s.group, s.kept) for s in result.steps] == [
        ("X", False), ("D", True), ("X", False), ("A", True), ("B", True), ("C", True),
        ("B", True), ("A", True), ("D", False)]
    assert result.met and result.reverted == ["A", "B", "C"]
    assert result.steps[-1].note == "not needed: back to INT8"
    assert result.measurement.point() == fake.values(frozenset({"A", "B", "C"}))
    assert len(fake.rank_calls) == 2
    assert "X" in fake.rank_calls[0][1] and "X" in fake.rank_calls[1][1]
    assert fake.rank_calls[1][0] == frozenset({"D"})


def test_a_group_rolled_back_before_another_revert_is_retried_and_meets_the_target() -> None:
    # X damages 5 samples, but reverting it while A is still quantized breaks 30 more (the two interact):
    # the ranking tries X first (bias) and rolls it back. Once A is reverted, X helps, and the search
    # must come back to it instead of ending with "no group left to revert".
    damage = {"top1": disjoint({"A": 10, "X": 5})}
    fake = FakeEvaluator(100, damage, harm={"X": set(range(50, 80))}, bias={"X": 1.0}, harm_while={"X": {"A"}})
    targets = targets_for(fake, 0.0, reference={"top1": 1.0})
    result = run(greedy_search, fake, targets)
    assert [(s.group, s.kept) for s in result.steps] == [("X", False), ("A", True), ("X", True), ("A", True)]
    assert result.met and result.reverted == ["A", "X"] and result.stop_reason == "target met"


def test_several_metrics_all_must_hold_and_the_worst_drives_the_ranking() -> None:
    damage = {"m1": {**disjoint({"A": 10, "B": 2}), "C": set()},
              "m2": {**disjoint({"C": 8, "B": 1}, start=50), "A": set()}}
    fake = FakeEvaluator(100, damage)
    targets = targets_for(fake, 0.03, reference={"m1": 1.0, "m2": 1.0})
    result = run(greedy_search, fake, targets)
    assert result.met and result.reverted == ["A", "C"]
    assert [metric for _, _, metric in fake.rank_calls] == ["m1", "m2"]
    assert all(targets.by_name[m].met(v) for m, v in result.measurement.point().items())


def test_a_rolled_back_group_is_not_offered_again_while_the_model_is_unchanged() -> None:
    # X looks best to the ranking (bias) but breaks 30 other samples when reverted.
    damage = {"top1": {**disjoint({"A": 10, "B": 5, "C": 1}), "X": set()}}
    fake = FakeEvaluator(100, damage, harm={"X": set(range(50, 80))}, bias={"X": 1.0})
    targets = targets_for(fake, 0.005, reference={"top1": 1.0})
    result = run(greedy_search, fake, targets)
    assert [(s.group, s.kept) for s in result.steps] == [
        ("X", False), ("A", True), ("B", True), ("C", True), ("B", True), ("A", True)]
    assert result.met and result.reverted == ["A", "B", "C"]
    assert all("X" not in cands for _, cands, _ in fake.rank_calls[1:])


def test_rollback_decision_stops_early_but_is_the_same() -> None:
    damage = {"top1": {**disjoint({"A": 10, "B": 5}), "X": set()}}
    fake = FakeEvaluator(1000, damage, harm={"X": set(range(100, 400))}, bias={"X": 1.0}, batch=10)
    result = run(greedy_search, fake, targets_for(fake, 0.0, reference={"top1": 1.0}))
    rolled = [s for s in result.steps if s.group == "X"][0]
    assert not rolled.kept and not rolled.complete
    assert fake.done[frozenset({"X"})] < 1000


def test_the_best_model_seen_is_returned() -> None:
    # Without use_prev_if_drop_increase a harmful revert (X) is kept; the target (above float) cannot
    # be met, and the best model seen, before X, is what comes back.
    damage = {"top1": {**disjoint({"A": 10}), "X": set()}}
    fake = FakeEvaluator(100, damage, harm={"X": set(range(50, 70))}, bias={"X": 0.25})
    targets = targets_for(fake, 0.0, reference={"top1": 1.01})
    result = run(greedy_search, fake, targets, use_prev_if_drop_increase=False)
    assert [(s.group, s.kept) for s in result.steps] == [("A", True), ("X", True)]
    assert not result.met and result.reverted == ["A"]
    assert result.measurement.point() == fake.values(frozenset({"A"})) == {"top1": 1.0}
    assert result.rankings == 2  # X did not improve: the ranking was redone (on nothing left)


def test_max_iter_num_is_honoured() -> None:
    fake = FakeEvaluator(100, BASIC)
    targets = targets_for(fake, 0.0, reference={"top1": 1.0})
    result = run(greedy_search, fake, targets, max_reverted=1)
    assert result.reverted == ["A"] and not result.met and "max_iter_num" in result.stop_reason
    result = run(greedy_search, fake, targets, max_reverted=0)
    assert result.reverted == [] and result.steps == []
    result = run(bisection_search, fake, targets, max_reverted=2)
    assert not result.met and len(result.reverted) <= 2
    assert all(len(s.reverted) <= 2 for s in result.steps)


def test_relative_drop_is_a_fraction_of_the_float_value() -> None:
    # float 0.5 (half the samples are always wrong); quantized loses A 6, B 3, C 1 more: 0.4.
    damage = {"top1": disjoint({"A": 6, "B": 3, "C": 1})}
    fake = FakeEvaluator(100, damage, permanent=set(range(50, 100)))
    assert fake.values(frozenset(fake.groups)) == {"top1": 0.5}
    absolute = run(greedy_search, fake, targets_for(fake, 0.045, "absolute"))  # allowed 0.045
    relative = run(greedy_search, fake, targets_for(fake, 0.045, "relative"))  # allowed 0.0225
    assert absolute.met and absolute.reverted == ["A"]
    assert relative.met and relative.reverted == ["A", "B"]


def random_problem(seed: int, harmful: bool = True):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 300))
    groups = [f"g{i}" for i in range(int(rng.integers(2, 8)))]
    damage = {"top1": {g: set(rng.choice(n, int(rng.integers(0, n // 8)), replace=False).tolist())
                       for g in groups}}
    harm = {g: set(rng.choice(n, int(rng.integers(1, n // 10)), replace=False).tolist())
            for g in groups if harmful and rng.random() < 0.3}
    bias = {g: float(rng.normal(0, 0.05)) for g in groups} if harmful else {}
    fake_args = dict(n=n, damage=damage, harm=harm, bias=bias, batch=int(rng.integers(1, 40)), seed=seed)
    return fake_args, float(rng.uniform(0.0, 0.1)), str(rng.choice(["absolute", "relative"]))


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("search", [greedy_search, bisection_search], ids=["greedy", "bisection"])
def test_early_stop_takes_the_same_decisions_as_full_evaluations(seed: int, search) -> None:
    args, maximal_drop, drop_type = random_problem(seed)
    kwargs = {} if search is bisection_search else {"use_prev_if_drop_increase": bool(seed % 2)}
    outcomes = []
    for early in (True, False):
        fake = FakeEvaluator(**args)
        targets = targets_for(fake, maximal_drop, drop_type, reference={"top1": 1.0})
        result = run(search, fake, targets, early_stop=early, **kwargs)
        outcomes.append((result.reverted, [(s.group, s.kept) for s in result.steps], result.met,
                         result.measurement.point(), fake.inferred))
    assert outcomes[0][:4] == outcomes[1][:4]
    assert outcomes[0][4] <= outcomes[1][4]


@pytest.mark.parametrize("seed", range(30))
def test_bisection_finds_the_same_or_fewer_groups(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 400
    sizes = {f"g{i}": int(rng.integers(0, 30)) for i in range(int(rng.integers(2, 12)))}
    damage = {"top1": disjoint(sizes)}
    maximal_drop = float(rng.uniform(0.0, 0.2))
    results = {}
    for search in (greedy_search, bisection_search):
        fake = FakeEvaluator(n, damage, batch=25, seed=seed)
        results[search.__name__] = run(search, fake, targets_for(fake, maximal_drop, reference={"top1": 1.0}))
        results[search.__name__].inferred = fake.inferred
    greedy, bisection = results["greedy_search"], results["bisection_search"]
    assert greedy.met and bisection.met
    assert len(bisection.reverted) <= len(greedy.reverted)
    assert bisection.measurement.point() == FakeEvaluator(n, damage).values(frozenset(bisection.reverted))
