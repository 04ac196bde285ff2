"""Every built-in strategy: the module the strategy registry imports before it answers a name."""
from __future__ import annotations

from aaq.tuning import model_based, sigopt, strategies

BUILTIN_MODULES = (strategies, model_based, sigopt)
