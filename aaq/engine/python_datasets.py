"""The ``python`` dataset type: a user's factory (and optional transform) named in the spec.

Separate from the array datasets because everything here runs user code: every
fault it raises names the factory, the transform and the item. Importing this
module registers the built-in dataset types (it is the registry's builtins module).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from aaq.engine.datasets import Dataset, Sample, register_dataset
from aaq.errors import BadInputError, DataError, PluginError


@register_dataset("python")
class PythonDataset:
    """A dataset made by user code: ``factory`` is ``"module:callable"``, called with ``kwargs``.

    With ``transform`` (``"module:callable"``, NNCF's ``transform_fn``) the factory may
    return the user's own loader of raw items (anything with ``__len__`` and
    ``__getitem__``); each item is turned into a sample by the transform.
    """

    schema: ClassVar[dict] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["factory"],
        "properties": {
            "factory": {"type": "string", "pattern": "^[A-Za-z_][\\w.]*:[A-Za-z_][\\w.]*$",
                        "description": "module:callable returning a Dataset; a module beside the spec works"},
            "kwargs": {"type": "object", "default": {}},
            "transform": {"type": ["string", "null"], "pattern": "^[A-Za-z_][\\w.]*:[A-Za-z_][\\w.]*$",
                          "default": None,
                          "description": "module:callable turning one item of the factory's dataset into a "
                                         "Sample, a dict {input name: array} or (inputs, label)"},
        },
    }

    @classmethod
    def from_spec(cls, options: dict, base_dir: Path) -> Dataset:
        ref = options["factory"]
        transform = options.get("transform")
        dataset = call_factory(ref, base_dir, options.get("kwargs", {}), "dataset")
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise PluginError(f"the factory must return a Dataset (__len__ and __getitem__), "
                              f"got {type(dataset).__name__}", ref)
        if transform is not None:
            dataset = TransformedDataset(dataset, import_factory(transform, base_dir), transform)
        return FactoryDataset(dataset, ref)


class FactoryDataset:
    """A dataset made by a factory, named after it in every error; reads pass straight through.

    Its length is read once, here: a ``__len__`` that raises or is not a count is the
    factory's fault, said before any inference.
    """

    def __init__(self, dataset: Any, ref: str) -> None:
        try:
            size = len(dataset)
        except Exception as exc:
            raise PluginError(f"len() of the dataset raised {type(exc).__name__}: {exc}", ref) from None
        if not isinstance(size, int) or size < 0:
            raise PluginError(f"len() of the dataset must be a count, got {size!r}", ref)
        self.dataset = dataset
        self.source = f"python:{ref}"
        self._len = size
        if callable(getattr(dataset, "batch", None)):
            self.batch = dataset.batch

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # anything else the user's object offers
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class TransformedDataset:
    """Raw items of a user's loader, each turned into a ``Sample`` by ``transform`` when it is read."""

    def __init__(self, items: Any, transform: Callable[[Any], Any], name: str) -> None:
        self.items, self.transform, self.name = items, transform, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[int(index)]
        try:
            made = self.transform(item)
        except BadInputError:
            raise
        except Exception as exc:  # user code: name the item it failed on
            raise DataError(f"the transform {self.name!r} failed on item {int(index)} ({_short(item)}): "
                            f"{type(exc).__name__}: {exc}", int(index)) from exc
        if isinstance(made, Sample):
            return made
        if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], dict):
            return Sample({k: np.asarray(v) for k, v in made[0].items()}, made[1])
        if isinstance(made, dict):
            return Sample({k: np.asarray(v) for k, v in made.items()})
        raise DataError(f"the transform {self.name!r} returned {type(made).__name__} for item {int(index)}; "
                        f"expected a Sample, a dict {{input name: array}} or (inputs, label)", int(index))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def call_factory(ref: str, base_dir: Path, kwargs: dict, what: str) -> Any:
    """What the user's ``module:callable`` returns for ``kwargs``; whatever it raises names it (``what`` factory)."""
    factory = import_factory(ref, base_dir)
    try:
        return factory(**kwargs)
    except BadInputError:
        raise
    except Exception as exc:
        raise PluginError(f"the {what} factory raised {type(exc).__name__}: {exc}", ref) from exc


def import_factory(ref: str, base_dir: Path) -> Callable[..., Any]:
    """The callable named ``"module:attr"``, importing ``module`` with ``base_dir`` on ``sys.path``.

    ``base_dir`` is on the path only while importing, so a module beside the spec
    works without the spec's folder staying importable afterwards.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise BadInputError(f"factory {ref!r}: expected 'module:callable'")
    entry = str(Path(base_dir).resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} (looked in {entry} and on sys.path): "
                          f"{exc}", ref) from None
    except Exception as exc:
        raise PluginError(f"importing module {module_name!r} raised {type(exc).__name__}: {exc}",
                          ref) from exc
    finally:
        if added:
            sys.path.remove(entry)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"module {module_name!r} has no attribute {attr!r}", ref)
        obj = getattr(obj, part)
    if not callable(obj):
        raise PluginError(f"{attr!r} in module {module_name!r} is not callable", ref)
    return obj
