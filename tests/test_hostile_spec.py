"""Hostile specs (issue 17): every fault is exit 2 naming where, for ``validate`` and ``run`` alike.

Classes 1 (output file names), 4 (input faults that crashed), 6 (``maximal_drop: NaN``)
and 7 (resources above the machine) on the spec side; one table per class.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import plugins  # noqa: F401  (registers TagModel)
from aaq.cli import main
from aaq.errors import SpecError
from aaq.spec.coerce import coerce_integers, value_problems
from aaq.spec.validate import load_spec
from helpers import base_spec


def _spec_with(path: str, value) -> dict:
    spec = base_spec()
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return spec


def _validate(tmp_path: Path, capsys, text: str | bytes) -> tuple[int, str]:
    path = tmp_path / "spec.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- class 1: the output file name

BAD_NAMES = {
    "parent directory": "../../pwned",
    "absolute path": "/tmp/pwned",
    "separator": "a/b",
    "backslash": "a\\b",
    "NUL": "a\x00b",
    "newline": "a\nb",
    "dot": ".",
    "dot dot": "..",
    "hidden": ".hidden",
    "too long": "x" * 241,
    "too many bytes": "\u00e9" * 150,
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_model_name_that_is_not_a_plain_file_name_is_refused_by_validate_and_run(
        tmp_path: Path, capsys, name: str) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_spec_with("model.name", name)))
    assert main(["validate", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "Traceback" not in err
    out = tmp_path / "out"
    assert main(["run", str(spec_path), "--output-dir", str(out), "--no-progress"]) == 2
    assert "model.name" in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.parent.glob("pwned*")) and not Path("/tmp/pwned.quantized.onnx").exists()


@pytest.mark.parametrize("name", ["tiny", "my model v2", "r\u00e9seau", "x" * 200, "a.b-c_d"])
def test_plain_file_names_are_accepted(name: str) -> None:
    assert load_spec(_spec_with("model.name", name)).model_name == name


# ---------------------------------------------------------------- class 4: input faults, exit 2 with where

@dataclass
class BadText:
    text: str | bytes | Callable[[], str | bytes]
    phrase: str


BAD_TEXTS = {
    "UTF-16": BadText(json.dumps(base_spec()).encode("utf-16"), "UTF-16 text; save the spec as UTF-8"),
    "latin-1": BadText('{"model": {"name": "r\u00e9seau"}}'.encode("latin-1"), ":1:22: byte 0xe9 is not UTF-8"),
    "nested too deep for the parser": BadText(lambda: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "nested deeper than the limit": BadText(lambda: '{"a": ' + "[" * 200 + "]" * 200 + "}", "nested deeper than 64"),
    "an integer with 5000 digits": BadText(lambda: '{"a": ' + "1" * 5000 + "}", "an integer has too many digits"),
    "NaN": BadText('{"model": {"path": "m.onnx"}, "x": NaN}', "x: must be a finite number, got NaN"),
    "Infinity": BadText('{"x": [1, -Infinity]}', "x[1]: must be a finite number, got -Infinity"),
    "1e999": BadText('{"x": 1e999}', "x: must be a finite number, got Infinity"),
    "NUL in a string": BadText('{"model": {"path": "m\\u0000.onnx"}}', "model.path: 'm\\x00.onnx' holds a NUL"),
    "lone surrogate": BadText('{"model": {"path": "\\ud800"}}', "model.path: '\\ud800' is not valid Unicode"),
    "not an object": BadText("[1, 2]", "a spec is a JSON object, got list"),
    "empty file": BadText("", ":1:1: Expecting value"),
}


@pytest.mark.parametrize("case", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_a_spec_file_that_is_not_a_spec_is_exit_2_with_where(tmp_path: Path, capsys, case: BadText) -> None:
    text = case.text() if callable(case.text) else case.text
    code, err = _validate(tmp_path, capsys, text)
    assert code == 2, err
    assert case.phrase in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("where", ["directory", "device"])
def test_a_spec_path_that_is_not_a_file_is_exit_2(tmp_path: Path, capsys, where: str) -> None:
    path = tmp_path if where == "directory" else Path("/dev/zero")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert ("cannot read spec" in err or "larger than 64 MiB" in err) and "Traceback" not in err


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path, capsys) -> None:
    code, err = _validate(tmp_path, capsys, b"\xef\xbb\xbf" + json.dumps(base_spec()).encode())
    assert code == 0, err


def test_a_hundred_thousand_faults_print_a_bounded_message(tmp_path: Path, capsys) -> None:
    spec = base_spec()
    spec["engine"]["x"] = [float("nan")] * 100_000
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "100000 problems" in err and "... and 99950 more" in err
    assert len(err) < 50 * 600
    error = SpecError([("a", "x" * 10_000)] * 3)
    assert len(str(error)) < 3 * 600


WHOLE_FLOATS = {
    "engine.batch_size": ("engine.batch_size", 32.0, lambda s: s.resolved["engine"]["batch_size"]),
    "algorithm param": ("compression.algorithms.0.params", {"repeat": 2.0},
                        lambda s: s.resolved["compression"]["algorithms"][0]["params"]["repeat"]),
    "metric option": ("engine.metrics.0", {"name": "top1", "type": "accuracy", "top_k": 1.0},
                      lambda s: s.resolved["engine"]["metrics"][0]["top_k"]),
}


@pytest.mark.parametrize("path, value, read", WHOLE_FLOATS.values(), ids=WHOLE_FLOATS.keys())
def test_a_whole_number_float_where_an_integer_is_expected_becomes_an_int(path, value, read) -> None:
    got = read(load_spec(_spec_with(path, value)))
    assert got == int(got) and type(got) is int


def test_a_whole_float_runs_end_to_end(tmp_path: Path, capsys) -> None:
    spec = _spec_with("engine.batch_size", 32.0)
    spec["compression"]["algorithms"][0]["params"]["repeat"] = 2.0
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0, \
        capsys.readouterr().err


def test_a_fractional_float_stays_a_schema_error() -> None:
    with pytest.raises(SpecError, match="engine.batch_size: must be of type integer, got 2.5"):
        load_spec(_spec_with("engine.batch_size", 2.5))


def test_coerce_integers_follows_refs_items_and_additional_properties() -> None:
    schema = {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {
        "a": {"$ref": "#/$defs/n"}, "b": {"type": "array", "items": {"type": "integer"}},
        "c": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}},
        "d": {"type": "number"}, "e": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}
    given = {"a": 1.0, "b": [2.0, 3.0], "c": {"x": 4.0, "y": None}, "d": 5.0, "e": 6.0, "f": 7.0}
    before = copy.deepcopy(given)
    out = coerce_integers(given, schema)
    assert out == {"a": 1, "b": [2, 3], "c": {"x": 4, "y": None}, "d": 5.0, "e": 6, "f": 7.0}
    assert [type(out[k]) for k in "adef"] == [int, float, int, float]
    assert given == before and type(given["a"]) is float


# ---------------------------------------------------------------- class 6: NaN where a number is expected

NON_FINITE = {
    "maximal_drop NaN (file)": '{"x": {"maximal_drop": NaN}}',
    "maximal_drop Infinity (file)": '{"x": {"maximal_drop": Infinity}}',
}


@pytest.mark.parametrize("text", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_nan_and_infinity_in_a_spec_file_are_spec_errors(tmp_path: Path, capsys, text: str) -> None:
    code, err = _validate(tmp_path, capsys, text)
    assert code == 2 and "x.maximal_drop: must be a finite number" in err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_in_a_dict_spec_is_a_spec_error_with_its_path(value: float) -> None:
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "AccuracyAwareQuantization",
                                          "params": {"maximal_drop": value}}]
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.problems[0][0] == "compression.algorithms[0].params.maximal_drop"
    assert "must be a finite number" in info.value.problems[0][1]


# ---------------------------------------------------------------- class 7: resources above the machine

def test_intra_op_threads_above_the_machine_is_refused_with_the_limit(tmp_path: Path, capsys) -> None:
    import os

    from aaq.engine.session import max_threads, session_options

    assert max_threads() == os.cpu_count()
    for threads in (max_threads() + 1, 1_000_000):
        problems = value_problems(_spec_with("engine.intra_op_threads", threads))
        assert problems == [("engine.intra_op_threads",
                             f"must be <= {max_threads()}, the logical CPUs of this machine (0 lets ONNX "
                             f"Runtime choose), got {threads}")]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(_spec_with("engine.intra_op_threads", 1_000_000)))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert f"engine.intra_op_threads: must be <= {max_threads()}" in capsys.readouterr().err
    assert value_problems(_spec_with("engine.intra_op_threads", max_threads())) == []
    from aaq.errors import BadInputError

    with pytest.raises(BadInputError, match=f"to {max_threads()} .the logical CPUs"):
        session_options(1_000_000)
