"""The QDQ models one plan gives with some of its groups left in float, built on demand and kept in an LRU.

A search asks for the same few candidates again and again (the current model, the
one with the next group reverted), and building a QDQ model is a full copy of the
graph: a small cache keeps that cost off the search's loop.
"""
from __future__ import annotations

from collections import OrderedDict

import onnx

from aaq.quantization.plan import Plan
from aaq.quantization.qdq import apply_plan

CACHE_SIZE = 16


class CandidateModels:
    """``build(reverted)``: the model of ``plan`` with ``reverted`` groups (and those it already reverts) in float."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._models: OrderedDict[frozenset, onnx.ModelProto] = OrderedDict()

    def build(self, reverted: frozenset) -> onnx.ModelProto:
        if reverted in self._models:
            self._models.move_to_end(reverted)
            return self._models[reverted]
        model = apply_plan(self.plan.model, self.plan.with_reverted(reverted))
        self._models[reverted] = model
        if len(self._models) > CACHE_SIZE:
            self._models.popitem(last=False)
        return model
