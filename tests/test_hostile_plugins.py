"""A broken plugin breaks only itself (issue 17, class 8): listed as broken with its reason, refused
only when a spec names it. Entry points are faked by monkeypatching ``importlib.metadata``."""
from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

import aaq.algorithms.base
import aaq.pipeline
import aaq.spec.validate
import plugins  # noqa: F401  (registers TagModel)
from aaq import Algorithm
from aaq.algorithms.base import algorithms, check_algorithm_class
from aaq.cli import main
from aaq.errors import PluginError, SpecError
from aaq.registry import Registry
from helpers import base_spec


class _WrongDefault(Algorithm):
    @dataclass(frozen=True)
    class Params:
        times: int = 3

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"times": {"type": "integer", "default": 4}}}

    def run(self, state, engine):
        return state


class _NotAnAlgorithm:
    pass


def _raise(exc: BaseException) -> Callable[[], Any]:
    def load():
        raise exc
    return load


@dataclass(frozen=True)
class _Dist:
    name: str


@dataclass
class _EntryPoint:
    name: str
    value: str
    load: Callable[[], Any]
    dist: _Dist = _Dist("aaq-hostile-plugin")


@dataclass
class Broken:
    load: Callable[[], Any]
    reason: str


BROKEN = {
    "import error": Broken(_raise(ImportError("No module named 'numpyy'")), "No module named 'numpyy'"),
    "raises at import": Broken(_raise(ZeroDivisionError("division by zero")), "ZeroDivisionError"),
    "sys.exit at import": Broken(_raise(SystemExit(3)), "SystemExit"),
    "attribute missing": Broken(_raise(AttributeError("module 'x' has no attribute 'Y'")), "has no attribute"),
    "schema disagrees with Params": Broken(lambda: _WrongDefault, "schema default 4 != dataclass default 3"),
    "not an Algorithm": Broken(lambda: _NotAnAlgorithm, "must be a subclass of aaq.Algorithm"),
}


@pytest.fixture
def fresh_algorithms(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], Any]], Registry]:
    """A fresh algorithm registry (TagModel plus one faked installed plugin 'Hostile'), used by aaq."""

    def make(load: Callable[[], Any]) -> Registry:
        points = [_EntryPoint("Hostile", "aaq_hostile_plugin:Hostile", load)]
        real = importlib.metadata.entry_points
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group=None, **kw: points if group == "aaq.algorithms" else real(group=group))
        registry = Registry("algorithm", "aaq.algorithms", builtins="aaq.algorithms", check=check_algorithm_class)
        registry.register("TagModel", algorithms.get("TagModel"), source="module plugins")
        monkeypatch.setattr(aaq.algorithms.base, "algorithms", registry)
        monkeypatch.setattr(aaq.pipeline, "algorithms", registry)
        monkeypatch.setattr(aaq.spec.validate, "algorithms", registry)
        return registry

    return make


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_installed_plugin_breaks_only_itself(tmp_path: Path, capsys, fresh_algorithms,
                                                      case: Broken) -> None:
    registry = fresh_algorithms(case.load)
    assert registry.names() == ["TagModel"]
    assert "Hostile" not in registry
    error = registry.broken()["Hostile"]
    assert case.reason in error.reason and error.source == "distribution aaq-hostile-plugin"
    with pytest.raises(PluginError, match=r"plugin 'Hostile' \(from distribution aaq-hostile-plugin\)"):
        registry.get("Hostile")

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line, = [line for line in out.splitlines() if line.split()[:1] == ["Hostile"]]
    assert "distribution aaq-hostile-plugin  BROKEN: " in line and case.reason in line

    good = tmp_path / "good.json"
    good.write_text(json.dumps(base_spec()))
    assert main(["validate", str(good)]) == 0, capsys.readouterr().err
    assert main(["run", str(good), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0

    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "Hostile"}]
    named = tmp_path / "named.json"
    named.write_text(json.dumps(spec))
    capsys.readouterr()
    for command in (["validate", str(named)], ["run", str(named), "--output-dir", str(tmp_path / "o2")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "compression.algorithms[0].name: the algorithm 'Hostile' is installed but broken" in err
        assert case.reason in err and "Traceback" not in err


def test_an_installed_plugin_that_takes_a_builtin_name_is_broken_and_the_builtin_stays(
        fresh_algorithms) -> None:
    registry = fresh_algorithms(lambda: _WrongDefault)
    registry.register("Hostile2", plugins.TagModel, source="aaq")
    points = [_EntryPoint("Hostile2", "x:Y", lambda: plugins.DeclareTarget)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.metadata, "entry_points", lambda group=None, **kw: points)
        registry.load_entry_points()
    assert registry.get("Hostile2") is plugins.TagModel
    assert "already taken by aaq" in registry.broken()["Hostile2"].reason


def test_an_unknown_name_is_still_a_spec_error_with_the_nearest_name(fresh_algorithms) -> None:
    registry = fresh_algorithms(lambda: _WrongDefault)
    with pytest.raises(SpecError, match="did you mean 'TagModel'"):
        registry.get("TagModle", "compression.algorithms[0].name")
