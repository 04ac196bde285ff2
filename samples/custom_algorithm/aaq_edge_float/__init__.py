"""KeepEdgesFloat: an aaq algorithm plugin that leaves a model's first and last layers in float.

A common rule of thumb for quantizing classifiers: the first layer sees raw
inputs and the last produces the logits, so both are the most sensitive. This
plugin reverts them by editing the quantization plan the previous step left
(``state.plan``), then rebuilds the QDQ model from the float model: reverting is
an edit of data, never surgery on a quantized graph.
"""
from __future__ import annotations

from dataclasses import dataclass

from aaq import Algorithm, PluginError
from aaq.quantization.qdq import apply_plan

__version__ = "0.1.0"


class KeepEdgesFloat(Algorithm):
    """Revert the first ``first`` and last ``last`` quantized groups (in graph order) to float."""

    @dataclass(frozen=True)
    class Params:
        first: int = 1
        last: int = 1

    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "first": {"type": "integer", "minimum": 0, "default": 1,
                      "description": "how many groups from the model's input side stay in float"},
            "last": {"type": "integer", "minimum": 0, "default": 1,
                     "description": "how many groups from the model's output side stay in float"},
        },
    }

    def run(self, state, engine):
        if state.plan is None:
            raise PluginError("needs a quantization plan: put DefaultQuantization before it in the spec",
                              "KeepEdgesFloat")
        order = {layer.name: i for i, layer in enumerate(state.plan.layers)}
        groups = sorted(state.plan.quantized_groups, key=lambda g: min(order[name] for name in g.layers))
        tail_start = max(self.params.first, len(groups) - self.params.last)
        chosen = groups[:self.params.first] + groups[tail_start:]
        state.plan = state.plan.with_reverted(g.id for g in chosen)
        state.model = apply_plan(state.float_model, state.plan)
        self.summary = {"reverted": [list(g.layers) for g in chosen],
                        "quantized_groups_left": len(state.plan.quantized_groups)}
        return state
