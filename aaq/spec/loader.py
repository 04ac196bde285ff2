"""Read a spec file: JSON with ``//`` and ``/* */`` comments, duplicate keys refused.

Comments are blanked out by a small scanner that respects strings and keeps every
other character in place, so the line:col of a syntax error points into the file
the user wrote.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aaq.errors import SpecError


def strip_comments(text: str) -> str:
    """``text`` with comments replaced by spaces (newlines kept)."""
    out = list(text)
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                line = text.count("\n", 0, i) + 1
                col = i - (text.rfind("\n", 0, i) + 1) + 1
                raise _Unterminated(line, col)
            for j in range(i, end + 2):
                if out[j] != "\n":
                    out[j] = " "
            i = end + 2
        else:
            i += 1
    return "".join(out)


class _Unterminated(ValueError):
    def __init__(self, line: int, col: int) -> None:
        super().__init__(f"{line}:{col}: unterminated /* comment")
        self.line, self.col = line, col


def parse_spec_text(text: str, source: str = "<spec>") -> dict[str, Any]:
    """Parse spec text; every duplicate key is reported with its JSON path."""
    try:
        cleaned = strip_comments(text)
    except _Unterminated as exc:
        raise SpecError(f"{source}:{exc.line}:{exc.col}: unterminated /* comment") from None
    duplicates: dict[int, list[str]] = {}

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                duplicates.setdefault(id(obj), []).append(key)
            obj[key] = value
        return obj

    try:
        data = json.loads(cleaned, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    if duplicates:
        problems = [(f"{path}.{key}" if path else key, "duplicate key")
                    for path, obj in _walk(data, "") if id(obj) in duplicates
                    for key in duplicates[id(obj)]]
        raise SpecError(problems, source)
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a JSON object, got {type(data).__name__}")
    return data


def load_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec {str(path)!r}: {exc.strerror or exc}") from None
    return parse_spec_text(text, str(path))


def _walk(node: Any, path: str):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
