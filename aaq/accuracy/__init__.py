"""The accuracy side of AccuracyAwareQuantization, independent of ONNX graphs.

``drops``: per-metric targets, the objective that compares models, and the exact
bound that ends a full evaluation early. ``subsets``: the samples that show the
quantization loss. ``ranking``: group scores on them (on the engine's executor;
``workers``: what a worker is sent and runs). ``search``: the search strategies, against a small evaluator protocol
that ``evaluator.PlanEvaluator`` implements on the engine. ``alternatives``: other
base-algorithm params tried before any revert. ``summary``: what the run did, for
report.json. Models come from a ``build(reverted)`` callable the algorithm gives:
nothing here reads an ONNX graph.
"""
from __future__ import annotations

from aaq.accuracy.drops import MetricTarget, StopRule, Targets, allowed_drop
from aaq.accuracy.search import SEARCHES, BisectionSearch, GreedySearch, Measurement, SearchEvaluator, SearchResult

__all__ = ["SEARCHES", "BisectionSearch", "GreedySearch", "Measurement", "MetricTarget", "SearchEvaluator",
           "SearchResult", "StopRule", "Targets", "allowed_drop"]
