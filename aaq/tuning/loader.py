"""The one loader of a config set: DefaultQuantization params (a list, or fields holding lists) -> trial configs.

INC 3.x's ``TuningConfig(config_set=...)`` takes a list of configs, or one config
whose fields hold lists of choices; both expand here, in list order, a field's
choices in their order (the first field slowest). The fields a trial config can
vary are ``TUNABLE``; every other param is the same for all trials and becomes the
base params (an entry that differs there is refused: it is not a dimension of the
space).
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Mapping, Sequence

from aaq.schemas import load_schema
from aaq.schemas.tools import fill_defaults, schema_errors
from aaq.tuning.space import GRANULARITY, RANGE_ALGORITHMS, SCHEMES, TrialConfig

Problem = tuple[str, str]

TUNABLE = {
    ("stat_subset_size",): ("sampling_size", None),
    ("weights", "granularity"): ("weight_granularity", {v: k for k, v in GRANULARITY.items()}),
    ("preset",): ("activation_scheme", {v: k for k, v in SCHEMES.items()}),
    ("activations", "range_estimator", "preset"): ("activation_algorithm",
                                                   {"default": "minmax", **{v: k for k, v in RANGE_ALGORITHMS.items()}}),
}
"""DefaultQuantization param path -> (trial config field, DQ value -> space value)."""


def _pop(params: dict[str, Any], path: tuple[str, ...]) -> Any:
    node = params
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return None
    return node.pop(path[-1], None)


def _put(params: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = params
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def expand_config_set(config_set: Sequence[Mapping[str, Any]]
                      ) -> tuple[dict[str, Any], list[TrialConfig], list[Problem]]:
    """Base params (defaults filled), the trial configs in order, and the problems (paths from ``config_set``)."""
    schema = load_schema("DefaultQuantization")
    defaults = fill_defaults({}, schema)
    problems: list[Problem] = []
    configs: list[TrialConfig] = []
    base: dict[str, Any] | None = None
    for i, entry in enumerate(config_set):
        rest = copy.deepcopy(dict(entry))
        choices = {}
        for path, (field, _) in TUNABLE.items():
            given = _pop(rest, path)
            choices[path] = given if isinstance(given, list) else [given if given is not None else _get(defaults, path)]
        probe = copy.deepcopy(rest)
        for path, values in choices.items():
            _put(probe, path, values[0])
        problems += schema_errors(probe, schema, (i,))
        rest = _prune(rest)
        weight_type = ((rest.get("weights") or {}).get("range_estimator") or {}).get("max", {}).get("type", "abs_max")
        if weight_type != "abs_max":
            problems.append((f"[{i}].weights.range_estimator.max.type", "tuning's weight range algorithm is minmax "
                                                                        "(abs_max), the only one of INC's space"))
        if base is None:
            base = rest
        elif rest != base:
            problems.append((f"[{i}]", "differs from config_set[0] in params that are not tunable: only "
                                       "stat_subset_size, weights.granularity, preset and "
                                       "activations.range_estimator.preset may differ between configs"))
        fields = []
        for path, values in choices.items():
            field, mapping = TUNABLE[path]
            if mapping is not None:
                values = [mapping.get(v, v) for v in values]
            fields.append([(field, v) for v in values])
        configs += [TrialConfig(**dict(combo)) for combo in itertools.product(*fields)]
    return fill_defaults(base or {}, schema), list(dict.fromkeys(configs)), problems


def _get(params: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = params
    for key in path:
        node = node[key]
    return node


def _prune(params: dict[str, Any]) -> dict[str, Any]:
    """Nested objects emptied by the tunable fields' removal are dropped (they hold nothing of the base)."""
    return {k: (_prune(v) if isinstance(v, dict) else v) for k, v in params.items()
            if not (isinstance(v, dict) and not _prune(v))}
