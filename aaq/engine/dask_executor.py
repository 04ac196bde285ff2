"""The ``dask`` executor: candidate evaluations on a Dask cluster, through a ``distributed.Client``.

Contexts are scattered once to every worker (``broadcast``), tasks carry small
arguments and refer to the contexts by future, so a worker deserialises a context
once and keeps it in memory while the run holds the future. A worker lost mid-task is
Dask's to retry on another (its ``allowed-failures``, left on). A scheduler that cannot
be reached is bad input naming the address (exit 2); one that stops answering ends
the wait after ``task_timeout`` seconds without a result, so a run never hangs on it.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
import uuid
from typing import Any, Callable, Sequence

from aaq.engine.executors import Executor, ExecutorError, Shared, run_task
from aaq.errors import BadInputError

logger = logging.getLogger(__name__)

EXTRA = "pip install 'aaq[dask]'"
QUIET_WORKERS = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "500ms",
                 "distributed.worker.memory.monitor-interval": "1s"}
"""A LocalCluster's workers without the statistical profiler (a thread that takes the GIL every 10 ms
to sample the task's stack, for a dashboard the run does not show) and with slower housekeeping ticks:
on few cores they compete with the tasks. A cluster of the user's keeps its own config."""


def import_distributed() -> Any:
    """The ``distributed`` module, or an error naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise BadInputError(f"executor type 'dask' needs the 'distributed' package: {EXTRA}") from None
    return distributed


class DaskExecutor(Executor):
    """A ``distributed.Client``: to ``address``, to a ``LocalCluster`` of ``local_workers`` it starts, or ``client``.

    A LocalCluster gets one thread per worker and worker processes (ONNX Runtime holds
    the GIL little, but one session per process keeps the cores apart as ``processes``
    does); what the run started, ``close`` ends, on an interrupt too. A client passed in
    is the user's: it is used, never closed.
    """

    kind = "dask"
    parallel = True

    def __init__(self, *, address: str | None = None, local_workers: int | None = None, client: Any = None,
                 connect_timeout: float = 30.0, task_timeout: float = 600.0) -> None:
        super().__init__()
        self.address, self.local_workers, self.client = address, local_workers, client
        self.connect_timeout, self.task_timeout = connect_timeout, task_timeout
        self.owned = client is None
        self._cluster: Any = None
        self._workers = 0

    @property
    def workers(self) -> int:  # type: ignore[override]
        return self._workers or self.local_workers or 0

    @property
    def threads_per_task(self) -> int:
        if self.local_workers:
            return max(1, (os.cpu_count() or 1) // self.local_workers)
        return 0  # a remote worker: ONNX Runtime decides on its machine

    def open(self) -> None:
        if self.client is not None:
            self._workers = self._workers or len(self.client.scheduler_info().get("workers", {}))
            return
        distributed = import_distributed()
        if self.local_workers:
            import dask
            with dask.config.set(QUIET_WORKERS):  # the nannies hand this config to the workers they start
                self._cluster = distributed.LocalCluster(n_workers=self.local_workers, threads_per_worker=1,
                                                         processes=True, dashboard_address=None)
            self.client = distributed.Client(self._cluster, timeout=self.connect_timeout)
            where = f"a LocalCluster of {self.local_workers} workers"
        else:
            try:
                self.client = distributed.Client(self.address, timeout=self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise BadInputError(f"engine.executor.address: no Dask scheduler reached at {self.address} within "
                                    f"{self.connect_timeout:g} s ({type(exc).__name__}: {exc})") from None
            where = f"the Dask scheduler at {self.address}"
        self._workers = len(self.client.scheduler_info().get("workers", {}))
        logger.info("candidates scored on %s (%d workers)", where, self._workers)

    def share(self, value: Any) -> Any:
        self.open()
        shared = Shared(uuid.uuid4().hex, value)
        self.stats.context_bytes += len(pickle.dumps(shared)) * max(1, self.workers)
        return self.client.scatter(shared, broadcast=True, hash=False)

    def map(self, fn: Callable[..., Any], contexts: Sequence[Any], tasks: Sequence[Any],
            labels: Sequence[str]) -> list[Any]:
        self.open()
        distributed = import_distributed()
        started = time.perf_counter()
        futures = []
        for task, label in zip(tasks, labels):
            self.stats.task_bytes += len(pickle.dumps((fn, task, label)))
            futures.append(self.client.submit(run_task, fn, list(contexts), task, label, pure=False))
        try:
            pending = set(futures)
            while pending:
                done, pending = distributed.wait(list(pending), timeout=self.task_timeout, return_when="FIRST_COMPLETED")
                if not done:
                    raise ExecutorError(f"dask: no task finished in {self.task_timeout:g} s "
                                        f"({len(pending)} of {len(futures)} pending): the cluster at "
                                        f"{self.where} is not answering")
            results = [f.result() for f in futures]
        except distributed.TimeoutError:
            raise ExecutorError(f"dask: no task finished in {self.task_timeout:g} s: the cluster at "
                                f"{self.where} is not answering") from None
        finally:
            for f in futures:
                f.release()
            self.stats.wait_seconds += time.perf_counter() - started
        self.stats.tasks += len(results)
        self.stats.task_seconds += sum(s for _, s in results)
        return [v for v, _ in results]

    @property
    def where(self) -> str:
        if self.address:
            return self.address
        return str(getattr(self.client, "scheduler", None) and self.client.scheduler.address or "local")

    def close(self, abandon: bool = False) -> None:
        if not self.owned:
            return
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def describe(self) -> dict[str, Any]:
        where = self.address or (f"LocalCluster({self.local_workers})" if self.local_workers else "client")
        return {**super().describe(), "address": where}
