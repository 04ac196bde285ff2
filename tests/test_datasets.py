from __future__ import annotations

import pickle
import sys
import textwrap
from typing import ClassVar

import numpy as np
import pytest

from aaq.engine import ArrayDataset, Dataset, NpzDataset, PythonDataset, Sample, datasets, register_dataset
from aaq.engine.feeds import fetch
from aaq.engine.npz import StoredArray
from aaq.errors import BadInputError, DataError, PluginError, SpecError


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 3, 4)).astype(np.float32), rng.integers(0, 5, 10)


def test_array_dataset_items_and_batches(arrays):
    x, y = arrays
    ds = ArrayDataset({"x": x}, y)
    assert len(ds) == 10 and isinstance(ds, Dataset)
    sample = ds[3]
    assert isinstance(sample, Sample) and sample.label == y[3]
    np.testing.assert_array_equal(sample.inputs["x"], x[3])
    inputs, labels = ds.batch(np.array([2, 3, 4]))
    assert np.shares_memory(inputs["x"], ds.inputs["x"])  # consecutive indices: a view, no copy
    np.testing.assert_array_equal(inputs["x"], x[2:5])
    np.testing.assert_array_equal(labels, y[2:5])
    inputs, labels = ds.batch(np.array([7, 1]))
    np.testing.assert_array_equal(inputs["x"], x[[7, 1]])
    np.testing.assert_array_equal(labels, y[[7, 1]])
    with pytest.raises(DataError, match="sample 10: index out of range"):
        ds[10]


def test_list_labels_and_no_labels(arrays):
    x, _ = arrays
    words = [f"w{i}" for i in range(10)]
    assert ArrayDataset({"x": x}, words).batch(np.array([4, 2]))[1] == ["w4", "w2"]
    assert ArrayDataset({"x": x}).batch(np.array([0]))[1] is None


def test_arrays_must_agree_on_the_number_of_samples(arrays):
    x, y = arrays
    with pytest.raises(DataError, match="same number of samples.*x: 10, labels: 9"):
        ArrayDataset({"x": x}, y[:9])
    with pytest.raises(DataError, match="x: 10, m: 3"):
        ArrayDataset({"x": x, "m": x[:3]})
    with pytest.raises(DataError, match="at least one input"):
        ArrayDataset({})


def test_fetch_stacks_samples_without_a_fast_path(arrays):
    x, y = arrays

    class Plain:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return Sample({"x": x[i]}, None)

    inputs, labels = fetch(Plain(), np.array([5, 0]))
    np.testing.assert_array_equal(inputs["x"], x[[5, 0]])
    assert labels is None


def test_npz_from_spec_resolves_paths_against_the_spec(tmp_path, arrays):
    x, y = arrays
    (tmp_path / "data").mkdir()
    np.savez_compressed(tmp_path / "data" / "val.npz", images=x, classes=y)
    cls = datasets.get("npz")
    assert cls is NpzDataset
    ds = cls.from_spec({"path": "data/val.npz", "inputs": {"input": "images"}, "labels": "classes"}, tmp_path)
    assert len(ds) == 10
    inputs, labels = ds.batch(np.arange(3))
    np.testing.assert_array_equal(inputs["input"], x[:3])
    np.testing.assert_array_equal(labels, y[:3])
    unlabeled = cls.from_spec({"path": "data/val.npz", "inputs": {"input": "images"}, "labels": None}, tmp_path)
    assert unlabeled[0].label is None


def test_uncompressed_npz_streams_rows_from_the_file(tmp_path, arrays):
    x, y = arrays
    path = tmp_path / "val.npz"
    np.savez(path, images=x, classes=y, masks=np.asfortranarray(x))
    ds = NpzDataset.load(path, {"x": "images", "m": "masks"}, "classes")
    assert isinstance(ds.inputs["x"], StoredArray)  # rows are read per batch, never the whole array
    assert isinstance(ds.inputs["m"], np.ndarray)  # Fortran order: not a byte range per row, read whole
    for indices in (np.arange(10), np.array([2, 3, 4]), np.array([7, 1, 2, 3, 9]), np.array([], dtype=int)):
        inputs, labels = ds.batch(indices)
        np.testing.assert_array_equal(inputs["x"], x[indices])
        np.testing.assert_array_equal(inputs["m"], x[indices])
        np.testing.assert_array_equal(labels, y[indices])
        assert inputs["x"].flags.c_contiguous and inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(ds[-1].inputs["x"], x[9])
    np.testing.assert_array_equal(ds.inputs["x"][1:8:3], x[1:8:3])
    with pytest.raises(DataError, match="sample 10: index out of range"):
        ds[10]
    clone = pickle.loads(pickle.dumps(ds))  # what a worker process receives: the path, not the data
    assert len(pickle.dumps(ds.inputs["x"])) < x.nbytes
    np.testing.assert_array_equal(clone.batch(np.array([5, 6]))[0]["x"], x[5:7])


def test_compressed_npz_is_read_into_memory(tmp_path, arrays):
    x, _ = arrays
    np.savez_compressed(tmp_path / "val.npz", images=x)
    ds = NpzDataset.load(tmp_path / "val.npz", {"x": "images"})
    assert isinstance(ds.inputs["x"], np.ndarray)
    np.testing.assert_array_equal(ds.batch(np.array([4, 0]))[0]["x"], x[[4, 0]])


def test_stored_rows_cut_short_say_so(tmp_path, arrays):
    x, _ = arrays
    path = tmp_path / "val.npz"
    np.savez(path, images=x)
    ds = NpzDataset.load(path, {"x": "images"})
    stored = ds.inputs["x"]
    with open(path, "r+b") as f:
        f.truncate(stored.offset + 2 * x[0].nbytes)
    with pytest.raises(DataError, match="ended early"):  # bad input (exit 2), not an internal error
        ds.batch(np.arange(5))


def test_npz_missing_file_or_key_names_both(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "val.npz", images=x, classes=y)
    with pytest.raises(BadInputError, match=r"dataset file '.*nope\.npz' does not exist"):
        NpzDataset.from_spec({"path": "nope.npz", "inputs": {"x": "images"}}, tmp_path)
    with pytest.raises(DataError, match=r"'.*val\.npz' has no array 'pixels' \(for input 'x'\); "
                                        r"its arrays: classes, images"):
        NpzDataset.from_spec({"path": "val.npz", "inputs": {"x": "pixels"}}, tmp_path)
    with pytest.raises(DataError, match=r"has no array 'y' \(for the labels\)"):
        NpzDataset.from_spec({"path": "val.npz", "inputs": {"x": "images"}, "labels": "y"}, tmp_path)
    np.save(tmp_path / "single.npy", x)
    with pytest.raises(BadInputError, match="a single array, not an .npz"):
        NpzDataset.load(tmp_path / "single.npy", {"x": "images"})
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(BadInputError, match="cannot be read as .npz"):
        NpzDataset.load(tmp_path / "junk.npz", {"x": "images"})


def test_python_dataset_factory_beside_the_spec(tmp_path, arrays):
    (tmp_path / "aaq_test_ds_factory.py").write_text(textwrap.dedent("""
        import numpy as np
        from aaq.engine import ArrayDataset

        def make(n, scale=1.0):
            return ArrayDataset({"x": np.full((n, 2), scale, np.float32)})

        NOT_CALLABLE = 3

        def broken():
            raise RuntimeError("no data today")

        def wrong():
            return 42
    """))
    path_before = list(sys.path)
    ds = PythonDataset.from_spec({"factory": "aaq_test_ds_factory:make", "kwargs": {"n": 4, "scale": 2.0}},
                                 tmp_path)
    assert sys.path == path_before
    assert len(ds) == 4 and ds[0].inputs["x"].tolist() == [2.0, 2.0]
    cases = [
        ("aaq_test_ds_missing:make", r"plugin 'aaq_test_ds_missing:make'.*cannot import module"),
        ("aaq_test_ds_factory:nope", r"has no attribute 'nope'"),
        ("aaq_test_ds_factory:NOT_CALLABLE", "is not callable"),
        ("aaq_test_ds_factory:broken", r"plugin 'aaq_test_ds_factory:broken'.*RuntimeError: no data today"),
        ("aaq_test_ds_factory:wrong", "must return a Dataset.*got int"),
    ]
    for factory, phrase in cases:
        with pytest.raises(PluginError, match=phrase):
            PythonDataset.from_spec({"factory": factory, "kwargs": {}}, tmp_path)
    with pytest.raises(BadInputError, match="expected 'module:callable'"):
        PythonDataset.from_spec({"factory": "no_colon", "kwargs": {}}, tmp_path)


def test_registry_knows_the_builtins_and_refuses_broken_plugins():
    assert {"npz", "python"} <= set(datasets.names())
    with pytest.raises(SpecError, match="unknown dataset 'npx'; did you mean 'npz'"):
        datasets.get("npx", "engine.dataset.type")

    with pytest.raises(PluginError, match="must define 'schema'"):
        @register_dataset("aaq_test_no_schema")
        class NoSchema:
            @classmethod
            def from_spec(cls, options, base_dir):
                return None

    with pytest.raises(PluginError, match="must define the classmethod 'from_spec'"):
        @register_dataset("aaq_test_no_from_spec")
        class NoFromSpec:
            schema: ClassVar[dict] = {"type": "object", "additionalProperties": False}

    with pytest.raises(PluginError, match="additionalProperties"):
        @register_dataset("aaq_test_open_schema")
        class OpenSchema:
            schema: ClassVar[dict] = {"type": "object"}

            @classmethod
            def from_spec(cls, options, base_dir):
                return None

    @register_dataset("aaq_test_good")
    class Good:
        schema: ClassVar[dict] = {"type": "object", "additionalProperties": False}

        @classmethod
        def from_spec(cls, options, base_dir):
            return ArrayDataset({"x": np.zeros((1, 1))})

    assert datasets.get("aaq_test_good") is Good
    assert "aaq_test_no_schema" not in datasets


def test_builtin_schemas_are_valid_and_have_defaults():
    from aaq.engine.datasets import check_plugin_schema

    for name in ("npz", "python"):
        check_plugin_schema(name, datasets.get(name))
    assert NpzDataset.schema["properties"]["labels"]["default"] is None
    assert PythonDataset.schema["properties"]["kwargs"]["default"] == {}
