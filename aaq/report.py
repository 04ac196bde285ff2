"""What a run did, as a ``Result`` and as report.json; the model and the report are published as one pair."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from aaq.errors import AaqError, PluginError
from aaq.output import RunFolder
from aaq.report_timings import split_times
from aaq.spec.coerce import NAME_MAX_BYTES, OUTPUT_SUFFIX
from aaq.state import AlgorithmRecord
from aaq.version import __version__

logger = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(^|_)(token|api_key|password|secret)$", re.IGNORECASE)
"""Keys whose values are credentials (``sigopt_api_token``): report.json shows them as ``REDACTED``."""
REDACTED = "<redacted>"


@dataclasses.dataclass
class MetricOutcome:
    """One metric of the final model on the full dataset, and its drop against ``reference``.

    ``float`` is the float model's measured value (``None`` when it was not measured:
    the user gave ``baseline_value``s); ``reference`` is what the drop is against,
    ``reference_kind`` says which (``measured``, ``baseline_value``, ``not measured``).
    """

    float: float | None
    quantized: float
    higher_is_better: bool
    reference: float | None = None
    reference_kind: str = "measured"
    interval: dict[str, Any] | None = None
    """The drop's confidence interval on the search samples (``DropInterval.as_dict``), when one was computed."""
    held_out: dict[str, Any] | None = None
    """The drop's interval on the held-out samples (``engine.dataset.holdout``)."""

    def __post_init__(self) -> None:
        if self.reference is None and self.reference_kind == "measured":
            self.reference = self.float

    @property
    def drop(self) -> float | None:
        """Positive when the final model is worse, whatever the metric's direction; ``None`` without a reference."""
        if self.reference is None:
            return None
        diff = self.reference - self.quantized
        return diff if self.higher_is_better else -diff

    def describe(self, name: str) -> str:
        """One console line: the reference, the final value, the drop."""
        if self.reference is None:
            return f"{name}: quantized {self.quantized:.4f} (float not measured: no reference)"
        label = "float" if self.reference_kind == "measured" else self.reference_kind
        line = f"{name}: {label} {self.reference:.4f}  quantized {self.quantized:.4f}  drop {self.drop:+.4f}"
        for iv, what in ((self.interval, ""), (self.held_out, "; held-out drop")):
            if iv:
                head = f"{what} {iv['point']:+.4f}" if what else ""
                kind = "relative drop " if iv["drop_type"] == "relative" else ""
                line += (f"{head} ({kind}{iv['level']:.0%} interval [{iv['low']:+.4f}, {iv['high']:+.4f}] "
                         f"on {iv['samples']} samples)")
        return line


@dataclasses.dataclass
class Result:
    """The outcome of ``Pipeline.run``: the model, whether every target was met, and how it got there."""

    model: onnx.ModelProto
    model_name: str
    target_met: bool
    targets: dict[str, bool]
    metrics: dict[str, MetricOutcome]
    algorithms: list[AlgorithmRecord]
    evaluations: list[Any]
    seconds: float
    spec: dict[str, Any]
    float_samples_inferred: int = 0
    evaluated: bool = True
    """Whether the float and final models were measured after the algorithms (False: ``evaluate: false``)."""
    metric_names: list[str] = dataclasses.field(default_factory=list)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    """Why a target is not met when its drop alone does not say (the search overfitted)."""
    interrupted: str | None = None
    """The signal that stopped the run (``"SIGINT"``...): the model is the best found until then, and the
    float and final models were not measured again."""
    executors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Each executor of the run (``Executor.describe``): tasks sent, bytes shipped, seconds in tasks and waiting."""


    def report(self) -> dict[str, Any]:
        """The JSON-able report: resolved spec, metrics, every algorithm and evaluation, totals.

        Everything measured in time (when, how long, latency; the seconds an algorithm's
        summary gives its steps, ``report_timings``) is under ``"timings"``, so that two runs
        of the same spec and seed give reports equal but for that field, as long as no
        decision of the run depended on the clock (``latency_aware: "measure"``,
        ``faster_than_float``).
        """
        evaluations = [_jsonable(e) for e in self.evaluations]
        algorithms = [redact(_jsonable(r)) for r in self.algorithms]
        executors = [dict(e) for e in self.executors]
        nodes = [n.op_type for n in self.model.graph.node]
        digest = hashlib.sha256(self.model.SerializeToString(deterministic=True)).hexdigest()
        timings = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": self.seconds,
            "algorithms": [{"name": a.get("name"), "seconds": a.pop("seconds", None)} for a in algorithms],
            "evaluations": [e.pop("seconds", None) if isinstance(e, dict) else None for e in evaluations],
            "latency": {a.get("name"): a["summary"].pop("latency") for a in algorithms
                        if isinstance(a.get("summary"), dict) and "latency" in a["summary"]},
            "executors": [{k: e.pop(k, None) for k in ("task_seconds", "wait_seconds")} for e in executors],
        }
        timings["summaries"] = []
        for record in algorithms:
            times = None
            if "summary" in record:
                record["summary"], times = split_times(record["summary"])
            timings["summaries"].append(times)
        return {
            "aaq_version": __version__,
            "target_met": self.target_met,
            "targets": self.targets,
            "target_notes": self.notes,
            "interrupted": self.interrupted is not None,
            "signal": self.interrupted,
            "model": {
                "file": self.model_filename,
                "sha256": digest,
                "nodes": len(nodes),
                "quantize_linear": nodes.count("QuantizeLinear"),
                "dequantize_linear": nodes.count("DequantizeLinear"),
                "bytes": self.model.ByteSize(),
                "float_file_bytes": _file_size(self.spec.get("model", {}).get("path")),
            },
            "metrics": ({name: {**dataclasses.asdict(m), "drop": m.drop} for name, m in self.metrics.items()}
                        if self.evaluated else {name: {"measured": False} for name in self.metric_names}),
            "evaluated": self.evaluated,
            "algorithms": algorithms,
            "evaluations": evaluations,
            "executors": executors,
            "totals": {
                "evaluations": len(evaluations),
                "samples_inferred": sum(int(e.get("inferred", 0)) for e in evaluations),
                "float_model_samples_inferred": self.float_samples_inferred,
            },
            "spec": redact(_jsonable(self.spec)),
            "timings": timings,
        }

    def report_bytes(self) -> bytes:
        """report.json's bytes; a value that is not JSON (an algorithm's summary) is a PluginError naming it."""
        try:
            return (json.dumps(self.report(), indent=2, allow_nan=False) + "\n").encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            for record in self.algorithms:
                try:
                    json.dumps(_jsonable(record), allow_nan=False)
                except (TypeError, ValueError, RecursionError) as inner:
                    detail = "it refers to itself" if isinstance(inner, RecursionError) else str(inner)
                    name = str(getattr(record, "name", "?"))
                    raise PluginError(f"its summary cannot be written to report.json ({detail}); a summary "
                                      f"holds JSON values only", name, _algorithm_source(name)) from None
            raise AaqError(f"report.json cannot be written: {exc}") from None

    def save(self, out_dir: str | Path | RunFolder, *, extra_files: Mapping[str, bytes] | None = None,
             protect: Iterable[str | Path] = ()) -> Path:
        """Publish the model, report.json and ``extra_files`` in ``out_dir`` as one pair; the model's path.

        Everything is serialised before anything is written, and the files are switched
        in together (``aaq.output``): a reader sees this run's pair or the previous one,
        never a mix. ``out_dir`` may be a ``RunFolder`` the caller opened (the CLI does,
        to write the log into it); ``protect`` adds input files never to replace (the
        spec's model and data always are).
        """
        model_bytes = self.model.SerializeToString(deterministic=True)
        files = {self.model_filename: model_bytes, "report.json": self.report_bytes(), **(extra_files or {})}
        protected = [*input_paths(self.spec), *protect]
        if isinstance(out_dir, RunFolder):
            run, own = out_dir, False
        else:
            run, own = RunFolder.create(out_dir, names=files, protect=protected), True
        try:
            for name, data in files.items():
                run.write(name, data)
            published = run.commit()
        except BaseException:
            if own:
                run.abandon(keep=())
            raise
        logger.info("wrote %s and %s", published[self.model_filename], published["report.json"])
        return published[self.model_filename]

    @property
    def model_filename(self) -> str:
        return output_filename(self.model_name)


def _algorithm_source(name: str) -> str | None:
    from aaq.algorithms.base import algorithms

    try:
        return algorithms.source(name)
    except Exception:
        return None


def output_filename(model_name: str) -> str:
    """``NAME.quantized.onnx``, made a safe file name whatever ``NAME`` is (the spec refuses bad
    names already; this keeps a Result built in code from writing anywhere else either)."""
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(model_name))
    name = name.lstrip(".") or "model"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = name.encode("utf-8", "replace").decode("utf-8")
    budget = NAME_MAX_BYTES
    if len(name.encode("utf-8")) > budget:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
        cut = name.encode("utf-8")[:budget - 13].decode("utf-8", "ignore")
        name = f"{cut}-{digest}"
    return name + OUTPUT_SUFFIX


def input_paths(spec: Mapping[str, Any]) -> list[str]:
    """The files a resolved spec reads (model, datasets): an output never replaces them."""
    paths = []
    model = spec.get("model") if isinstance(spec, Mapping) else None
    if isinstance(model, Mapping) and isinstance(model.get("path"), str):
        paths.append(model["path"])
    engine = spec.get("engine") if isinstance(spec, Mapping) else None
    for key in ("dataset", "calibration_dataset"):
        entry = engine.get(key) if isinstance(engine, Mapping) else None
        if isinstance(entry, Mapping) and isinstance(entry.get("path"), str):
            paths.append(entry["path"])
    return paths


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: a reader never sees half a file.

    The file gets the usual permissions (0666 less the umask), not a temporary file's 0600.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_size(path: Any) -> int | None:
    """Size of the spec's model file (the float model a spec run quantizes); None when it is not a file."""
    try:
        return os.path.getsize(path) if path else None
    except (OSError, TypeError):
        return None


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode("utf-8"))


def redact(obj: Any) -> Any:
    """``obj`` with the value of every credential key (``SECRET_KEY``) replaced, at any depth."""
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and v is not None else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
