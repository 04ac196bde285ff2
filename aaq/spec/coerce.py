"""Checks a parsed spec needs before the schema sees it, and the one coercion JSON numbers need.

JSON has one kind of number. ``32.0`` where the schema says integer passes JSON Schema
(a whole-number float *is* an integer there) but then reaches Python code as a float,
so ``coerce_integers`` turns such values into ints after validation.

``value_problems`` catches what the schema cannot say or what would crash the schema
check itself: nesting deep enough to exhaust Python's recursion, NaN and Infinity
(Python's json accepts them, JSON does not), strings no file system or encoder takes
(NUL, lone surrogates), an output file name that would leave the output directory or
be too long for the file system, and resources above what this machine can run.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterator

from aaq.errors import SpecError
from aaq.schemas import load_schema
from aaq.schemas.tools import format_path

Problem = tuple[str, str]

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a spec may have (real specs stay under 10)."""
OUTPUT_SUFFIX = ".quantized.onnx"
NAME_MAX_BYTES = 255 - len(OUTPUT_SUFFIX)
"""``model.name`` becomes ``NAME.quantized.onnx``: 255 bytes is the usual file system limit."""


def check_values(raw: Any, source: str | None = None) -> None:
    """Raise a SpecError listing every fault ``value_problems`` finds (call before the schema check)."""
    problems = value_problems(raw)
    if problems:
        raise SpecError(problems, source)


def value_problems(raw: Any) -> list[Problem]:
    """Faults of a parsed spec that are not the schema's business, as ``(json path, message)``.

    Too deep a nesting is reported alone: nothing else is checked on such a value.
    """
    too_deep = depth_problem(raw)
    if too_deep is not None:
        return [too_deep]
    problems = list(_bad_scalars(raw))
    if isinstance(raw, dict):
        problems += _model_name_problems(raw.get("model"))
        problems += _engine_problems(raw.get("engine"))
    return problems


def depth_problem(raw: Any) -> Problem | None:
    """The problem of a value nested deeper than MAX_DEPTH, at the path where it passes it; else None."""
    path = _too_deep(raw)
    return None if path is None else (path, f"nested deeper than {MAX_DEPTH} levels of objects and arrays")


def coerce_integers(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """``instance`` with every whole-number float turned into an int where ``schema`` says integer.

    Returns a new value for containers it changes (never edits ``instance``); values the
    schema does not describe are returned as they are.
    """
    root = root if root is not None else schema
    schema = _deref(schema, root) if isinstance(schema, dict) else {}
    if type(instance) is float and instance.is_integer() and _wants_integer(schema, root):
        return int(instance)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, value in instance.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            out[key] = coerce_integers(value, sub, root) if isinstance(sub, dict) else value
        return out
    if isinstance(instance, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [coerce_integers(v, items, root) for v in instance]
    return instance


def name_pattern() -> re.Pattern:
    """The ``model.name`` pattern of spec.schema.json (one source for the schema and this check)."""

    return re.compile(load_schema("spec")["properties"]["model"]["properties"]["name"]["pattern"])


def _wants_integer(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind or [])
    if "integer" in kinds and "number" not in kinds:
        return True
    branches = [_deref(b, root) for key in ("anyOf", "oneOf") for b in schema.get(key, []) if isinstance(b, dict)]
    if branches and not kinds:
        takes_numbers = [b for b in branches if {"integer", "number"} & set(_kinds(b))]
        return bool(takes_numbers) and all("number" not in _kinds(b) for b in takes_numbers)
    return False


def _kinds(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    return [kind] if isinstance(kind, str) else list(kind or [])


def _deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/") and seen < 32:
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
    return schema


def _too_deep(raw: Any) -> str | None:
    """The JSON path of the first container nested deeper than MAX_DEPTH, or None (iterative)."""
    stack: list[tuple[Any, int, Any]] = [(raw, 0, None)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, link = pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        if depth >= MAX_DEPTH:
            return _format(_unlink(link)) or "(top level)"
        for key, value in items:
            if isinstance(value, (dict, list)):
                push((value, depth + 1, (link, key)))
    return None


def _bad_scalars(raw: Any) -> Iterator[Problem]:
    """NaN/Infinity and unusable strings, in document order; paths are built only for the faults."""
    stack: list[tuple[Any, Any]] = [(raw, None)]
    pop, push = stack.pop, stack.append
    while stack:
        node, link = pop()
        if isinstance(node, dict):
            for key in node:
                if isinstance(key, str) and _bad_string(key):
                    yield _format(_unlink(link)) or "(top level)", f"key {_show(key)} {_bad_string(key)}"
            for key in reversed(node):  # reversed onto the stack: faults come out in document order
                push((node[key], (link, key)))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                push((node[i], (link, i)))
        elif isinstance(node, float):
            if node - node != 0.0:  # NaN or +-Infinity, without a call per number
                shown = "NaN" if math.isnan(node) else ("Infinity" if node > 0 else "-Infinity")
                yield _format(_unlink(link)), f"must be a finite number, got {shown} (not a JSON number)"
        elif isinstance(node, str) and _bad_string(node):
            yield _format(_unlink(link)), f"{_show(node)} {_bad_string(node)}"


def _unlink(link: Any) -> tuple:
    parts = []
    while link is not None:
        link, key = link
        parts.append(key)
    return tuple(reversed(parts))


def _bad_string(text: str) -> str:
    if text.isascii():
        return "holds a NUL character" if "\x00" in text else ""
    if "\x00" in text:
        return "holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate escape)"
    return ""


def _model_name_problems(model: Any) -> list[Problem]:
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or _bad_string(model["name"]):
        return []
    name = model["name"]
    if name and not name_pattern().search(name):
        return [("model.name", f"must be a plain file name (no '/' or '\\', no control characters, not "
                               f"starting with '.'), got {_show(name)}")]
    size = len(name.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        return [("model.name", f"is {size} bytes in UTF-8; the output file name {name[:20]!r}...{OUTPUT_SUFFIX} "
                               f"must fit in 255 bytes, so at most {NAME_MAX_BYTES}")]
    return []


def _engine_problems(engine: Any) -> list[Problem]:
    if not isinstance(engine, dict):
        return []
    threads = engine.get("intra_op_threads")
    if isinstance(threads, (int, float)) and not isinstance(threads, bool) and math.isfinite(threads):
        from aaq.engine.session import max_threads

        limit = max_threads()
        if threads > limit:
            return [("engine.intra_op_threads", f"must be <= {limit}, the logical CPUs of this machine "
                                                f"(0 lets ONNX Runtime choose), got {_show(threads)}")]
    return []


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _format(parts: tuple) -> str:

    return format_path(parts)
