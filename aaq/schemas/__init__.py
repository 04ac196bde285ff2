"""JSON Schemas shipped as package data: the envelope and each built-in algorithm's params."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """A fresh copy of ``<name>.schema.json`` (callers may not share the dict)."""
    return json.loads(_load(name))
