"""The accuracy side of AccuracyAwareQuantization, independent of ONNX graphs.

``drops``: per-metric targets, the objective that compares models, and the exact
bound that ends a full evaluation early. ``ranking``: the hardest samples and the
group scores. ``search``: the greedy and bisection searches, against a small
evaluator protocol. ``aaq.algorithms.accuracy_aware`` wires them to the engine and
the quantization plan.
"""
from __future__ import annotations

from aaq.accuracy.drops import MetricTarget, StopRule, Targets, allowed_drop
from aaq.accuracy.search import Measurement, SearchEvaluator, SearchResult, bisection_search, greedy_search

__all__ = ["Measurement", "MetricTarget", "SearchEvaluator", "SearchResult", "StopRule", "Targets",
           "allowed_drop", "bisection_search", "greedy_search"]
