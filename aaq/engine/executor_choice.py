"""Which executor a spec entry or a Python API argument names, and the faults of an ``executor`` entry.

Apart from ``engine.executors`` so that the base classes need not know the Dask one,
which imports ``distributed`` only when a Dask executor is opened.
"""
from __future__ import annotations

from typing import Any

from aaq.engine.dask_executor import DaskExecutor
from aaq.engine.executors import Executor, ProcessExecutor
from aaq.errors import SpecError

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_TASK_TIMEOUT = 600.0


def executor_problems(entry: dict[str, Any], where: str = "engine.executor") -> list[tuple[str, str]]:
    """What the schema cannot say about an ``executor`` entry: which keys go with which type."""
    kind = entry.get("type", "local")
    allowed = {"local": set(), "processes": {"workers"},
               "dask": {"address", "local_workers", "connect_timeout", "task_timeout"}}.get(kind, set())
    problems = [(f"{where}.{key}", f"does not apply to executor type {kind!r} (it takes: "
                                   f"{', '.join(sorted(allowed)) or 'no option'})")
                for key in sorted(set(entry) - {"type"} - allowed)]
    if kind == "processes" and "workers" not in entry:
        problems.append((where, "executor type 'processes' needs 'workers' (how many processes)"))
    if kind == "dask" and ("address" in entry) == ("local_workers" in entry):
        problems.append((where, "executor type 'dask' needs one of 'address' (a running scheduler, "
                                "tcp://host:8786) or 'local_workers' (a LocalCluster of that many workers)"))
    return problems


def executor_from_spec(entry: dict[str, Any] | None, where: str = "engine.executor") -> Executor:
    """The executor an ``engine.executor`` entry names (not started: ``open`` does that)."""
    entry = entry or {"type": "local"}
    problems = executor_problems(entry, where)
    if problems:
        raise SpecError(problems)
    kind = entry.get("type", "local")
    if kind == "processes":
        return ProcessExecutor(entry["workers"]) if entry["workers"] > 1 else Executor()
    if kind == "dask":
        return DaskExecutor(address=entry.get("address"), local_workers=entry.get("local_workers"),
                            connect_timeout=float(entry.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
                            task_timeout=float(entry.get("task_timeout", DEFAULT_TASK_TIMEOUT)))
    return Executor()


def as_executor(value: Any) -> Executor:
    """An ``Executor`` from what the Python API accepts: one, a spec entry (dict), a ``distributed.Client``, None."""
    if value is None:
        return Executor()
    if isinstance(value, Executor):
        return value
    if isinstance(value, dict):
        return executor_from_spec(value, "executor")
    if type(value).__module__.startswith("distributed") and type(value).__name__ == "Client":
        return DaskExecutor(client=value)
    raise TypeError(f"an executor must be an aaq Executor, an executor entry (dict) or a distributed.Client, "
                    f"got {type(value).__name__}")
