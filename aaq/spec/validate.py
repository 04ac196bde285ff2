"""Validate a parsed spec, report every fault at once, then resolve it.

Order: the envelope against ``spec.schema.json``; then each algorithm's params,
each dataset's and each metric's options against the schema of the plugin named
there (a lookup by name, not one big ``oneOf``, so an error names the real
fault). Defaults are filled and relative paths resolved afterwards, on a copy:
validation never changes what it checks.
"""
from __future__ import annotations

import copy
import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jsonschema

from aaq.errors import SpecError
from aaq.spec.coerce import check_values, coerce_integers
from aaq.spec.loader import format_path, load_spec_file
from aaq.spec.schemas import load_schema

logger = logging.getLogger(__name__)

Problem = tuple[str, str]


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
    """A ``Spec`` from a dict (paths relative to the working directory) or a spec file."""
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
    return Spec(resolved, base_dir, source)


def schema_problems(raw: dict[str, Any]) -> Iterator[Problem]:
    """Every schema violation in ``raw``, envelope first, as ``(json path, message)``."""
    envelope = load_schema("spec")
    errors = sorted(jsonschema.Draft202012Validator(envelope).iter_errors(raw), key=_error_order)
    yield from (describe_error(error, ()) for error in errors)
    for schema, node, prefix in _sections(raw):
        if not prefix:  # the envelope, checked above
            continue
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(node), key=_error_order):
            yield describe_error(error, prefix)
    yield from _plugin_lookup_problems(raw)


def semantic_problems(spec: Spec) -> list[Problem]:
    """Checks beyond the schema that need no inference: files exist, names refer to something."""
    from aaq.algorithms.base import algorithms

    problems: list[Problem] = []
    for schema, node, prefix in _sections(spec.resolved):
        for path, value in _path_values(node, schema, prefix):
            if not Path(value).exists():
                problems.append((format_path(path), f"file not found: {value}"))
    names = [m["name"] for m in spec.resolved["engine"]["metrics"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append((f"engine.metrics[{i}].name", f"metric name {name!r} is used twice"))
    for i, entry in enumerate(spec.resolved["compression"]["algorithms"]):
        cls = algorithms.get(entry["name"])
        prefix = f"compression.algorithms[{i}].params"
        problems += [(f"{prefix}.{p}" if p else prefix, m) for p, m in cls.check_spec(entry["params"], spec)]
    return problems


def fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A copy of ``instance`` with the schema's defaults filled in, recursively."""
    root = root if root is not None else schema
    schema = _deref(schema, root)
    if isinstance(instance, dict) and "properties" in schema:
        out = {}
        for key, value in instance.items():
            sub = schema["properties"].get(key)
            out[key] = fill_defaults(value, sub, root) if sub is not None else copy.deepcopy(value)
        for key, sub in schema["properties"].items():
            sub = _deref(sub, root)
            if key not in out and "default" in sub:
                out[key] = fill_defaults(copy.deepcopy(sub["default"]), sub, root)
        return out
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [fill_defaults(item, schema["items"], root) for item in instance]
    return copy.deepcopy(instance)


def resolve_paths(instance: Any, schema: dict[str, Any], base_dir: Path) -> None:
    """Make every ``"format": "path"`` string absolute against ``base_dir``, in place."""
    for path, value in _path_values(instance, schema, ()):
        parent = instance
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = str((base_dir / Path(value).expanduser()).resolve())


def _path_values(instance: Any, schema: dict[str, Any], prefix: tuple, root: dict | None = None):
    root = root if root is not None else schema
    schema = _deref(schema, root)
    if schema.get("format") == "path" and isinstance(instance, str):
        yield prefix, instance
    elif isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                yield from _path_values(instance[key], sub, prefix + (key,), root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            yield from _path_values(item, schema["items"], prefix + (i,), root)


def _deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not ref:
        return schema
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    merged = {k: v for k, v in schema.items() if k != "$ref"}
    return {**_deref(node, root), **merged}


def _sections(raw: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any], tuple]]:
    """``(plugin schema, the part of the spec it checks, its JSON path)`` for each plugin named.

    Parts whose plugin is unknown, or whose envelope is broken, are skipped: the
    envelope check and ``_plugin_lookup_problems`` report those.
    """
    from aaq.algorithms.base import algorithms
    from aaq.engine.datasets import datasets
    from aaq.engine.metrics import metrics

    yield load_schema("spec"), raw, ()
    engine = raw.get("engine") if isinstance(raw.get("engine"), dict) else {}
    for key in ("dataset", "calibration_dataset"):
        entry = engine.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"] in datasets:
            yield _plugin_view(datasets.get(entry["type"]).schema, entry, ("type",), ("engine", key))
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
    from aaq.algorithms.base import algorithms
    from aaq.engine.datasets import datasets
    from aaq.engine.metrics import metrics

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


def _error_order(error: jsonschema.ValidationError) -> tuple:
    return tuple(str(p) for p in error.absolute_path), error.validator


def describe_error(error: jsonschema.ValidationError, prefix: tuple = ()) -> Problem:
    """One sentence for one violation: rule, value given and, where it helps, the fix."""
    path = format_path(prefix + tuple(error.absolute_path))
    kind, rule, value = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        parts = []
        for key in extra:
            near = difflib.get_close_matches(key, allowed, n=1)
            parts.append(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        return path, "; ".join(parts) + f"; allowed: {', '.join(allowed) or 'none'}"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return path, f"missing required key {missing!r}"
    if kind == "type":
        expected = rule if isinstance(rule, str) else " or ".join(rule)
        return path, f"must be of type {expected}, got {_short(value)}"
    if kind in ("enum", "const"):
        options = rule if kind == "enum" else [rule]
        return path, f"must be one of {', '.join(map(repr, options))}, got {_short(value)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return path, f"must be {bounds[kind]} {rule}, got {_short(value)}"
    if kind in ("minItems", "minLength"):
        return path, f"must have at least {rule} {'item' if kind == 'minItems' else 'character'}" \
                     f"{'s' if rule != 1 else ''}, got {_short(value)}"
    if kind in ("maxItems", "maxLength"):
        return path, f"must have at most {rule}, got {_short(value)}"
    return path, f"{error.message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
