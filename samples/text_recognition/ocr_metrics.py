"""Metrics for a CTC text recogniser, as a user would write them: an aaq metric plugin.

The spec names the factories (``"type": "python", "factory": "ocr_metrics:character_accuracy"``);
aaq imports this module from the spec's folder. Both metrics give a value per
sample, so AccuracyAwareQuantization can rank layers by the lines they break.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aaq import Metric

DEFAULT_CHARSET = Path(__file__).resolve().parent / "data" / "charset.txt"


def load_charset(path: str | Path = DEFAULT_CHARSET) -> list[str]:
    """The CTC alphabet, index 0 the blank; the trailing space symbol is kept."""
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def ctc_greedy(logits: np.ndarray, charset: list[str]) -> list[str]:
    """Best path decoding: argmax per time step, repeats merged, blanks dropped."""
    best = logits.argmax(axis=-1)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != 0
    return ["".join(charset[i] for i in row[mask]) for row, mask in zip(best, keep)]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one row at a time."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


class _CtcMetric(Metric):
    higher_is_better = True
    per_sample = True
    bounds = (0.0, 1.0)  # per-line scores in [0, 1], value = their mean: evaluations can stop early

    def __init__(self, charset: str | Path = DEFAULT_CHARSET, ignore_spaces: bool = True) -> None:
        self.charset = load_charset(charset)
        self.ignore_spaces = ignore_spaces

    def _pairs(self, outputs: dict[str, np.ndarray], labels: Any) -> list[tuple[str, str]]:
        decoded = ctc_greedy(next(iter(outputs.values())), self.charset)
        pairs = [(p, str(t)) for p, t in zip(decoded, labels)]
        if self.ignore_spaces:
            pairs = [(p.replace(" ", ""), t.replace(" ", "")) for p, t in pairs]
        return pairs


class CharacterAccuracy(_CtcMetric):
    """Per line: 1 − edit distance / length of the true text (floored at 0)."""

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        return np.array([max(0.0, 1.0 - edit_distance(p, t) / max(1, len(t))) for p, t in self._pairs(outputs, labels)])


class LineAccuracy(_CtcMetric):
    """Per line: 1 when the decoded line equals the true text exactly."""

    def score(self, outputs: dict[str, np.ndarray], labels: Any) -> np.ndarray:
        return np.array([float(p == t) for p, t in self._pairs(outputs, labels)])


def character_accuracy(**kwargs: Any) -> CharacterAccuracy:
    return CharacterAccuracy(**kwargs)


def line_accuracy(**kwargs: Any) -> LineAccuracy:
    return LineAccuracy(**kwargs)
