"""Validate a parsed spec, report every fault at once, then resolve it: the one path of ``validate`` and ``run``.

Order: the envelope against ``spec.schema.json``; then each algorithm's params,
each dataset's and each metric's options against the schema of the plugin named
there (a lookup by name, not one big ``oneOf``, so an error names the real
fault). Defaults are filled and relative paths resolved afterwards, on a copy:
validation never changes what it checks. Last, the checks that need the resolved
spec but no inference (files exist, names refer to something, each algorithm's
``check_spec``). ``aaq validate``, ``aaq run`` and ``Pipeline(spec)`` all go through
``load_spec``, so they refuse the same specs, before any model is run.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from aaq.algorithms.base import algorithms
from aaq.engine.datasets import DATASET_KEYS, datasets
from aaq.engine.executor_choice import executor_problems
from aaq.engine.metrics import metrics
from aaq.errors import SpecError
from aaq.spec.coerce import check_values, coerce_integers
from aaq.spec.loader import load_spec_file
from aaq.schemas.tools import Problem, fill_defaults, format_path, path_values, resolve_paths, schema_errors
from aaq.schemas import load_schema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """A validated spec with defaults filled and paths made absolute."""

    resolved: dict[str, Any]
    base_dir: Path
    source: str

    @property
    def model_name(self) -> str:
        model = self.resolved["model"]
        return model.get("name") or Path(model["path"]).stem


def load_spec(spec: dict[str, Any] | str | Path) -> Spec:
    """A checked ``Spec`` from a dict (paths relative to the working directory) or a spec file.

    Raises one ``SpecError`` listing every fault: schema faults first (the later
    checks need a spec that fits the schema), then the semantic ones.
    """
    if isinstance(spec, dict):
        return resolve_spec(spec, base_dir=Path.cwd(), source="<spec>")
    path = Path(spec)
    return resolve_spec(load_spec_file(path), base_dir=path.resolve().parent, source=str(path))


def resolve_spec(raw: dict[str, Any], *, base_dir: Path, source: str) -> Spec:
    check_values(raw, source)  # aaq.spec.coerce: nesting, NaN/Infinity, NUL, model.name, machine limits
    problems = list(schema_problems(raw))
    if problems:
        raise SpecError(problems, source)
    resolved = copy.deepcopy(raw)
    for schema, node, _ in _sections(resolved):
        filled = fill_defaults(node, schema)
        filled = coerce_integers(filled, schema)  # aaq.spec.coerce: 32.0 -> 32 where the schema says integer
        resolve_paths(filled, schema, base_dir)
        node.clear()
        node.update(filled)
    spec = Spec(resolved, base_dir, source)
    problems = semantic_problems(spec)
    if problems:
        raise SpecError(problems, source)
    return spec


def schema_problems(raw: dict[str, Any]) -> Iterator[Problem]:
    """Every schema violation in ``raw``, envelope first, as ``(json path, message)``."""
    for schema, node, prefix in _sections(raw):
        yield from schema_errors(node, schema, prefix)
    yield from _plugin_lookup_problems(raw)


def semantic_problems(spec: Spec) -> list[Problem]:
    """Checks beyond the schema that need no inference: files exist, names refer to something."""
    problems: list[Problem] = []
    for schema, node, prefix in _sections(spec.resolved):
        for path, value in path_values(node, schema, prefix):
            if path[:1] != ("output",) and not Path(value).exists():  # inputs must exist; outputs are made
                problems.append((format_path(path), f"file not found: {value}"))
    names = [m["name"] for m in spec.resolved["engine"]["metrics"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append((f"engine.metrics[{i}].name", f"metric name {name!r} is used twice"))
    problems += executor_problems(spec.resolved["engine"].get("executor") or {})
    entries = spec.resolved["compression"]["algorithms"]
    if "holdout" in spec.resolved["engine"]["dataset"] and not any(
            algorithms.get(e["name"]).uses_holdout for e in entries):
        problems.append(("engine.dataset.holdout", "no algorithm of this spec reads held-out samples "
                                                   "(AccuracyAwareQuantization does)"))
    for i, entry in enumerate(entries):
        cls = algorithms.get(entry["name"])
        prefix = f"compression.algorithms[{i}].params"
        problems += [(f"{prefix}.{p}" if p else prefix, m) for p, m in cls.check_spec(entry["params"], spec)]
    return problems


def _sections(raw: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any], tuple]]:
    """``(plugin schema, the part of the spec it checks, its JSON path)`` for each plugin named.

    Parts whose plugin is unknown, or whose envelope is broken, are skipped: the
    envelope check and ``_plugin_lookup_problems`` report those.
    """
    yield load_schema("spec"), raw, ()
    engine = raw.get("engine") if isinstance(raw.get("engine"), dict) else {}
    for key, reserved in (("dataset", DATASET_KEYS + ("holdout",)), ("calibration_dataset", DATASET_KEYS)):
        entry = engine.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"] in datasets:
            yield _plugin_view(datasets.get(entry["type"]).schema, entry, reserved, ("engine", key))
    for i, entry in enumerate(engine.get("metrics") or [] if isinstance(engine.get("metrics"), list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"] in metrics:
            yield _plugin_view(metrics.get(entry["type"]).schema, entry, ("name", "type"),
                               ("engine", "metrics", i))
    compression = raw.get("compression") if isinstance(raw.get("compression"), dict) else {}
    entries = compression.get("algorithms") if isinstance(compression.get("algorithms"), list) else []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] in algorithms):
            continue
        params = entry.get("params", {})
        if isinstance(params, dict):
            yield algorithms.get(entry["name"]).schema, params, ("compression", "algorithms", i, "params")


class _PluginView(dict):
    """The options of a dataset/metric entry (its keys minus ``type``/``name``), writing through."""

    def __init__(self, entry: dict[str, Any], reserved: tuple[str, ...]) -> None:
        super().__init__({k: v for k, v in entry.items() if k not in reserved})
        self._entry, self._reserved = entry, reserved

    def clear(self) -> None:
        for key in [k for k in self._entry if k not in self._reserved]:
            del self._entry[key]
        super().clear()

    def update(self, other: dict[str, Any]) -> None:  # type: ignore[override]
        self._entry.update(other)
        super().update(other)


def _plugin_view(schema, entry, reserved, prefix):
    return schema, _PluginView(entry, reserved), prefix


def _plugin_lookup_problems(raw: dict[str, Any]) -> Iterator[Problem]:
    engine = raw.get("engine") if isinstance(raw.get("engine"), dict) else {}
    for key in ("dataset", "calibration_dataset"):
        entry = engine.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"] not in datasets:
            yield f"engine.{key}.type", datasets.unknown_message(entry["type"])
    for i, entry in enumerate(engine.get("metrics") if isinstance(engine.get("metrics"), list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"] not in metrics:
            yield f"engine.metrics[{i}].type", metrics.unknown_message(entry["type"])
    compression = raw.get("compression") if isinstance(raw.get("compression"), dict) else {}
    entries = compression.get("algorithms") if isinstance(compression.get("algorithms"), list) else []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] not in algorithms:
            yield f"compression.algorithms[{i}].name", algorithms.unknown_message(entry["name"])


