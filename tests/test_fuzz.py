"""Property-based fuzzing (issue 17): the spec loader and the npz reader never crash.

* ``aaq validate`` on random JSON/JSONC text, random bytes and random mutations of the
  templates in ``algorithms_specs/`` exits 0 or 2, never 1 nor with a traceback.
* The npz reader, on random arrays, headers, truncations and flipped bytes, gives a
  ``DataError`` (a ``BadInputError``) or exactly the arrays ``np.load`` gives: never a
  crash, never a silently different read.

Bounded for CI: ``CI`` set -> derandomized (a fixed seed) and ``FUZZ_EXAMPLES`` examples
per property; locally random with twice as many. ``AAQ_FUZZ_EXAMPLES=2000`` runs more.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaq.cli import main
from aaq.engine.datasets import NpzDataset
from aaq.engine.feeds import fetch
from aaq.errors import BadInputError

ROOT = Path(__file__).resolve().parents[1]
CI = bool(os.environ.get("CI"))
FUZZ_EXAMPLES = int(os.environ.get("AAQ_FUZZ_EXAMPLES", 50 if CI else 100))

FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=CI, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TEMPLATES = {p.name: p.read_text() for p in sorted((ROOT / "algorithms_specs").glob("*.json"))}


@pytest.fixture(scope="module")
def spec_dir() -> Path:
    """A folder beside a link to samples/, so the templates' ``../samples/...`` paths still resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(ROOT / "samples", Path(tmp) / "samples")
        (Path(tmp) / "specs").mkdir()
        yield Path(tmp) / "specs"


def _validate(spec_dir: Path, data: bytes) -> tuple[int, str]:
    path = spec_dir / "spec.json"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(path)])
    return code, err.getvalue()


def _assert_refused_well(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err


# ---------------------------------------------------------------- the spec loader

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)
_keys = st.sampled_from(["model", "engine", "compression", "output", "name", "path", "params", "algorithms",
                         "dataset", "metrics", "type", "batch_size", "maximal_drop", "preset", "dir"])


@FUZZ
@given(value=_json, comments=st.lists(st.sampled_from(["// c\n", "/* c */", "/* unterminated", "//"]),
                                      max_size=3), where=st.lists(st.integers(0, 10**6), max_size=3))
def test_validate_on_random_json_and_jsonc_text(spec_dir: Path, value: Any, comments: list, where: list) -> None:
    text = json.dumps(value)  # NaN and Infinity included, as Python writes them
    for comment, at in zip(comments, where):
        at %= len(text) + 1
        text = text[:at] + comment + text[at:]
    _assert_refused_well(*_validate(spec_dir, text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=st.binary(max_size=200))
def test_validate_on_random_bytes(spec_dir: Path, data: bytes) -> None:
    _assert_refused_well(*_validate(spec_dir, data))


def _mutate(node: Any, path: list, action: str, value: Any, key: str) -> Any:
    """``node`` with one change at ``path`` (indices into the containers met on the way, modulo their size)."""
    if not path or not isinstance(node, (dict, list)) or not node:
        if action == "replace" or not isinstance(node, (dict, list)):
            return value
        if isinstance(node, dict):
            return {**node, key: value}
        return [*node, value]
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    chosen = keys[path[0] % len(keys)]
    if len(path) == 1 and action == "delete":
        if isinstance(node, dict):
            return {k: v for k, v in node.items() if k != chosen}
        return [v for i, v in enumerate(node) if i != chosen]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[chosen] = _mutate(node[chosen], path[1:], action, value, key)
    return copy


@FUZZ
@given(template=st.sampled_from(sorted(TEMPLATES)),
       mutations=st.lists(st.tuples(st.lists(st.integers(0, 50), min_size=1, max_size=6),
                                    st.sampled_from(["replace", "delete", "insert"]), _json, _keys),
                          min_size=1, max_size=3))
def test_validate_on_mutated_templates(spec_dir: Path, template: str, mutations: list) -> None:
    from aaq.spec.loader import parse_spec_text

    spec = parse_spec_text(TEMPLATES[template], template)
    for path, action, value, key in mutations:
        spec = _mutate(spec, path, action, value, key)
    _assert_refused_well(*_validate(spec_dir, json.dumps(spec).encode("utf-8", "surrogatepass")))


@FUZZ
@given(template=st.sampled_from(sorted(TEMPLATES)), cuts=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.text(max_size=6)), min_size=1, max_size=3))
def test_validate_on_templates_edited_as_text(spec_dir: Path, template: str, cuts: list) -> None:
    text = TEMPLATES[template]
    for at, length, insert in cuts:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + length:]
    _assert_refused_well(*_validate(spec_dir, text.encode("utf-8", "surrogatepass")))


def test_the_templates_themselves_validate(spec_dir: Path) -> None:
    for text in TEMPLATES.values():
        assert _validate(spec_dir, text.encode())[0] == 0


# ---------------------------------------------------------------- the npz reader

_DTYPES = ["<f4", "<f8", "<f2", ">f4", "<i8", "<i4", "|i1", "|u1", "<u2", "|b1", "<c8"]


@st.composite
def _arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    shape = (draw(st.integers(0, 6)),) + shape[1:]
    count = int(np.prod(shape))
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy() if count else np.zeros(shape, dtype)
    if dtype.kind in "fc":
        array[~np.isfinite(array)] = 0  # NaN inputs are refused on purpose (tested elsewhere)
    if dtype.kind == "b":
        array = array.astype(bool)
    if draw(st.booleans()) and array.ndim > 1:
        array = np.asfortranarray(array)
    return array


def _header(draw, array: np.ndarray) -> bytes:
    """An npy member whose header may lie about shape, dtype or order (a valid zip CRC all the same)."""
    shape = draw(st.one_of(st.just(array.shape),
                           st.lists(st.integers(0, 8), max_size=3).map(tuple)))
    descr = draw(st.one_of(st.just(np.lib.format.dtype_to_descr(array.dtype)), st.sampled_from(_DTYPES + ["|O"])))
    fortran = draw(st.booleans()) if draw(st.booleans()) else array.flags.f_contiguous and not array.flags.c_contiguous
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    return buffer.getvalue() + array.tobytes(order=order)


@st.composite
def _npz_files(draw) -> tuple[bytes, bool]:
    """(file bytes, whether the file was tampered with)."""
    array = draw(_arrays())
    compressed = draw(st.booleans())
    lie = draw(st.booleans())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as archive:
        if lie:
            archive.writestr("x.npy", _header(draw, array))
        else:
            with archive.open("x.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        if draw(st.booleans()):
            with archive.open("other.npy", "w") as member:
                np.lib.format.write_array(member, np.arange(5), allow_pickle=False)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    if damage == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
    return bytes(data), lie or damage != "none"


@FUZZ
@given(case=_npz_files(), picks=st.lists(st.integers(0, 5), max_size=4))
def test_the_npz_reader_gives_a_data_error_or_exactly_what_np_load_gives(case: tuple[bytes, bool],
                                                                         picks: list) -> None:
    data, tampered = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        path.write_bytes(data)
        try:
            ours = NpzDataset.load(path, {"x": "x"})
            rows = fetch(ours, np.arange(len(ours)))[0]["x"]
            some = np.asarray(sorted({p % len(ours) for p in picks}) if len(ours) else [], dtype=np.int64)
            picked = fetch(ours, some)[0]["x"]
        except BadInputError as exc:
            assert tampered, f"a valid file was refused: {exc}"
            return
        try:
            with np.load(path, allow_pickle=False) as archive:
                expected = archive["x"]
        except Exception as exc:
            pytest.fail(f"read {rows.shape} {rows.dtype} from a file numpy refuses ({exc!r})")
    assert rows.dtype == expected.dtype and rows.shape == expected.shape
    assert np.array_equal(rows, expected, equal_nan=True)
    assert np.array_equal(picked, expected[some], equal_nan=True)
