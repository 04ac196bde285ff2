"""Datasets: map-style access to model inputs and labels, the built-in types and their registry.

Map-style on purpose: subsets (``stat_subset_size``, ``ranking_subset_size``, ...) are
sorted index arrays drawn from a seeded generator, and a dataset only has to answer
"give me sample i". A dataset that can also answer "give me these samples, stacked"
(``batch``) lets the engine feed ONNX Runtime without a per-sample Python loop.

A dataset whose samples are whole model feeds (``"batched": true`` on any dataset
entry; ``batched = True`` on a dataset object) is run one sample per session run,
as given, never stacked or padded: a streaming model whose first axis is time and
whose recurrent state is an input, a model without a batch axis, inputs of a
different size in every sample.
"""
from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from aaq.engine.npz import StoredArray, stored_member
from aaq.errors import BadInputError, DataError, PluginError
from aaq.params import check_options_schema
from aaq.registry import Registry

logger = logging.getLogger(__name__)

Labels = Union[list, np.ndarray, None]


@dataclass(frozen=True)
class Sample:
    """One sample: model inputs by input name, each WITHOUT the batch axis, and its label (or None).

    In a batched dataset (``is_batched``) the inputs are a complete feed instead, run as given.
    """

    inputs: dict[str, np.ndarray]
    label: Any = None


@runtime_checkable
class Dataset(Protocol):
    """What the engine reads. Optional fast path, used when present::

        batch(indices: np.ndarray) -> (dict[str, np.ndarray], labels)

    giving the inputs of ``indices`` stacked along a new first axis and their labels
    (a list or an array aligned with ``indices``, or None when there are none).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def check_dataset_class(name: str, obj: object) -> None:
    """Refuse, at registration, a dataset plugin without a valid ``schema`` and a ``from_spec``."""
    if not isinstance(obj, type):
        raise PluginError(f"a dataset plugin must be a class, got {obj!r}", name)
    check_plugin_schema(name, obj)


def check_plugin_schema(name: str, cls: type) -> None:
    """Shared by the dataset and metric registries: options schema + ``from_spec`` classmethod."""
    schema = getattr(cls, "schema", None)
    if not isinstance(schema, dict):
        raise PluginError("the class must define 'schema', the JSON Schema (a dict) of its options", name)
    check_options_schema(name, schema)
    if not callable(getattr(cls, "from_spec", None)):
        raise PluginError("the class must define the classmethod 'from_spec'", name)


datasets: Registry[type] = Registry("dataset", "aaq.datasets", builtins="aaq.engine.python_datasets",
                                    check=check_dataset_class)


def register_dataset(name: str) -> Callable[[type], type]:
    """Class decorator: make the dataset usable from a spec as ``{"type": name, ...}``."""
    return datasets.decorator(name)


def plugin_options(entry: dict, schema: dict, drop: Sequence[str]) -> dict:
    """A spec entry's options (every key but ``drop``) with top-level schema defaults filled, on a copy.

    The spec layer fills defaults already; doing it here too keeps ``from_spec`` usable
    on a hand-written engine section.
    """
    options = {k: v for k, v in entry.items() if k not in drop}
    for key, prop in schema.get("properties", {}).items():
        if key not in options and "default" in prop:
            options[key] = copy.deepcopy(prop["default"])
    return options


DATASET_KEYS = ("type", "batched")
"""Keys every dataset entry may have, whatever its type; the type's own schema checks the rest."""


def dataset_from_spec(entry: dict, base_dir: Path, json_path: str = "engine.dataset") -> Dataset:
    """The dataset of a spec entry ``{"type": ..., "batched": ..., options}``; an unknown type names ``json_path``.

    The dataset carries its ``DatasetRecipe`` (``recipe_of``), so that an executor's
    workers can load it themselves rather than be sent its samples.
    """
    cls = datasets.get(entry.get("type", ""), f"{json_path}.type")
    recipe = DatasetRecipe(cls, plugin_options(entry, cls.schema, DATASET_KEYS), str(Path(base_dir).resolve()),
                           bool(entry.get("batched", False)), uuid.uuid4().hex)
    return recipe.load(attach=True)


@dataclass(frozen=True)
class DatasetRecipe:
    """How to load a spec-built dataset again elsewhere: its class, the spec's options, the spec's folder.

    ``token`` names one load on the driver (one run's engine): a worker that loads the
    recipe keeps the dataset under it for the tasks of that run. The paths must be
    readable where the worker runs (the same machine, or a shared file system).
    """

    cls: type
    options: dict
    base_dir: str
    batched: bool
    token: str

    def load(self, attach: bool = False) -> Dataset:
        """The dataset; ``attach``: it carries this recipe (``recipe_of``), a wrapper around it if needed."""
        dataset = self.cls.from_spec(copy.deepcopy(self.options), Path(self.base_dir))
        if self.batched:
            dataset = BatchedDataset(dataset)
        if attach:
            try:
                setattr(dataset, RECIPE_ATTRIBUTE, self)
            except (AttributeError, TypeError):  # __slots__ or a read-only object: it is shipped as samples
                logger.debug("dataset %s cannot carry its recipe: an executor ships its samples",
                             type(dataset).__name__)
        return dataset


RECIPE_ATTRIBUTE = "_aaq_recipe"


def recipe_of(dataset: Any) -> DatasetRecipe | None:
    """The recipe a spec-built dataset carries; None for a dataset made in Python (``ArrayDataset(...)``)."""
    recipe = getattr(dataset, RECIPE_ATTRIBUTE, None)
    return recipe if isinstance(recipe, DatasetRecipe) else None


def is_batched(dataset: Any) -> bool:
    """Whether every sample of ``dataset`` is a complete model feed, run as given (``batched = True``)."""
    return bool(getattr(dataset, "batched", False))


class BatchedDataset:
    """``dataset``'s samples as complete feeds: one session run per sample, never stacked or padded.

    What ``"batched": true`` on a spec's dataset entry makes of any dataset; a
    dataset class of one's own may say ``batched = True`` instead.
    """

    batched = True

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[index]


class SampleList:
    """Samples held in a list (what a worker process is sent of a batched dataset)."""

    def __init__(self, samples: Sequence[Sample], batched: bool = False) -> None:
        self.samples = list(samples)
        self.batched = batched

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class ArrayDataset:
    """In-memory arrays whose first axis is the sample axis; slicing is the batching."""

    def __init__(self, inputs: dict[str, np.ndarray | StoredArray], labels: np.ndarray | list | None = None,
                 source: str = "arrays") -> None:
        if not inputs:
            raise DataError(f"{source}: a dataset needs at least one input array")
        lengths = {name: (np.shape(a)[0] if np.ndim(a) else None) for name, a in inputs.items()}
        if labels is not None:
            lengths["labels"] = len(labels) if np.ndim(labels) else None
        if None in lengths.values() or len(set(lengths.values())) != 1:
            sizes = ", ".join(f"{k}: {v if v is not None else 'a scalar'}" for k, v in lengths.items())
            raise DataError(f"{source}: every array needs the same number of samples on its first axis, "
                            f"got {sizes}")
        # C-contiguous once here, so that every contiguous slice fed to ONNX Runtime is a view.
        # Rows read from a file (StoredArray) come out contiguous already.
        self.inputs = {name: a if isinstance(a, StoredArray) else np.ascontiguousarray(a)
                       for name, a in inputs.items()}
        self.labels = labels
        self.source = source
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Sample:
        if not -self._len <= index < self._len:
            raise DataError(f"index out of range for {self.source} ({self._len} samples)", index)
        label = None if self.labels is None else self.labels[index]
        return Sample({name: a[index] for name, a in self.inputs.items()}, label)

    def batch(self, indices: np.ndarray) -> tuple[dict[str, np.ndarray], Labels]:
        """A view for a run of consecutive indices, a gathered copy otherwise."""
        n = len(indices)
        if n and indices[-1] - indices[0] == n - 1 and (n == 1 or bool(np.all(np.diff(indices) == 1))):
            sel: slice | np.ndarray = slice(int(indices[0]), int(indices[0]) + n)
        else:
            sel = np.asarray(indices)
        inputs = {name: a[sel] for name, a in self.inputs.items()}
        if self.labels is None:
            return inputs, None
        if isinstance(self.labels, np.ndarray):
            return inputs, self.labels[sel]
        return inputs, [self.labels[int(i)] for i in indices]


@register_dataset("npz")
class NpzDataset(ArrayDataset):
    """Arrays of an ``.npz`` file: ``inputs`` maps each model input name to an array key.

    Inputs stored uncompressed (``np.savez``) are read from the file batch by batch, so
    memory does not grow with the number of samples. A compressed member would have to
    be decompressed again for every batch, so it is read into memory once instead
    (logged); labels are always read into memory.
    """

    schema: ClassVar[dict] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path", "inputs"],
        "properties": {
            "path": {"type": "string", "format": "path", "description": "the .npz file, relative to the spec"},
            "inputs": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"},
                       "description": "model input name -> array key; first axis = samples"},
            "labels": {"type": ["string", "null"], "default": None, "description": "array key of the labels"},
        },
    }

    @classmethod
    def from_spec(cls, options: dict, base_dir: Path) -> "NpzDataset":
        path = Path(base_dir) / options["path"]
        return cls.load(path, options["inputs"], options.get("labels"))

    @classmethod
    def load(cls, path: Path, inputs: dict[str, str], labels: str | None = None) -> "NpzDataset":
        """Read ``path``; a missing file or key names both."""
        try:
            archive = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise BadInputError(f"dataset file {str(path)!r} does not exist") from None
        except Exception as exc:  # zipfile, zlib and numpy each raise their own types for a broken file
            raise DataError(f"dataset file {str(path)!r} cannot be read as .npz: {_reason(exc)}") from None
        if not hasattr(archive, "files"):
            raise BadInputError(f"dataset file {str(path)!r} is a single array, not an .npz archive")
        with archive:
            return cls._from_archive(path, archive, inputs, labels)

    @classmethod
    def _from_archive(cls, path: Path, archive: Any, inputs: dict[str, str], labels: str | None) -> "NpzDataset":
        keys = dict(inputs)
        if labels is not None:
            keys["labels"] = labels
        for role, key in keys.items():
            if key not in archive.files:
                what = "the labels" if role == "labels" else f"input {role!r}"
                raise DataError(f"{str(path)!r} has no array {key!r} (for {what}); "
                                f"its arrays: {', '.join(sorted(archive.files))}")
        arrays: dict[str, np.ndarray | StoredArray] = {}
        for name, key in inputs.items():
            stored = stored_member(path, archive.zip, key)
            if stored is None:
                logger.info("%s: array %r is compressed (or not row-addressable), reading it into memory; "
                            "save it with np.savez (not savez_compressed) to stream it", path, key)
            arrays[name] = _read_whole(path, archive, key) if stored is None else stored
        label_array = _read_whole(path, archive, labels, numeric=False) if labels is not None else None
        return cls(arrays, label_array, source=str(path))


def _read_whole(path: Path, archive: Any, key: str, numeric: bool = True) -> np.ndarray:
    """One member read into memory; a truncated, corrupt or object member is a DataError naming it.

    Inputs must be numbers; labels may also be text (``numeric=False``), for metrics that read it.
    """
    try:
        array = archive[key]
    except Exception as exc:
        raise DataError(f"{str(path)!r}: array {key!r} cannot be read: {_reason(exc)}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in ("biufc" if numeric else "biufcUS"):
        kind = array.dtype.name if isinstance(array, np.ndarray) else type(array).__name__
        raise DataError(f"{str(path)!r}: array {key!r} holds {kind} values; a dataset holds numbers")
    return array


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "allow_pickle" in text or "Object arrays" in text:
        return "it holds Python objects (dtype object), which aaq does not unpickle; save numeric arrays"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
