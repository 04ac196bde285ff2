"""Elapsed times inside algorithm summaries: taken out of report.json's body into ``timings``, and put back.

Two runs of one spec and seed must give report.json files equal but for ``timings``;
summaries also say how long their own steps took (an evaluation, a ranking, the
confidence intervals, a trial). Those entries are recognised by name, ``seconds`` or
``*_seconds``, at any depth, and kept as a sparse mirror of where they were, so the
report page can show each beside what it timed.
"""
from __future__ import annotations

from numbers import Real
from typing import Any


def is_time_key(key: Any) -> bool:
    return isinstance(key, str) and (key == "seconds" or key.endswith("_seconds"))


def split_times(value: Any) -> tuple[Any, Any]:
    """``(value without its elapsed-time entries, their mirror)``; the mirror is None when there are none.

    Lists are mirrored as ``{"index": mirror}`` so that the mirror stays sparse.
    """
    if isinstance(value, dict):
        rest, times = {}, {}
        for key, item in value.items():
            if is_time_key(key) and (item is None or (isinstance(item, Real) and not isinstance(item, bool))):
                times[key] = item
                continue
            rest[key], inner = split_times(item)
            if inner is not None:
                times[key] = inner
        return rest, times or None
    if isinstance(value, list):
        rest, times = [], {}
        for index, item in enumerate(value):
            kept, inner = split_times(item)
            rest.append(kept)
            if inner is not None:
                times[str(index)] = inner
        return rest, times or None
    return value, None


def merge_times(value: Any, times: Any) -> Any:
    """``value`` with the entries of a ``split_times`` mirror put back in place (``value`` is changed)."""
    if not isinstance(times, dict):
        return value
    for key, inner in times.items():
        if isinstance(value, list):
            index = int(key)
            if 0 <= index < len(value):
                merge_times(value[index], inner)
        elif isinstance(value, dict):
            if isinstance(inner, dict) and isinstance(value.get(key), (dict, list)):
                merge_times(value[key], inner)
            else:
                value.setdefault(key, inner)
    return value
