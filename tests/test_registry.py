"""Registries: names, sources, refusal of clashes, lazy loading of built-ins."""
from __future__ import annotations

import pytest

from aaq.errors import PluginError, SpecError
from aaq.registry import Registry


class _A:
    pass


class _B:
    pass


def fresh() -> Registry:
    return Registry("widget", "aaq.test-widgets", builtins="aaq.errors")


def test_register_get_and_source() -> None:
    reg = fresh()
    reg.register("A", _A, source="module x")
    reg.register("A", _A, source="module x")  # the same object twice is harmless
    assert reg.get("A") is _A and reg.source("A") == "module x" and reg.names() == ["A"]


def test_a_name_cannot_be_taken_twice() -> None:
    reg = fresh()
    reg.register("A", _A)
    with pytest.raises(PluginError, match="already taken by aaq"):
        reg.register("A", _B, source="module y")


def test_unknown_name_suggests_the_nearest_and_keeps_the_json_path() -> None:
    reg = fresh()
    reg.register("Alpha", _A)
    with pytest.raises(SpecError) as info:
        reg.get("Alpah", "compression.algorithms[0].name")
    (path, message), = info.value.problems
    assert path == "compression.algorithms[0].name"
    assert "unknown widget 'Alpah'; did you mean 'Alpha'?" in message


def test_check_runs_at_registration_and_names_the_source() -> None:
    def check(name, obj):
        if obj is _B:
            raise PluginError("B is not allowed", name)

    reg = Registry("widget", "aaq.test-widgets", builtins="aaq.errors", check=check)
    reg.register("A", _A)
    with pytest.raises(PluginError, match=r"plugin 'Bee' \(from module z\): B is not allowed"):
        reg.register("Bee", _B, source="module z")


def test_builtin_algorithms_load_on_first_lookup() -> None:
    from aaq.algorithms.base import algorithms

    assert "DefaultQuantization" in algorithms.names()
    assert algorithms.source("DefaultQuantization") == "aaq"
