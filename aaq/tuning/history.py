"""A tuning run's history files, and an earlier run's history as the cache a resumed run replays from.

``tuning_history.jsonl`` holds one JSON line per trial, appended as the trial ends;
``tuning_rankings.jsonl`` one line per fallback ranking a strategy asked for. A line
is a record once its newline is written: a file cut mid-line (the machine went
down) is read up to its last whole record.

Resuming is replay: the strategy runs again from the start, deterministically, and
each config it proposes whose trial finished in the earlier run (measured to the end,
or stopped early once its verdict was certain; not one the deadline cut short) is
answered from that run's record instead of being evaluated, keyed by a digest of
every field of the config (``config_key``, written in each record). A ranking is
answered the same way. The new run's files start as a copy of the earlier run's
finished records, so each run's history holds everything the next resume needs even
when that run is interrupted in turn.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from aaq.tuning.monitor import Trial
from aaq.tuning.space import TrialConfig

logger = logging.getLogger(__name__)

HISTORY_FILE = "tuning_history.jsonl"
RANKINGS_FILE = "tuning_rankings.jsonl"


def config_key(config: TrialConfig) -> str:
    """The digest of every field of a config (canonical JSON): the cache key of its trial and rankings.

    An empty ``alternative`` is left out, so histories written before that field existed still replay.
    """
    fields = dataclasses.asdict(config)
    if not fields.get("alternative"):
        fields.pop("alternative", None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The whole records of a JSON-lines file: a last line without its newline, and anything after a line that
    is not a JSON object, are dropped (with a warning)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines[-1]:
        logger.warning("%s: the last line is cut short (%d bytes): read up to the record before it", path,
                       len(lines[-1]))
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            logger.warning("%s:%d: not a record: read up to the line before it", path, number)
            break
        records.append(record)
    return records


def finished(record: dict[str, Any]) -> bool:
    """A trial whose result stands: measured to the end, or stopped once its verdict was certain."""
    return (isinstance(record.get("config_key"), str) and isinstance(record.get("score"), list)
            and (record.get("complete") or record.get("stopped") == "decided"))


def trial_from_record(record: dict[str, Any], number: int, config: TrialConfig) -> Trial:
    """The ``Trial`` an earlier run recorded for ``config``, numbered as this run numbers it."""
    values = {name: (float(v[0]), float(v[1])) if isinstance(v, list) else (float(v), float(v))
              for name, v in record["metrics"].items()}
    lo, hi = record["score"]
    return Trial(number, config, bool(record["passed"]), bool(record["complete"]), values, (float(lo), float(hi)),
                 record.get("accuracy"), dict(record.get("objectives") or {}), float(record.get("seconds", 0.0)),
                 str(record.get("stopped", "")), str(record.get("phase", "")), dict(record.get("measurements") or {}))


class History:
    """This run's history files in ``output_dir`` (none without one), answering from ``previous``'s records.

    ``previous``: the folder of the earlier run a resumed run continues (None: a fresh run).
    """

    def __init__(self, output_dir: Path | None, previous: Path | None = None) -> None:
        self.path = None if output_dir is None else Path(output_dir) / HISTORY_FILE
        self.rankings_path = None if output_dir is None else Path(output_dir) / RANKINGS_FILE
        old = [r for r in read_records(previous / HISTORY_FILE) if finished(r)] if previous else []
        ranks = read_records(previous / RANKINGS_FILE) if previous else []
        self._trials = {r["config_key"]: r for r in old}
        self._rankings = {(r["config_key"], r["method"]): r for r in ranks
                          if isinstance(r.get("config_key"), str) and isinstance(r.get("ranking"), dict)}
        self.replayed = 0
        """Trials answered from the earlier run's records."""
        if previous is not None:
            logger.info("resuming from %s: %d finished trials, %d rankings", previous, len(old), len(self._rankings))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in old), encoding="utf-8")
            self.rankings_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n"
                                                  for r in self._rankings.values()), encoding="utf-8")

    def cached(self, number: int, config: TrialConfig) -> Optional[Trial]:
        """The earlier run's trial of ``config`` (used once), or None: it must be evaluated."""
        record = self._trials.pop(config_key(config), None)
        if record is None:
            return None
        if record.get("trial") != number:
            logger.debug("trial %d replays the earlier run's trial %s", number, record.get("trial"))
        self.replayed += 1
        return trial_from_record(record, number, config)

    def append(self, trial: Trial) -> None:
        """A trial this run evaluated (a replayed one is in the file already)."""
        _append(self.path, {**trial.as_dict(), "config_key": config_key(trial.config)})

    def ranking(self, config: TrialConfig, method: str, compute: Callable[[], Optional[dict[str, Any]]]
                ) -> Optional[dict[str, Any]]:
        """The ranking record of ``config`` by ``method``: the earlier run's, else ``compute()``'s (recorded)."""
        key = (config_key(config), method)
        if key in self._rankings:
            return self._rankings[key]["ranking"]
        record = compute()
        if record is not None:
            self._rankings[key] = {"config_key": key[0], "method": method, "ranking": record}
            _append(self.rankings_path, self._rankings[key])
        return record


def _append(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
