"""INC's tuning, below the algorithms: the space and its configs, objectives, the monitor and exit policy, strategies.

``space``: model-wise / op-wise choices, trial configs and their DefaultQuantization
params. ``objectives``: what picks the result among passing configs (a registry).
``monitor``: the history, the best trial, the exit cases and the fixed log lines.
``strategies``: ask/tell strategy objects (a registry). Nothing here evaluates a
model: ``aaq.algorithms.tuning`` runs the trials.
"""
