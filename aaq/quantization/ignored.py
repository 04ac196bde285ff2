"""The ``ignored`` param: which nodes stay in float, by name, by name pattern or by op type.

An entry that matches nothing is an error, not a silent no-op: a typo in a node
name would otherwise quantize the very layer the user meant to protect.
"""
from __future__ import annotations

import difflib
import logging
import re
from typing import Any, Mapping

import onnx

from aaq.errors import SpecError

logger = logging.getLogger(__name__)


def resolve_ignored(model: onnx.ModelProto, ignored: Mapping[str, Any],
                    removed: Mapping[str, str] | None = None) -> dict[str, str]:
    """Node name -> why it is ignored, for ``{"scope": [...], "patterns": [...], "operations": [...]}``.

    ``scope`` lists exact node names, ``patterns`` regular expressions that must
    match a whole node name (``re.fullmatch``), ``operations`` op types. ``removed``
    (name -> op type) are nodes of the user's model that preparation folded away: naming
    them is not an error (they run in no precision of their own). Every fault is
    reported at once as a ``SpecError`` whose paths start at ``ignored``.
    """
    nodes = [(node.name, node.op_type) for node in model.graph.node] + list((removed or {}).items())
    names = [name for name, _ in nodes]
    op_types = sorted({op for _, op in nodes})
    reasons: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for i, name in enumerate(ignored.get("scope", [])):
        if name in names:
            reasons.setdefault(name, "scope")
        else:
            problems.append((f"ignored.scope[{i}]", f"no node named {name!r}{_nearest(name, names)}"))
    for i, pattern in enumerate(ignored.get("patterns", [])):
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            problems.append((f"ignored.patterns[{i}]", f"{pattern!r} is not a regular expression: {exc}"))
            continue
        matched = [name for name in names if regex.fullmatch(name)]
        if not matched:
            problems.append((f"ignored.patterns[{i}]",
                             f"{pattern!r} matches no node name (the whole name must match)"
                             f"{_nearest(pattern, names)}"))
        for name in matched:
            reasons.setdefault(name, f"pattern {pattern!r}")
    for i, op_type in enumerate(ignored.get("operations", [])):
        matched = [name for name, op in nodes if op == op_type]
        if not matched:
            problems.append((f"ignored.operations[{i}]",
                             f"no node of type {op_type!r} in the model{_nearest(op_type, op_types)}"))
        for name in matched:
            reasons.setdefault(name, f"operation {op_type}")
    if problems:
        raise SpecError(problems)
    return reasons


def _nearest(word: str, candidates: list[str]) -> str:
    near = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    return f" (nearest: {', '.join(map(repr, near))})" if near else ""
