"""The tuning space: INC's model-wise and op-wise choices, the trial configs they give, and their DQ params.

A *trial config* (``TrialConfig``) is one point of the space: a calibration sampling
size, the weight and activation choices of the whole model, and the ops left in
float (``fallback``, layer names). ``dq_overrides`` is the one place where a config
becomes DefaultQuantization params:

==========================  ===========================================================
trial config                DefaultQuantization params
==========================  ===========================================================
sampling_size               ``stat_subset_size``
weight.granularity          ``weights.granularity``: per_channel -> perchannel,
                            per_tensor -> pertensor
weight.scheme sym           weights are always symmetric (asym is refused: ONNX
                            Runtime's int8 kernels need zero-point-0 weights)
activation.scheme           ``preset``: sym -> performance, asym -> mixed
activation.algorithm        ``activations.range_estimator.preset`` (``RANGE_ALGORITHMS``)
dtype int8 / uint8          quantized; fp32 -> the op's group reverted to float
recipes (``ALGORITHM_RECIPES``) ``cross_layer_equalization``, ``smooth_quant`` (with
                            ``smooth_quant_args.alpha``), ``weight_range_search``
==========================  ===========================================================

Each algorithm recipe is a boolean or a list of them, and ``smooth_quant_args.alpha``
a number or a list: lists are dimensions of the space (first choice first, right
after the sampling size), as INC's ``smooth_quant_args`` alpha list is.

Op-wise entries narrow the dtype choices of one op (by node name, or a regular
expression matching whole names): only ``["fp32"]`` forces it to float, a list
without ``fp32`` forbids falling it back, one with ``fp32`` lets a strategy fall it
back. The order of configs is the order of the lists (first choice first), sampling
size slowest.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from aaq.params import merge_params

FLOAT = "fp32"

RANGE_ALGORITHMS = {"minmax": "minmax", "quantile": "quantile", "kl": "kl", "percentile": "percentile", "auto": "auto"}
"""Activation range algorithm -> DefaultQuantization's ``activations.range_estimator.preset``.

``quantile`` is POT's estimator; ``kl`` and ``percentile`` read a histogram of each
tensor (``quantization.thresholds``), collected once per sampling size like the rest.
"""
WEIGHT_ALGORITHMS = {"minmax": "abs_max"}
"""Weight range algorithm -> ``weights.range_estimator.max.type`` (minmax: the largest |w| per channel)."""

GRANULARITY = {"per_channel": "perchannel", "per_tensor": "pertensor"}
SCHEMES = {"sym": "performance", "asym": "mixed"}
ALGORITHM_RECIPES = ("cross_layer_equalization", "smooth_quant", "weight_range_search")
"""Tuning recipes that are DefaultQuantization algorithms (``recipe_choices``)."""

DEFAULT_MODEL_WISE = {
    "weight": {"granularity": ["per_channel", "per_tensor"], "scheme": ["sym"], "dtype": ["int8", "fp32"],
               "algorithm": ["minmax"]},
    "activation": {"granularity": ["per_tensor"], "scheme": ["sym", "asym"], "dtype": ["uint8", "fp32"],
                   "algorithm": ["minmax"]},
}

Problem = tuple[str, str]


@dataclass(frozen=True)
class TrialConfig:
    """One point of the space; ``fallback`` are the layer names left in float, sorted."""

    sampling_size: int
    weight_granularity: str = "per_channel"
    activation_scheme: str = "sym"
    activation_algorithm: str = "minmax"
    weight_algorithm: str = "minmax"
    fallback: tuple[str, ...] = ()
    recipe: tuple[tuple[str, Any], ...] = ()
    """Algorithm recipes of this config, ``(name, value)`` sorted (``recipe_choices``)."""
    alternative: str = ""
    """DefaultQuantization overrides of a whole-model alternative (``accuracy.alternatives``; canonical JSON),
    laid over the config's own params: what ``basic``'s alternatives phase tries."""

    @property
    def plan_key(self) -> tuple:
        """What the plan (and the statistics) depend on: everything but the fallback."""
        return (self.sampling_size, self.weight_granularity, self.activation_scheme, self.activation_algorithm,
                self.weight_algorithm, self.recipe, self.alternative)

    def with_alternative(self, overrides: Mapping[str, Any]) -> "TrialConfig":
        """This config with ``overrides`` laid over its alternative so far (nested objects merged)."""
        merged = merge_params(json.loads(self.alternative) if self.alternative else {}, dict(overrides))
        return replace(self, alternative=json.dumps(merged, sort_keys=True, separators=(",", ":")))

    def with_fallback(self, names: Iterable[str]) -> "TrialConfig":
        return replace(self, fallback=tuple(sorted(set(self.fallback) | set(names))))

    def as_dict(self) -> dict[str, Any]:
        """INC-shaped: what the history and the report show."""
        return {"sampling_size": self.sampling_size,
                "weight": {"granularity": self.weight_granularity, "scheme": "sym", "dtype": "int8",
                           "algorithm": self.weight_algorithm},
                "activation": {"granularity": "per_tensor", "scheme": self.activation_scheme, "dtype": "uint8",
                               "algorithm": self.activation_algorithm},
                "fallback": list(self.fallback), **({"recipes": dict(self.recipe)} if self.recipe else {}),
                **({"alternative": json.loads(self.alternative)} if self.alternative else {})}


def dq_overrides(config: TrialConfig) -> dict[str, Any]:
    """The DefaultQuantization params a config sets (laid over the base params; fallback is not a param)."""
    own = {"preset": SCHEMES[config.activation_scheme],
           "stat_subset_size": int(config.sampling_size),
           "weights": {"granularity": GRANULARITY[config.weight_granularity],
                       "range_estimator": {"max": {"type": WEIGHT_ALGORITHMS[config.weight_algorithm]}}},
           "activations": {"range_estimator": {"preset": RANGE_ALGORITHMS[config.activation_algorithm]}},
           **recipe_overrides(dict(config.recipe))}
    return merge_params(own, json.loads(config.alternative)) if config.alternative else own


def recipe_overrides(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """DefaultQuantization params of a config's algorithm recipes."""
    out: dict[str, Any] = {}
    if "cross_layer_equalization" in recipe:
        out["cross_layer_equalization"] = bool(recipe["cross_layer_equalization"])
    if "smooth_quant" in recipe:
        out["smooth_quant"] = {"enabled": bool(recipe["smooth_quant"]), "alpha": float(recipe.get("alpha", 0.5))}
    if "weight_range_search" in recipe:
        out["weight_range_search"] = {"enabled": bool(recipe["weight_range_search"])}
    return out


def recipe_choices(recipes: Mapping[str, Any]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """Every combination of the algorithm recipes' choices (a value or a list), first choices first.

    ``alpha`` is only a dimension where SmoothQuant is on.
    """
    def choices(value: Any) -> list:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    axes = [[(name, v) for v in choices(recipes[name])] for name in ALGORITHM_RECIPES if name in recipes]
    alphas = choices(((recipes.get("smooth_quant_args") or {}).get("alpha", 0.5)))
    out = []
    for combo in itertools.product(*axes):
        smooth_on = dict(combo).get("smooth_quant", False)
        for alpha in (alphas if smooth_on else [None]):
            entry = combo + ((("alpha", float(alpha)),) if alpha is not None else ())
            out.append(tuple(sorted(entry)))
    return tuple(dict.fromkeys(out)) or ((),)


@dataclass(frozen=True)
class OpRule:
    """What an op may be: forced to float, allowed to fall back, or neither."""

    forced_float: bool = False
    may_fall_back: bool = True


@dataclass(frozen=True)
class TuningSpace:
    """Model-wise choices (lists), sampling sizes and op-wise dtype rules (keys: names or patterns)."""

    sampling_sizes: tuple[int, ...]
    model_wise: Mapping[str, Mapping[str, Sequence[str]]]
    op_wise: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]] = field(default_factory=dict)
    forced: tuple[str, ...] = ()
    """Layers every config leaves in float (op-wise ``["fp32"]``, recipes), set once the model is known."""
    configs: tuple[TrialConfig, ...] = ()
    """An explicit config set (``loader.expand_config_set``): replaces the model-wise product."""
    recipes: tuple[tuple[tuple[str, Any], ...], ...] = ((),)
    """The algorithm-recipe combinations (``recipe_choices``)."""

    @classmethod
    def from_params(cls, tuning_space: Mapping[str, Any], sampling_sizes: Sequence[int],
                    recipes: Mapping[str, Any] | None = None) -> "TuningSpace":
        model_wise = {kind: {**DEFAULT_MODEL_WISE[kind], **dict((tuning_space.get("model_wise") or {}).get(kind) or {})}
                      for kind in ("weight", "activation")}
        return cls(tuple(int(s) for s in sampling_sizes), model_wise, dict(tuning_space.get("op_wise") or {}),
                   recipes=recipe_choices(recipes or {}))

    def quantize_configs(self) -> list[TrialConfig]:
        """Every quantized model-wise config, in list order (fallback dtypes excluded, as INC does)."""
        if self.configs:
            return [replace(c.with_fallback(self.forced), recipe=c.recipe or self.recipes[0]) for c in self.configs]
        w, a = self.model_wise["weight"], self.model_wise["activation"]
        return [TrialConfig(size, granularity, scheme, algorithm, w["algorithm"][0], tuple(sorted(self.forced)),
                            recipe)
                for size, recipe, granularity, scheme, algorithm in itertools.product(
                    self.sampling_sizes, self.recipes, w["granularity"], a["scheme"], a["algorithm"])]

    def rules(self, node_names: Sequence[str]) -> dict[str, OpRule]:
        """The rule of every node an op-wise entry names (exact name first, else a whole-name pattern)."""
        out = {}
        for key, entry in self.op_wise.items():
            for name in matching_nodes(key, node_names):
                out[name] = self._rule(entry)
        return out

    def _rule(self, entry: Mapping[str, Mapping[str, Sequence[str]]]) -> OpRule:
        dtypes = {kind: list((entry.get(kind) or {}).get("dtype") or self.model_wise[kind]["dtype"])
                  for kind in ("weight", "activation")}
        forced = any(d == [FLOAT] for d in dtypes.values())
        return OpRule(forced_float=forced, may_fall_back=forced or FLOAT in dtypes["activation"])

    @property
    def default_may_fall_back(self) -> bool:
        return FLOAT in self.model_wise["activation"]["dtype"]


def matching_nodes(key: str, node_names: Sequence[str]) -> list[str]:
    """``key`` as a node name, else as a regular expression matching whole names."""
    if key in node_names:
        return [key]
    try:
        regex = re.compile(key)
    except re.error:
        return []
    return [n for n in node_names if regex.fullmatch(n)]


def space_problems(tuning_space: Mapping[str, Any], node_names: Sequence[str] | None) -> list[Problem]:
    """What the schema cannot refuse: choices DefaultQuantization cannot honour, no quantized choice, unknown ops.

    Paths are inside ``tuning_space``; ``node_names`` None skips the op-wise name check
    (the model could not be read: the model checks report that).
    """
    problems: list[Problem] = []
    model_wise = tuning_space.get("model_wise") or {}
    for kind in ("weight", "activation"):
        choices = {**DEFAULT_MODEL_WISE[kind], **dict(model_wise.get(kind) or {})}
        problems += _choice_problems(kind, choices, f"model_wise.{kind}")
        if all(d == FLOAT for d in choices["dtype"]):
            problems.append((f"model_wise.{kind}.dtype", f"no quantized choice: {kind} dtype {choices['dtype']} "
                                                          f"leaves the whole model in float"))
    for key, entry in (tuning_space.get("op_wise") or {}).items():
        where = f"op_wise.{key}"
        for kind, choices in (entry or {}).items():
            other = sorted(set(choices) - {"dtype"})
            if other:
                problems.append((f"{where}.{kind}", f"only dtype can be set per op for now ({', '.join(other)} "
                                                     f"apply to the whole model: set them in model_wise)"))
        if node_names is not None and not matching_nodes(key, node_names):
            problems.append((where, f"no node named {key!r} (nor matching it as a pattern) in the model"
                                    f"{_nearest(key, node_names)}"))
    return problems


def _choice_problems(kind: str, choices: Mapping[str, Sequence[str]], where: str) -> list[Problem]:
    problems = []
    if kind == "weight" and "asym" in choices["scheme"]:
        problems.append((f"{where}.scheme", "asym weights are not supported: ONNX Runtime's int8 kernels need "
                                            "zero-point-0 (symmetric) weights"))
    if kind == "activation" and "per_channel" in choices["granularity"]:
        problems.append((f"{where}.granularity", "per_channel activations are not supported: ONNX Runtime's "
                                                 "integer kernels take one input scale"))
    known = RANGE_ALGORITHMS if kind == "activation" else WEIGHT_ALGORITHMS
    for algorithm in choices["algorithm"]:
        if algorithm not in known:
            problems.append((f"{where}.algorithm", f"{algorithm!r} is not a range algorithm for {kind}s; "
                                                   f"available: {', '.join(known)}"))
    return problems


def _nearest(word: str, names: Sequence[str]) -> str:
    import difflib

    near = difflib.get_close_matches(word, list(names), n=3, cutoff=0.5)
    return f" (nearest: {', '.join(map(repr, near))})" if near else ""
