"""What a run did, as a ``Result`` and as report.json; files are written atomically."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from aaq.state import AlgorithmRecord
from aaq.version import __version__

logger = logging.getLogger(__name__)


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
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    """Why a target is not met when its drop alone does not say (the search overfitted)."""

    @property
    def model_filename(self) -> str:
        return f"{self.model_name}.quantized.onnx"

    def report(self) -> dict[str, Any]:
        """The JSON-able report: resolved spec, metrics, every algorithm and evaluation, totals."""
        evaluations = [_jsonable(e) for e in self.evaluations]
        nodes = [n.op_type for n in self.model.graph.node]
        return {
            "aaq_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "target_met": self.target_met,
            "targets": self.targets,
            "target_notes": self.notes,
            "model": {
                "file": self.model_filename,
                "nodes": len(nodes),
                "quantize_linear": nodes.count("QuantizeLinear"),
                "dequantize_linear": nodes.count("DequantizeLinear"),
            },
            "metrics": {name: {**dataclasses.asdict(m), "drop": m.drop} for name, m in self.metrics.items()},
            "algorithms": [_jsonable(r) for r in self.algorithms],
            "evaluations": evaluations,
            "totals": {
                "seconds": self.seconds,
                "evaluations": len(evaluations),
                "samples_inferred": sum(int(e.get("inferred", 0)) for e in evaluations),
                "float_model_samples_inferred": self.float_samples_inferred,
            },
            "spec": self.spec,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write the model and report.json into ``out_dir``; returns the model's path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / self.model_filename
        write_bytes_atomic(model_path, self.model.SerializeToString())
        write_json_atomic(out / "report.json", self.report())
        logger.info("wrote %s and %s", model_path, out / "report.json")
        return model_path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode("utf-8"))


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
