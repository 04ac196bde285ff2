"""Text lines at their natural width, one line per run: a user's own loader and its transform.

``lines`` is the loader (raw items: a line's pixels and its text, read from the file
``prepare.py`` writes); ``to_feed`` is the transform (NNCF's ``transform_fn``) that turns
one item into the recogniser's feed, ``x`` of shape ``(1, 3, 48, width)``. The spec
marks the dataset ``"batched": true``: every feed runs as given, one line per run, each
at its own width, as the recogniser is used in practice (no padding to a common width).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


class Lines:
    """Line images stored side by side in one npz (``pixels``, ``offsets``, ``text``), read one at a time."""

    def __init__(self, path: str | Path) -> None:
        with np.load(HERE / path, allow_pickle=False) as z:
            self.pixels, self.offsets, self.text = z["pixels"], z["offsets"], z["text"]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        start, stop = self.offsets[i], self.offsets[i + 1]
        return {"pixels": self.pixels[:, :, start:stop], "text": str(self.text[i])}


def lines(path: str) -> Lines:
    return Lines(path)


def to_feed(item: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """One line as the recogniser's whole feed, and its text as the label."""
    return {"x": np.ascontiguousarray(item["pixels"][None])}, item["text"]
