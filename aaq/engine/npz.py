"""Reading rows of ``.npz`` members straight from the file, so a dataset never has to be resident.

``np.load`` on an npz decompresses a whole member into memory, and a memory map counts
every page touched in the process's RSS until the kernel needs it back. A member stored
uncompressed (``np.savez``) is a plain ``.npy`` at a known offset of the zip file, so a
batch of rows is one ``readinto`` per run of consecutive indices: the calibration pass and
every evaluation then hold one batch, whatever the number of samples. Reading from the
page cache costs about 5 ms per 100 MB, against hundreds of ms of inference.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import Union

import numpy as np
from numpy.lib import format as npy_format

from aaq.errors import DataError

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"

Rows = Union[int, slice, np.ndarray]


class StoredArray:
    """A read-only, row-indexable view of one uncompressed C-order npz member.

    Holds the path and offsets only (it pickles as such, so worker processes open the
    file themselves); each read opens the file, so forked readers share no file offset.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = Path(path)
        self.offset = offset
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            index = int(rows) + (self.shape[0] if rows < 0 else 0)
            return self._read([(index, index + 1)])[0]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step == 1:
                return self._read([(start, max(start, stop))])
            rows = np.arange(start, stop, step)
        return self._read(_runs(np.asarray(rows, dtype=np.int64)))

    def _read(self, runs: list[tuple[int, int]]) -> np.ndarray:
        """Rows of ``runs`` (half-open, in order), read into one new array."""
        total = sum(stop - start for start, stop in runs)
        out = np.empty((total,) + self.shape[1:], dtype=self.dtype)
        if out.size == 0:  # no bytes to read (no rows, or rows of zero elements)
            return out
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            at = 0
            for start, stop in runs:
                size = (stop - start) * self._row_bytes
                f.seek(self.offset + start * self._row_bytes)
                got = f.readinto(view[at:at + size])
                if got != size:
                    raise DataError(f"{str(self.path)!r} ended early: rows {start}..{stop - 1} are cut short "
                                    f"(the file changed after it was opened?)", start)
                at += size
        return out


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """``indices`` as half-open runs of consecutive values, in the given order."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [indices.size]))
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def stored_member(path: Path, archive: zipfile.ZipFile, key: str) -> StoredArray | None:
    """``key``'s member as a :class:`StoredArray`, or None when it must be read whole.

    None for a compressed member, a Fortran-order or object array, a 0-d array, an npy
    format newer than 2.0 or a header numpy cannot parse: rows of those are not byte
    ranges we can read, and reading them whole says what is wrong with them.

    A member read from here bypasses zipfile, so its checks are done here instead, once:
    the bytes its header declares must be exactly the bytes the member holds, and the
    member's CRC-32 must match (one streaming pass, a few ms per 100 MB): a truncated or
    altered file is a DataError, never rows read from the wrong place.
    """
    info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    try:
        return _stored_member(path, info, key)
    except (OSError, ValueError, OverflowError, struct.error):  # offsets that point nowhere: read it whole
        return None


def _stored_member(path: Path, info: zipfile.ZipInfo, key: str) -> StoredArray | None:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
            return None
        fields = _LOCAL_HEADER.unpack(header)
        flags, name_len, extra_len = fields[2], fields[-2], fields[-1]
        if flags & 0x1:  # encrypted: zipfile says so when the member is read whole
            return None
        name = f.read(name_len)
        if name not in (info.orig_filename.encode("utf-8"), info.orig_filename.encode("cp437", "replace")):
            raise DataError(f"{str(path)!r}: array {key!r} is corrupt: the zip's directory and the member's "
                            f"own header disagree on its name")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        f.seek(start)
        try:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 field names) has no public header reader
                return None
        except Exception:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors...
            return None
        offset = f.tell()
    if fortran or dtype.hasobject or len(shape) == 0 or dtype.itemsize == 0:
        return None
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = start + info.file_size - offset
    if declared != held:
        raise DataError(f"{str(path)!r}: array {key!r} is corrupt or truncated: its header says shape "
                        f"{list(shape)} {dtype.name} ({declared} bytes), the file holds {held} bytes for it")
    if _crc32(path, start, info.file_size) != info.CRC:
        raise DataError(f"{str(path)!r}: array {key!r} is corrupt: its CRC-32 does not match (the file was "
                        f"altered or damaged)")
    return StoredArray(path, offset, shape, dtype)


def _crc32(path: Path, start: int, size: int, chunk: int = 1 << 22) -> int:
    crc = 0
    buffer = bytearray(min(chunk, max(size, 1)))
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = size
        while left > 0:
            got = f.readinto(view[:min(chunk, left)])
            if not got:
                raise DataError(f"{str(path)!r} ended early: the file is truncated")
            crc = zlib.crc32(view[:got], crc)
            left -= got
    return crc
