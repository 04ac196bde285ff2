"""Where independent candidate evaluations run: in this process, in local worker processes, or on a Dask cluster.

A caller (ranking, the alternatives loop) hands an executor one *task function*, a
few large *contexts* and many small *tasks*. A context (the float model, a plan,
the samples of a ranking subset) is shipped once with ``share`` and reaches every
worker once; a task carries only what differs (group ids), so the bytes per task
stay small whatever the model. Results come back in task order, so a run gives the
same answer on every executor.

- ``Executor`` (``local``, the default): nothing is shipped; the caller scores on its own engine.
- ``ProcessExecutor`` (``processes``): spawned local processes; contexts go through a scratch file.
- ``DaskExecutor`` (``dask``, in ``engine.dask_executor``): a ``distributed.Client``, to a cluster's
  address, to a ``LocalCluster`` it starts, or one the user passes in.

``engine.executor_choice`` turns a spec entry (or what the Python API accepts) into one.

Each executor counts what it cost (``ExecutorStats``): tasks sent, seconds inside tasks
(measured by the task), seconds the caller waited, bytes shipped.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

from aaq.errors import AaqError
from aaq.output import signals_deferred

logger = logging.getLogger(__name__)

GRACE_SECONDS = 5.0
"""How long an abandoned worker may take to end on SIGTERM before it is killed."""

class ExecutorError(AaqError):
    """An executor that failed while the run went on (a lost cluster, a timeout): the caller may fall back."""


class TaskError(AaqError):
    """A task that raised in a worker: names the worker, the task (the group it scored) and the error."""

    def __init__(self, worker: str, task: str, error: str) -> None:
        self.worker, self.task, self.error = worker, task, error
        super().__init__(f"worker {worker}: {task}: {error}")

    def __reduce__(self) -> tuple:  # travels back from a worker process or a Dask worker intact
        return TaskError, (self.worker, self.task, self.error)


@dataclass
class ExecutorStats:
    """What an executor cost: tasks sent, seconds inside tasks and waiting for them, bytes shipped."""

    tasks: int = 0
    task_seconds: float = 0.0
    wait_seconds: float = 0.0
    context_bytes: int = 0
    """Bytes of the contexts shipped, counted once per worker that receives them."""
    task_bytes: int = 0
    """Bytes of the tasks' own arguments (what travels per task)."""
    dataset: str | None = None
    """How the samples reached the workers: ``"by_reference"`` (the dataset's recipe and sample indices; each
    worker loads the dataset once per run), ``"shipped"`` (the samples, once per subset), None (nothing sent)."""
    dataset_bytes: int = 0
    """Of ``context_bytes``, those of the subsets (indices by reference, samples when shipped)."""
    dataset_contexts: int = 0
    """Subsets shipped (each once to every worker)."""

    @property
    def bytes_shipped(self) -> int:
        return self.context_bytes + self.task_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_shipped": self.bytes_shipped,
                "bytes_per_task": self.task_bytes / self.tasks if self.tasks else 0.0}


@dataclass(frozen=True)
class Shared:
    """A context shipped once: ``key`` names it on the workers (their caches are keyed by it)."""

    key: str
    value: Any


def worker_name() -> str:
    """Who runs this task: the Dask worker's address, else host and process id."""
    try:
        from distributed import get_worker
        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def run_task(fn: Callable[..., Any], contexts: Sequence[Any], task: Any, label: str) -> tuple[Any, float]:
    """In a worker: ``fn(*contexts, task)`` and the seconds it took; an error becomes a ``TaskError``."""
    started = time.perf_counter()
    try:
        values = [_resolve(c) for c in contexts]
        result = fn(*values, task)
    except Exception as exc:  # reported with the worker and the task, then the caller decides
        raise TaskError(worker_name(), label, f"{type(exc).__name__}: {exc}") from None
    return result, time.perf_counter() - started


_FILES: dict[str, Shared] = {}
"""In a worker process: the contexts read from scratch files, by path (a few per run)."""


@dataclass(frozen=True)
class _FileRef:
    path: str


def _resolve(context: Any) -> Any:
    if isinstance(context, _FileRef):
        if context.path not in _FILES:
            if len(_FILES) >= 8:  # contexts of earlier subsets and plans are not asked for again
                _FILES.pop(next(iter(_FILES)))
            _FILES[context.path] = pickle.loads(Path(context.path).read_bytes())
        return _FILES[context.path]
    return context


class Executor:
    """In this process (``local``): not parallel; a caller scores on its own engine and counts it here."""

    kind = "local"
    workers = 1
    parallel = False

    def __init__(self) -> None:
        self.stats = ExecutorStats()
        self.owned = True
        """Whether the run started it and so ends it (a ``distributed.Client`` passed in is the user's)."""

    @property
    def threads_per_task(self) -> int:
        """ONNX Runtime intra-op threads a task's engine uses (0: the worker decides)."""
        return 0

    def open(self) -> None:
        """Start or connect now, so that an unreachable cluster fails the run before any inference."""

    def share(self, value: Any) -> Any:
        """``value`` shipped once to the workers; pass the handle to ``map`` as a context."""
        return Shared(uuid.uuid4().hex, value)

    def map(self, fn: Callable[..., Any], contexts: Sequence[Any], tasks: Sequence[Any],
            labels: Sequence[str]) -> list[Any]:
        """``fn(*contexts, task)`` for every task, results in task order."""
        out = []
        for task, label in zip(tasks, labels):
            value, seconds = run_task(fn, contexts, task, label)
            self.count(1, seconds)
            out.append(value)
        return out

    def count(self, tasks: int, seconds: float) -> None:
        """Work the caller did itself (local scoring), counted as this executor's tasks."""
        self.stats.tasks += tasks
        self.stats.task_seconds += seconds

    def close(self, abandon: bool = False) -> None:
        """End what was started (idempotent); the stats are kept.

        ``abandon`` (a signal is ending the run): end the workers now, not after their running tasks.
        """

    def describe(self) -> dict[str, Any]:
        """The report's view: what it is and what it cost."""
        figures = self.stats.as_dict()
        sent = self.stats.dataset_contexts * max(1, self.workers)
        figures["dataset_bytes_per_context"] = self.stats.dataset_bytes / sent if sent else 0.0
        return {"type": self.kind, "workers": self.workers, **figures}

    def __enter__(self) -> "Executor":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ProcessExecutor(Executor):
    """Spawned worker processes on this machine (not forked: a forked ONNX Runtime thread pool can hang).

    Workers ignore SIGINT and SIGHUP: the run decides and ends them (``close``, also on
    an interrupt). Contexts are pickled once into a scratch folder that ``close`` removes;
    each worker reads a file the first time a task names it.
    """

    kind = "processes"
    parallel = True

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    @property
    def threads_per_task(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def open(self) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                             initializer=ignore_interrupts)
            self._scratch = tempfile.TemporaryDirectory(prefix="aaq-executor-")
            logger.info("candidates scored by %d worker processes (%d threads each)", self.workers,
                        self.threads_per_task)

    def share(self, value: Any) -> Any:
        self.open()
        assert self._scratch is not None
        shared = Shared(uuid.uuid4().hex, value)
        blob = pickle.dumps(shared)
        path = Path(self._scratch.name) / f"{shared.key}.pkl"
        path.write_bytes(blob)
        self.stats.context_bytes += len(blob) * self.workers
        return _FileRef(str(path))

    def map(self, fn: Callable[..., Any], contexts: Sequence[Any], tasks: Sequence[Any],
            labels: Sequence[str]) -> list[Any]:
        self.open()
        assert self._pool is not None
        started = time.perf_counter()
        futures = []
        for task, label in zip(tasks, labels):
            self.stats.task_bytes += len(pickle.dumps((fn, contexts, task, label)))
            futures.append(self._pool.submit(run_task, fn, contexts, task, label))
        try:
            results = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            self.stats.wait_seconds += time.perf_counter() - started
        self.stats.tasks += len(results)
        self.stats.task_seconds += sum(s for _, s in results)
        return [v for v, _ in results]

    def close(self, abandon: bool = False) -> None:
        """End the workers and delete the scratch folder.

        ``abandon``: the workers are stopped now, SIGTERM then SIGKILL after
        ``GRACE_SECONDS``, instead of after their running task, and further signals wait
        until they are gone and the scratch data is deleted, so that no worker and no copy
        of the data outlives the run.
        """
        with signals_deferred() if abandon else contextlib.nullcontext():
            if self._pool is not None:
                if abandon:
                    # ProcessPoolExecutor has no public handle on its processes before Python 3.14
                    processes = list((getattr(self._pool, "_processes", None) or {}).values())
                    for process in processes:
                        process.terminate()
                    for process in processes:
                        process.join(GRACE_SECONDS)
                        if process.is_alive():  # pragma: no cover - a worker stuck in native code
                            process.kill()
                            process.join()
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            if self._scratch is not None:
                self._scratch.cleanup()
                self._scratch = None


def ignore_interrupts() -> None:
    """A worker's first act: Ctrl-C and a hang-up reach the whole process group, and the run decides
    (it closes its executor); a worker printing its own KeyboardInterrupt traceback would only be noise."""
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)


def executor_of(engine: Any) -> Executor:
    """The engine's executor; an engine without one (a test's or a user's own) scores in this process."""
    executor = getattr(engine, "executor", None)
    return executor if isinstance(executor, Executor) else Executor()
