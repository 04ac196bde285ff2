"""``aaq run --resume``: which earlier run in the output directory to continue, and whether its spec is this one.

A Tuning run keeps, beside its ``tuning_history.jsonl``, the spec the history belongs
to (``tuning_spec.json``): the resolved spec without Tuning's ``exit_policy`` (the one
thing a resumed run may change: more trials, a longer timeout) and its digest. A resumed
run continues the newest run folder in ``OUTPUT_DIR/.runs`` that has a history, published
or failed (an interrupted run with no model to publish keeps its history there with its
log), and refuses a spec that differs, naming every JSON path that changed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from aaq.errors import BadInputError, SpecError
from aaq.output import PARTIAL, RUNS
from aaq.report import redact
from aaq.tuning.history import HISTORY_FILE, RANKINGS_FILE

logger = logging.getLogger(__name__)

SPEC_FILE = "tuning_spec.json"
FILES = (HISTORY_FILE, RANKINGS_FILE, SPEC_FILE)
"""What a Tuning run keeps for the next ``--resume`` (published with its pair, or kept when nothing is)."""
RESUMING = ("Tuning",)
"""Algorithms that keep a history to resume from."""
MAX_SHOWN = 200
"""A changed value is shown up to this many characters."""


def keeps_history(resolved: dict[str, Any]) -> bool:
    return any(entry.get("name") in RESUMING for entry in resolved["compression"]["algorithms"])


def canonical_spec(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved spec as a resumed run must find it again: all of it but Tuning's exit policy, and with
    credentials (a strategy's API token) redacted, since this file is kept on disk like report.json."""
    spec = copy.deepcopy(resolved)
    for entry in spec["compression"]["algorithms"]:
        if entry.get("name") in RESUMING:
            entry.get("params", {}).pop("exit_policy", None)
    return redact(spec)


def spec_record(resolved: dict[str, Any]) -> bytes:
    """``tuning_spec.json``'s bytes."""
    canonical = canonical_spec(resolved)
    canonical = json.loads(json.dumps(canonical, default=str))
    return (json.dumps({"spec_sha256": _digest(canonical), "spec": canonical}, indent=2, sort_keys=True)
            + "\n").encode("utf-8")


def previous_run(out_dir: str | Path, resolved: dict[str, Any], source: str | None = None) -> Path:
    """The run folder to continue; a BadInputError when there is none, a SpecError when the spec changed."""
    out = Path(out_dir)
    found = _newest_history(out)
    if found is None:
        only = "" if keeps_history(resolved) else (" (and this spec has no Tuning step: only Tuning keeps a "
                                                   "history; AccuracyAwareQuantization runs from the start)")
        raise BadInputError(f"--resume: nothing to resume in {str(out)!r}: no {HISTORY_FILE} of an earlier run"
                            f"{only}; run without --resume")
    try:
        recorded = json.loads((found / SPEC_FILE).read_text(encoding="utf-8"))["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInputError(f"--resume: {str(found / SPEC_FILE)!r} is missing or unreadable: which spec the "
                            f"history belongs to is unknown; run without --resume") from None
    changes = list(_changes(recorded, json.loads(json.dumps(canonical_spec(resolved), default=str)), ""))
    if changes:
        raise SpecError([(path, f"{what} since the run resumed ({found.name}); --resume continues the same spec "
                                f"(only a Tuning exit_policy may change)") for path, what in changes], source)
    logger.info("resuming the run in %s", found)
    return found


def _newest_history(out: Path) -> Path | None:
    runs = out / RUNS
    if not runs.is_dir():
        return None
    folders = [d for d in runs.iterdir() if d.is_dir() and not d.is_symlink() and not d.name.endswith(PARTIAL)
               and (d / HISTORY_FILE).is_file()]
    return max(folders, key=lambda d: ((d / HISTORY_FILE).stat().st_mtime_ns, d.name), default=None)


def _changes(old: Any, new: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                yield where, "was removed"
            elif key not in old:
                yield where, f"was added ({_shown(new[key])})"
            else:
                yield from _changes(old[key], new[key], where)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _changes(a, b, f"{path}[{i}]")
    elif old != new or type(old) is not type(new):
        yield path or "spec", f"changed from {_shown(old)} to {_shown(new)}"


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
