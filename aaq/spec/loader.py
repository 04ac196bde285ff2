"""Read a spec file: UTF-8 JSON with ``//`` and ``/* */`` comments, duplicate keys refused.

Comments are blanked out by a small scanner that respects strings and keeps every
other character in place, so the line:col of a syntax error points into the file
the user wrote. Whatever the bytes, the outcome is a dict or a ``SpecError`` that
says where: another encoding, nesting too deep for the parser, NaN, integers too
long to convert are refused like a syntax error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aaq.errors import SpecError
from aaq.spec.coerce import MAX_DEPTH, check_values, depth_problem

MAX_SPEC_BYTES = 64 * 1024 * 1024
"""A spec file larger than this is refused before it is parsed (``aaq validate /dev/zero``)."""

_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
         b"\xfe\xff": "UTF-16"}


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
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply to parse (a spec nests a few levels, at most "
                        f"{MAX_DEPTH})") from None
    except ValueError as exc:  # an integer literal longer than Python converts (4300 digits by default)
        detail = "an integer has too many digits" if "digits" in str(exc) else str(exc)
        raise SpecError(f"{source}: {detail}") from None
    too_deep = depth_problem(data)
    if too_deep:  # before the walks below, which recurse
        raise SpecError([too_deep], source)
    if duplicates:
        problems = [(f"{path}.{key}" if path else key, "duplicate key")
                    for path, obj in _walk(data, "") if id(obj) in duplicates
                    for key in duplicates[id(obj)]]
        raise SpecError(problems, source)
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a JSON object, got {type(data).__name__}")
    check_values(data, source)
    return data


def load_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read spec {str(path)!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB; not a spec")
    return parse_spec_text(decode_spec_bytes(raw, str(path)), str(path))


def decode_spec_bytes(raw: bytes, source: str = "<spec>") -> str:
    """The text of a UTF-8 spec (a UTF-8 byte order mark is allowed); any other encoding is a SpecError."""
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            raise SpecError(f"{source}: the file is {name} text; save the spec as UTF-8")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise SpecError(f"{source}:{line}:{col}: byte 0x{raw[exc.start]:02x} is not UTF-8; save the spec as "
                        f"UTF-8") from None


def _walk(node: Any, path: str):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
