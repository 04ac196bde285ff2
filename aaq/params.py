"""Params dataclasses that mirror a JSON Schema, checked against it once, at registration.

The schema is the contract a spec is validated against; the dataclass is what code
reads. Keeping the two in lock-step (same names, same defaults) is what makes "every
parameter in the schema is really used" checkable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jsonschema

from aaq.errors import PluginError

_MISSING = dataclasses.MISSING


def check_params_class(name: str, params_cls: type, schema: Mapping[str, Any]) -> None:
    """Refuse a plugin whose params dataclass and schema disagree; the message names the mismatch."""
    if not dataclasses.is_dataclass(params_cls):
        raise PluginError(f"Params must be a dataclass, got {params_cls!r}", name)
    check_options_schema(name, schema)
    props = schema.get("properties", {})
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    only_schema = sorted(set(props) - set(fields))
    only_class = sorted(set(fields) - set(props))
    if only_schema or only_class:
        raise PluginError(
            f"params schema and {params_cls.__name__} disagree: only in schema {only_schema}, "
            f"only in the dataclass {only_class}", name)
    required = set(schema.get("required", []))
    for key, field in fields.items():
        default = _field_default(field)
        if "default" in props[key]:
            if default is _MISSING or default != props[key]["default"]:
                raise PluginError(
                    f"param {key!r}: schema default {props[key]['default']!r} != dataclass default "
                    f"{'none' if default is _MISSING else repr(default)}", name)
        elif default is _MISSING and key not in required:
            raise PluginError(f"param {key!r} has no default and is not required in the schema", name)


def check_options_schema(name: str, schema: Mapping[str, Any]) -> None:
    """Refuse a plugin schema that is not a valid, closed JSON Schema object: unknown keys must be errors."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PluginError(f"schema is not a valid JSON Schema: {exc.message}", name) from None
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        raise PluginError('schema must be {"type": "object", "additionalProperties": false, ...}', name)


def build_params(params_cls: type, values: Mapping[str, Any]) -> Any:
    """The typed params object for validated, default-filled ``values``."""
    from_spec = getattr(params_cls, "from_spec", None)
    return from_spec(values) if from_spec is not None else params_cls(**values)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return _MISSING


def merge_params(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, nested objects merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge_params(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out
