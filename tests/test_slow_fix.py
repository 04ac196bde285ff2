"""A result slower than float: the widened and swapped mixes tried, and the record the run reports."""
from __future__ import annotations

from aaq.algorithms.slow_fix import candidate_mixes
from aaq.quantization.graph import FLOAT


def test_widen_then_swap_without_the_all_float_model() -> None:
    # a chain 0 - 1 - 2 - 3 - 4 - 5; groups 1 and 4 reverted
    neighbours = {0: [FLOAT, 1], 1: [0, 2], 2: [1, 3], 3: [2, 4], 4: [3, 5], 5: [4, FLOAT]}
    scores = {0: 0.1, 1: 0.5, 2: 0.2, 3: 0.45, 4: 0.9, 5: 0.85}
    mixes = candidate_mixes([1, 4], neighbours, scores, quantized=[0, 1, 2, 3, 4, 5])
    names = [name for name, _ in mixes]
    sets = [mix for _, mix in mixes]
    assert sets[0] == frozenset({0, 1, 2, 4}) and names[0].startswith("widen group 1")
    assert frozenset({1, 3, 4, 5}) in sets
    assert frozenset({3, 4}) in sets  # 1 swapped for 3, the closest score
    assert frozenset({1, 5}) in sets  # 4 swapped for 5
    assert frozenset(range(6)) not in sets  # every group in float is the float model, not a mix
    assert len(set(sets)) == len(sets)


def test_no_neighbour_in_int8_gives_only_swaps() -> None:
    neighbours = {0: [FLOAT], 1: [FLOAT]}
    mixes = candidate_mixes([0], neighbours, {0: 0.3, 1: 0.2}, quantized=[0, 1])
    assert [m for _, m in mixes] == [frozenset({1})]
