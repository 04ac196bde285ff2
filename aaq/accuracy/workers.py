"""Worker processes that score candidate models on a ranking subset, each with its own engine.

A subset's inputs and labels are written once to a scratch file that the workers
read and keep; each task then carries only the candidate model's bytes. Processes
are spawned, not forked: a forked ONNX Runtime thread pool can hang.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from aaq.accuracy.subsets import output_distance
from aaq.engine.datasets import ArrayDataset, SampleList, is_batched
from aaq.engine.feeds import fetch
from aaq.engine.engine import Engine
from aaq.engine.protocol import EngineLike
from aaq.output import signals_deferred

logger = logging.getLogger(__name__)

GRACE_SECONDS = 5.0
"""How long an abandoned worker may take to end on SIGTERM before it is killed."""


class WorkerPool:
    """A process pool and the scratch folder of the subsets it was sent."""

    def __init__(self, executor: ProcessPoolExecutor, scratch: tempfile.TemporaryDirectory) -> None:
        self.executor, self.scratch = executor, scratch
        self._contexts: dict[bytes, str] = {}

    @classmethod
    def start(cls, engine: EngineLike, float_model: onnx.ModelProto, workers: int) -> "WorkerPool":
        metrics_blob = pickle.dumps(list(engine.metrics))  # a metric that cannot be pickled: the caller falls back
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                       initializer=_worker_init,
                                       initargs=(metrics_blob, float_model.SerializeToString(), engine.batch_size,
                                                 threads, _spinning(engine)))
        logger.info("ranking with %d worker processes (%d threads each)", workers, threads)
        return cls(executor, tempfile.TemporaryDirectory(prefix="aaq-ranking-"))

    def context(self, engine: EngineLike, subset: np.ndarray) -> str:
        """The scratch file of ``subset``: its stacked inputs and labels, or, for a batched dataset,
        its samples (whole feeds, transformed already)."""
        key = np.asarray(subset, np.int64).tobytes()
        if key not in self._contexts:
            if is_batched(engine.dataset):
                data: Any = [engine.dataset[int(i)] for i in subset]
            else:
                inputs, labels = fetch(engine.dataset, subset)
                data = (dict(inputs), labels)
            path = Path(self.scratch.name) / f"subset{len(self._contexts)}.pkl"
            path.write_bytes(pickle.dumps(data))
            self._contexts[key] = str(path)
        return self._contexts[key]

    def submit(self, context: str, model: onnx.ModelProto, metric: str, distance: bool) -> Future:
        return self.executor.submit(_worker_score, context, model.SerializeToString(), metric, distance)

    def close(self, abandon: bool = False) -> None:
        """End the workers and delete the scratch folder.

        ``abandon`` (a signal is ending the run): the workers are stopped now, SIGTERM
        then SIGKILL after ``GRACE_SECONDS``, instead of after their running task, and
        further signals wait until they are gone and the scratch data is deleted, so
        that no worker and no copy of the data outlives the run.
        """
        if not abandon:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.scratch.cleanup()
            return
        with signals_deferred():
            # ProcessPoolExecutor has no public handle on its processes before Python 3.14 (terminate_workers)
            processes = list((getattr(self.executor, "_processes", None) or {}).values())
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(GRACE_SECONDS)
                if process.is_alive():  # pragma: no cover - a worker stuck in native code
                    process.kill()
                    process.join()
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.scratch.cleanup()


_WORKER: dict[str, Any] = {}


def _spinning(engine: Any) -> bool:
    """Whether the engine's sessions let ONNX Runtime's threads spin (its workers do as it does)."""
    options = getattr(engine, "session_options", None)
    return options is not None and options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def _worker_init(metrics_blob: bytes, float_bytes: bytes, batch_size: int, threads: int, spinning: bool) -> None:
    # Ctrl-C and a hang-up reach the whole process group: the run decides, and ends the pool with it
    # (WorkerPool.close); a worker printing its own KeyboardInterrupt traceback would only be noise.
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    _WORKER.update(metrics=pickle.loads(metrics_blob), float=float_bytes, batch_size=batch_size,
                   threads=threads, spinning=spinning, context=None, engine=None)


def _worker_score(context: str, model_bytes: bytes, metric: str, distance: bool) -> tuple[float, int]:
    """In a worker: the candidate's metric on the subset (or its output distance), and samples inferred."""
    if _WORKER["context"] != context:
        data = pickle.loads(Path(context).read_bytes())
        dataset = SampleList(data, batched=True) if isinstance(data, list) else ArrayDataset(*data)
        engine = Engine(dataset, _WORKER["metrics"], batch_size=_WORKER["batch_size"],
                        intra_op_threads=_WORKER["threads"], allow_spinning=_WORKER["spinning"], progress=False)
        engine.set_float_model(_WORKER["float"])
        _WORKER.update(context=context, engine=engine)
    engine = _WORKER["engine"]
    every = np.arange(engine.num_samples)
    if distance:
        ref = engine.outputs(_WORKER["float"], every)
        return -float(np.mean(output_distance(ref, engine.outputs(model_bytes, every)))), len(every)
    ev = engine.evaluate(model_bytes, every)
    return float(ev.values[metric]), int(ev.samples_inferred)
