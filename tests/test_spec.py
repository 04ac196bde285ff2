"""Spec loading and validation: every fault reported with its JSON path, defaults filled on a copy."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import plugins  # noqa: F401  (registers TagModel)
from aaq import Algorithm, PluginError, SpecError, register_algorithm
from aaq.spec.loader import parse_spec_text, strip_comments
from aaq.schemas.tools import fill_defaults
from aaq.spec.validate import load_spec
from helpers import TINY, base_spec

def _with(path: str, value, spec=None):
    spec = copy.deepcopy(spec or base_spec())
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return spec


_DELETE = object()


@dataclass
class Bad:
    spec: dict
    path: str
    phrase: str


BAD_SPECS = {
    "unknown algorithm": Bad(_with("compression.algorithms.0.name", "TagModle"),
                             "compression.algorithms[0].name", "did you mean 'TagModel'"),
    "unknown param": Bad(_with("compression.algorithms.0.params", {"valeu": "x"}),
                         "compression.algorithms[0].params", "unknown key 'valeu' (did you mean 'value'?)"),
    "wrong type": Bad(_with("compression.algorithms.0.params", {"repeat": "2"}),
                      "compression.algorithms[0].params.repeat", "must be of type integer, got '2'"),
    "out of range": Bad(_with("compression.algorithms.0.params", {"repeat": 9}),
                        "compression.algorithms[0].params.repeat", "must be <= 5, got 9"),
    "missing section": Bad(_with("engine", _DELETE), "", "missing required key 'engine'"),
    "unknown top-level key": Bad(_with("engnie", {}), "", "unknown key 'engnie' (did you mean 'engine'?)"),
    "bad engine option": Bad(_with("engine.batch_size", 0), "engine.batch_size", "must be >= 1, got 0"),
    "unknown metric type": Bad(_with("engine.metrics.0.type", "acuracy"), "engine.metrics[0].type",
                               "did you mean 'accuracy'"),
    "unknown dataset type": Bad(_with("engine.dataset.type", "nzp"), "engine.dataset.type",
                                "did you mean 'npz'"),
    "bad dataset option": Bad(_with("engine.dataset.path", 3), "engine.dataset.path",
                              "must be of type string"),
    "no algorithms": Bad(_with("compression.algorithms", []), "compression.algorithms",
                         "must have at least 1 item"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_bad_spec_names_path_and_fault(case: Bad) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(case.spec)
    assert (case.path, ) in [(p,) for p, _ in info.value.problems], info.value.problems
    messages = [m for p, m in info.value.problems if p == case.path]
    assert any(case.phrase in m for m in messages), messages


def test_all_faults_reported_at_once() -> None:
    spec = _with("compression.algorithms.0.params", {"repeat": 0, "valeu": 1})
    spec = _with("engine.batch_size", "8", spec)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    paths = [p for p, _ in info.value.problems]
    assert "engine.batch_size" in paths
    assert "compression.algorithms[0].params.repeat" in paths
    assert "compression.algorithms[0].params" in paths
    assert "3 problems" in str(info.value)


@pytest.mark.parametrize("text, where", [
    ('{"model": {}\n  "engine": 1}', "spec.json:2:3"),
    ('{"a": 1,\n\n   }', "spec.json:3:4"),
    ('{"a": /* never closed\n 1}', "spec.json:1:7"),
], ids=["missing comma", "trailing comma", "unterminated comment"])
def test_malformed_json_gives_line_and_column(text: str, where: str) -> None:
    with pytest.raises(SpecError, match=where):
        parse_spec_text(text, "spec.json")


def test_duplicate_keys_are_errors_with_their_path() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec_text('{"engine": {"batch_size": 1, "batch_size": 2}, "x": 1, "x": 2}')
    assert sorted(p for p, _ in info.value.problems) == ["engine.batch_size", "x"]


def test_comments_are_stripped_but_strings_kept() -> None:
    text = '/* head */ {"url": "http://a//b", "c": "/* not a comment */"} // tail'
    assert parse_spec_text(text) == {"url": "http://a//b", "c": "/* not a comment */"}
    assert len(strip_comments(text)) == len(text)


def test_defaults_filled_on_a_copy_and_paths_resolved(tmp_path: Path) -> None:
    raw = base_spec()
    raw["model"]["path"] = "model.onnx"
    spec_file = tmp_path / "sub" / "spec.json"
    spec_file.parent.mkdir()
    (tmp_path / "sub" / "model.onnx").write_bytes((TINY / "model.onnx").read_bytes())
    spec_file.write_text("// a comment\n" + json.dumps(raw))
    spec = load_spec(spec_file)
    assert spec.resolved["model"]["path"] == str(tmp_path / "sub" / "model.onnx")
    assert spec.resolved["compression"]["algorithms"][0]["params"] == {"key": "aaq.tag", "value": "v", "repeat": 1}
    assert spec.resolved["engine"]["batch_size"] == 1
    assert spec.resolved["compression"]["target_device"] == "CPU"
    raw_again = base_spec()
    load_spec(raw_again)
    assert raw_again == base_spec(), "validation must not change its input"


def test_fill_defaults_follows_refs_and_nesting() -> None:
    schema = {"$defs": {"inner": {"type": "object", "properties": {"a": {"default": 1}}}},
              "type": "object", "properties": {"x": {"$ref": "#/$defs/inner", "default": {}},
                                               "y": {"type": "array", "items": {"$ref": "#/$defs/inner"}}}}
    assert fill_defaults({"y": [{}, {"a": 5}]}, schema) == {"x": {"a": 1}, "y": [{"a": 1}, {"a": 5}]}


def test_semantic_check_finds_missing_files_and_reused_metric_names() -> None:
    spec = _with("model.path", "/nonexistent/model.onnx")
    spec["engine"]["metrics"].append({"name": "top1", "type": "accuracy", "top_k": 2})
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    problems = info.value.problems
    assert ("model.path", "file not found: /nonexistent/model.onnx") in problems
    assert any(p == "engine.metrics[1].name" and "used twice" in m for p, m in problems)


def _algorithm_class(schema_props: dict, params_cls: type) -> type:
    return type("Plugin", (Algorithm,), {
        "Params": params_cls, "run": lambda self, state, engine: state,
        "schema": {"type": "object", "additionalProperties": False, "properties": schema_props}})


@dataclass(frozen=True)
class _AlphaParams:
    alpha: float = 0.5


@pytest.mark.parametrize("name, props, phrase", [
    ("BadDefault", {"alpha": {"type": "number", "default": 0.1}}, "schema default 0.1 != dataclass default 0.5"),
    ("ExtraKey", {"alpha": {"default": 0.5}, "beta": {"default": 1}}, "only in schema ['beta']"),
    ("BadSchema", {"alpha": {"type": "no-such-type", "default": 0.5}}, "not a valid JSON Schema"),
])
def test_plugin_whose_params_and_schema_disagree_is_refused(name: str, props: dict, phrase: str) -> None:
    with pytest.raises(PluginError) as info:
        register_algorithm(name)(_algorithm_class(props, _AlphaParams))
    assert f"plugin {name!r}" in str(info.value) and phrase in str(info.value)
