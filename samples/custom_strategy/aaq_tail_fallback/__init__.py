"""An example tuning strategy plugin: fall back the layers nearest the output first, one more at a time.

It needs no ranking: after the first model-wise config of the space, it falls back
the last unit (group of layers) of the graph, then the last two, and so on, until
a trial meets the criterion (the exit policy then ends the run) or ``max_float``
units are in float. It reads the history from the monitor and keeps none of its own.
"""
from __future__ import annotations

from aaq.tuning.strategies import Strategy, register_strategy

__version__ = "0.1"


@register_strategy("tail_fallback")
class TailFallback(Strategy):
    """``{"name": "tail_fallback", "max_float": 3}``: at most ``max_float`` units fall back."""

    options = ("max_float",)

    def __init__(self, context, max_float: int = 3) -> None:
        super().__init__(context, max_float=max_float)
        self.max_float = int(max_float)
        self.base = context.space.quantize_configs()[0]
        self.units = context.units(self.base)  # in graph order

    def propose(self, monitor):
        count = len(monitor.trials)  # 0: the base config, k: the last k units in float
        if count > min(self.max_float, len(self.units)):
            return None
        tail = self.units[len(self.units) - count:] if count else []
        return self.base.with_fallback(name for unit in tail for name in unit)

    @property
    def phase(self) -> str:
        return "tail fallback"
