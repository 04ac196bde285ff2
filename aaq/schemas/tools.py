"""Tools over JSON Schemas that need nothing else of aaq: defaults, path values, one sentence per error.

Both the spec validation (``aaq.spec``) and the algorithms (which fill and check
the params of a base algorithm they run) use them; keeping them here, below both,
is what keeps the two packages free of a cycle.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterator

import jsonschema


Problem = tuple[str, str]


def format_path(parts: Any) -> str:
    """``["compression", "algorithms", 1, "params"]`` → ``compression.algorithms[1].params``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A copy of ``instance`` with the schema's defaults filled in, recursively."""
    root = root if root is not None else schema
    schema = deref(schema, root)
    if isinstance(instance, dict) and "properties" in schema:
        out = {}
        for key, value in instance.items():
            sub = schema["properties"].get(key)
            out[key] = fill_defaults(value, sub, root) if sub is not None else copy.deepcopy(value)
        for key, sub in schema["properties"].items():
            sub = deref(sub, root)
            if key not in out and "default" in sub:
                out[key] = fill_defaults(copy.deepcopy(sub["default"]), sub, root)
        return out
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [fill_defaults(item, schema["items"], root) for item in instance]
    return copy.deepcopy(instance)


def resolve_paths(instance: Any, schema: dict[str, Any], base_dir: Path) -> None:
    """Make every ``"format": "path"`` string absolute against ``base_dir``, in place."""
    for path, value in path_values(instance, schema, ()):
        parent = instance
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = str((base_dir / Path(value).expanduser()).resolve())


def path_values(instance: Any, schema: dict[str, Any], prefix: tuple,
                root: dict | None = None) -> Iterator[tuple[tuple, str]]:
    """``(path, value)`` of every ``"format": "path"`` string in ``instance``."""
    root = root if root is not None else schema
    schema = deref(schema, root)
    if schema.get("format") == "path" and isinstance(instance, str):
        yield prefix, instance
    elif isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                yield from path_values(instance[key], sub, prefix + (key,), root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            yield from path_values(item, schema["items"], prefix + (i,), root)


def deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a local ``$ref`` replaced by what it points to (its own keys win)."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    merged = {k: v for k, v in schema.items() if k != "$ref"}
    return {**deref(node, root), **merged}


def error_order(error: jsonschema.ValidationError) -> tuple:
    """Sort key: errors in document order, then by rule."""
    return tuple(str(p) for p in error.absolute_path), error.validator


def schema_errors(instance: Any, schema: dict[str, Any], prefix: tuple = ()) -> list[Problem]:
    """Every violation of ``schema`` in ``instance``, in document order, one sentence each."""
    validator = jsonschema.Draft202012Validator(schema)
    return [describe_error(e, prefix) for e in sorted(validator.iter_errors(instance), key=error_order)]


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
        return path, f"must be of type {expected}, got {short(value)}"
    if kind in ("enum", "const"):
        options = rule if kind == "enum" else [rule]
        return path, f"must be one of {', '.join(map(repr, options))}, got {short(value)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return path, f"must be {bounds[kind]} {rule}, got {short(value)}"
    if kind in ("minItems", "minLength"):
        return path, f"must have at least {rule} {'item' if kind == 'minItems' else 'character'}" \
                     f"{'s' if rule != 1 else ''}, got {short(value)}"
    if kind in ("maxItems", "maxLength"):
        return path, f"must have at most {rule}, got {short(value)}"
    return path, f"{error.message}"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
