"""Hostile data and metrics (issue 17, classes 4-6): exit 2 naming the dataset, the metric and the
sample, never an internal error nor a silently wrong number; one table per class."""
from __future__ import annotations

import json
import secrets
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import plugins  # noqa: F401  (registers TagModel)
from aaq.cli import main
from aaq.engine import ArrayDataset, Engine
from aaq.engine.metrics import Metric
from aaq.errors import DataError
from models import conv_net
from helpers import TINY, base_spec

X = np.load(TINY / "data.npz")["x"]
Y = np.load(TINY / "data.npz")["y"]


def _run_spec(tmp_path: Path, spec: dict, capsys) -> tuple[int, str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    capsys.readouterr()
    code = main(["run", str(path), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    return code, capsys.readouterr().err


def _spec(dataset: dict, calibration: dict | None = None, metrics: list | None = None) -> dict:
    spec = base_spec()
    spec["engine"]["dataset"] = dataset
    if calibration is not None:
        spec["engine"]["calibration_dataset"] = calibration
        spec["compression"]["algorithms"] = [{"name": "DefaultQuantization", "params": {"stat_subset_size": 32}}]
    if metrics is not None:
        spec["engine"]["metrics"] = metrics
    return spec


def _npz(tmp: Path, name: str = "data.npz", compressed: bool = False, **arrays) -> Path:
    path = tmp / name
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _npz_entry(path: Path, labels: str | None = "y") -> dict:
    return {"type": "npz", "path": str(path), "inputs": {"x": "x"}, "labels": labels}


# ---------------------------------------------------------------- class 4: broken data files and datasets

def _truncated(tmp: Path) -> Path:
    path = _npz(tmp, x=X, y=Y)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _header_claims_more_rows(tmp: Path) -> Path:
    path = _npz(tmp, x=X, y=Y)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(256, 3, 8, 8)", b"(512, 3, 8, 8)", 1))
    return path


def _flipped_data_byte(tmp: Path) -> Path:
    path = _npz(tmp, x=X, y=Y)
    data = bytearray(path.read_bytes())
    data[4000] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _flipped_compressed_byte(tmp: Path) -> Path:
    path = _npz(tmp, compressed=True, x=X, y=Y)
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _object_array(tmp: Path) -> Path:
    return _npz(tmp, x=np.array([X[0]] * 4 + [None], dtype=object), y=Y[:5])


def _zero_d_labels(tmp: Path) -> Path:
    return _npz(tmp, x=X, y=np.array(3))


def _not_a_zip(tmp: Path) -> Path:
    path = tmp / "data.npz"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    return path


BAD_FILES = {
    "truncated": (_truncated, "cannot be read as .npz"),
    "header claims more rows": (_header_claims_more_rows, "array 'x' is corrupt or truncated"),
    "flipped byte (stored)": (_flipped_data_byte, "array 'x' is corrupt: its CRC-32 does not match"),
    "flipped byte (compressed)": (_flipped_compressed_byte, "array 'x' cannot be read"),
    "object array": (_object_array, "holds Python objects (dtype object)"),
    "0-d labels": (_zero_d_labels, "labels: a scalar"),
    "not a zip": (_not_a_zip, "cannot be read as .npz"),
}


@pytest.mark.parametrize("make, phrase", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_broken_data_file_is_exit_2_naming_it(tmp_path: Path, capsys, make, phrase) -> None:
    path = make(tmp_path)
    code, err = _run_spec(tmp_path, _spec(_npz_entry(path)), capsys)
    assert code == 2, err
    assert phrase in err and str(path) in err and "Traceback" not in err and "internal error" not in err


_FACTORIES = '''
import numpy as np
from aaq import Sample

X = np.load({data!r})["x"]


class Base:
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return Sample({{"x": X[i]}}, 0)


class RaisesMidway(Base):
    def __getitem__(self, i):
        if i == 37:
            raise ValueError("bad row")
        return super().__getitem__(i)


class ReturnsNone(Base):
    def __getitem__(self, i):
        return None if i == 5 else super().__getitem__(i)


class ShapeChanges(Base):
    def __getitem__(self, i):
        return Sample({{"x": X[i][:, :4] if i == 9 else X[i]}}, 0)


class Strings(Base):
    def __getitem__(self, i):
        return Sample({{"x": np.array(["a"] * 3)}}, 0)


class LenRaises(Base):
    def __len__(self):
        raise RuntimeError("no length")


class BatchRaises(Base):
    def batch(self, indices):
        raise KeyError(int(indices[0]))


class NanMidway(Base):
    def __getitem__(self, i):
        s = super().__getitem__(i)
        return Sample({{"x": np.full_like(X[i], np.nan)}}, 0) if i == 21 else s
'''

BAD_DATASETS = {
    "raises midway": ("RaisesMidway", "sample 37: dataset 'python:{m}:RaisesMidway' raised ValueError: bad row"),
    "returns None": ("ReturnsNone", "sample 5: dataset 'python:{m}:ReturnsNone' returned NoneType"),
    "shape changes": ("ShapeChanges", "sample 9: dataset 'python:{m}:ShapeChanges': input 'x' is [3, 4, 8] float32, sample 0's is [3, 8, 8]"),
    "strings": ("Strings", "dataset 'python:{m}:Strings': input 'x' holds str"),
    "len raises": ("LenRaises", "plugin '{m}:LenRaises': len() of the dataset raised RuntimeError"),
    "batch raises": ("BatchRaises", "dataset 'python:{m}:BatchRaises' failed to give samples 0..0: KeyError"),
    "NaN midway": ("NanMidway", "sample 21: dataset 'python:{m}:NanMidway': input 'x' holds NaN or Inf"),
}


@pytest.mark.parametrize("factory, phrase", BAD_DATASETS.values(), ids=BAD_DATASETS.keys())
def test_a_python_dataset_that_misbehaves_is_exit_2_naming_the_factory_and_the_sample(
        tmp_path: Path, capsys, factory: str, phrase: str) -> None:
    module = f"hostile_ds_{secrets.token_hex(4)}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(_FACTORIES.format(data=str(TINY / "data.npz"))))
    entry = {"type": "python", "factory": f"{module}:{factory}"}
    spec = _spec(entry, metrics=[{"name": "agree", "type": "agreement"}])
    spec["engine"]["batch_size"] = 16
    code, err = _run_spec(tmp_path, spec, capsys)
    assert code == 2, err
    assert phrase.format(m=module) in err and "Traceback" not in err


# ---------------------------------------------------------------- class 5: data checked for what the metric needs

BAD_LABELS = {
    "1-based labels": (Y + 1, "label 10 is not a class of the model's output, which has 10 classes (0..9)"),
    "negative labels": (np.where(np.arange(256) == 70, -1, Y), "label -1 is not a class"),
    "far too large": (Y + 1000, f"label {Y[0] + 1000} is not a class of the model's output"),
}


@pytest.mark.parametrize("labels, phrase", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_labels_outside_the_models_classes_are_refused_naming_the_first_bad_sample(
        tmp_path: Path, capsys, labels: np.ndarray, phrase: str) -> None:
    path = _npz(tmp_path, x=X, y=labels)
    code, err = _run_spec(tmp_path, _spec(_npz_entry(path)), capsys)
    first = int(np.argmax((labels < 0) | (labels >= 10)))
    assert code == 2, err
    assert f"sample {first}: metric 'top1' failed: metric 'top1': {phrase}" in err


def test_nan_in_the_calibration_dataset_names_the_calibration_dataset(tmp_path: Path, capsys) -> None:
    calib = X[:40].copy()
    calib[5, 1, 2, 3] = np.nan
    evaluation = _npz(tmp_path, "eval.npz", x=X, y=Y)
    calibration = _npz(tmp_path, "calib.npz", x=calib)
    code, err = _run_spec(tmp_path, _spec(_npz_entry(evaluation), _npz_entry(calibration, None)), capsys)
    assert code == 2, err
    assert f"sample 5: dataset '{calibration}': input 'x' holds NaN or Inf" in err


def test_nan_in_the_evaluation_dataset_names_it(tmp_path: Path, capsys) -> None:
    x = X.copy()
    x[77, 0, 0, 0] = np.inf
    path = _npz(tmp_path, "eval.npz", x=x, y=Y)
    code, err = _run_spec(tmp_path, _spec(_npz_entry(path)), capsys)
    assert code == 2 and f"sample 77: dataset '{path}': input 'x' holds NaN or Inf" in err


# ---------------------------------------------------------------- class 6: the metric contract

class _Scripted(Metric):
    """A per-sample metric whose score on sample ``bad`` is ``value`` (1.0 elsewhere)."""

    bounds = (0.0, 1.0)

    def __init__(self, value: Any, bad: int = 12, aggregate: Callable | None = None, shape: str = "flat"):
        self.name = "scripted"
        self.value, self.bad, self._aggregate, self.shape = value, bad, aggregate, shape
        self.seen = 0

    def score(self, outputs, labels):
        batch = len(next(iter(outputs.values())))
        rows: list[Any] = [1.0] * batch
        for j in range(batch):
            if self.seen + j == self.bad:
                rows[j] = self.value
        self.seen += batch
        return np.array(rows).reshape(batch, 1) if self.shape == "column" else rows

    def aggregate(self, entries):
        return super().aggregate(entries) if self._aggregate is None else self._aggregate(entries)


@dataclass
class Breach:
    metric: Callable[[], Metric]
    phrase: str
    sample: int | None = 12


BREACHES = {
    "NaN": Breach(lambda: _Scripted(float("nan")), "metric 'scripted' returned nan (a per-sample score must"),
    "Inf": Breach(lambda: _Scripted(float("inf")), "metric 'scripted' returned inf"),
    "a string": Breach(lambda: _Scripted("0.5"), "metric 'scripted' returned str entries (here '1.0')", 8),
    "None": Breach(lambda: _Scripted(None), "metric 'scripted' returned object entries (here None)"),
    "above its bounds": Breach(lambda: _Scripted(1.5), "returned 1.5, outside the bounds (0.0, 1.0) it declares"),
    "below its bounds": Breach(lambda: _Scripted(-0.25), "returned -0.25, outside the bounds"),
    "aggregate NaN": Breach(lambda: _Scripted(1.0, aggregate=lambda e: float("nan")),
                            "metric 'scripted': aggregate returned nan over", None),
    "aggregate string": Breach(lambda: _Scripted(1.0, aggregate=lambda e: "0.9"),
                               "metric 'scripted': aggregate returned the string '0.9'", None),
    "aggregate raises": Breach(lambda: _Scripted(1.0, aggregate=lambda e: 1 / 0),
                               "metric 'scripted': aggregate failed: ZeroDivisionError", None),
}


@pytest.mark.parametrize("case", BREACHES.values(), ids=BREACHES.keys())
def test_a_metric_that_breaks_its_contract_is_refused_with_its_name_and_the_sample(case: Breach) -> None:
    engine = Engine(ArrayDataset({"x": X[:32]}, Y[:32]), [case.metric()], batch_size=8, progress=False)
    with pytest.raises(DataError, match="scripted") as info:
        engine.evaluate(conv_net())
    assert case.phrase in str(info.value)
    assert info.value.sample_index == case.sample


def test_a_column_of_scores_is_one_score_per_sample() -> None:
    engine = Engine(ArrayDataset({"x": X[:16]}, Y[:16]), [_Scripted(0.5, shape="column")], batch_size=8,
                    progress=False)
    assert engine.evaluate(conv_net()).values["scripted"] == pytest.approx((15 + 0.5) / 16)


def test_scores_on_the_bounds_are_fine() -> None:
    engine = Engine(ArrayDataset({"x": X[:16]}, Y[:16]), [_Scripted(0.0)], batch_size=8, progress=False)
    assert engine.evaluate(conv_net()).values["scripted"] == pytest.approx(15 / 16)
