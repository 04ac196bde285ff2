"""The samples that show the quantization loss: per-sample output distance, and the hardest samples of a set.

A ranking is only as good as the samples it is scored on: those where the current
model and the float model agree say nothing about which revert wins the loss back.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

UNCHANGED_SHARE = 0.25  # samples on which both models agree, per changed sample, kept in a ranking subset


def output_distance(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                    samples: int | None = None) -> np.ndarray:
    """Per-sample normalised MSE, ``|out - ref|^2 / |ref|^2``, averaged over the model outputs.

    Arrays hold ``samples`` samples on their first axis (default: its length), so one
    whole-feed run of a batched dataset is ``samples=1``; object arrays hold one
    sample's whole output per entry (``Engine.outputs`` on a batched dataset).
    """
    parts = []
    for name, ref in reference.items():
        if isinstance(ref, np.ndarray) and ref.dtype == object:
            parts.append(np.array([output_distance({name: r}, {name: o}, 1)[0]
                                   for r, o in zip(ref, outputs[name])], np.float64))
            continue
        rows = len(ref) if samples is None else samples
        r = np.asarray(ref, np.float64).reshape(rows, -1)
        o = np.asarray(outputs[name], np.float64).reshape(rows, -1)
        energy = np.maximum(np.einsum("ij,ij->i", r, r), np.finfo(np.float64).tiny)
        parts.append(np.einsum("ij,ij->i", o - r, o - r) / energy)
    return np.mean(parts, axis=0)


def hardest(indices: np.ndarray, loss: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The ranking subset of ``indices``, sorted: the samples on which the two models differ, and a few more.

    Up to ``size`` samples of nonzero ``loss``: where the quantized model loses, largest
    loss first, then where it gains (a revert can lose those). Samples on which both
    models agree say nothing about which revert wins the loss back, so they are not
    padded up to ``size`` (POT does, and pays for their inference in every candidate's
    score); ``UNCHANGED_SHARE`` of them per changed sample stay in, to see a revert that
    breaks them. When no sample differs (a metric that is not a mean of per-sample
    values), ``size`` samples are drawn. Ties go by a seeded draw.
    """
    idx = np.asarray(indices, np.int64)
    loss = np.asarray(loss, np.float64)
    tiebreak = np.random.default_rng(seed).random(len(idx))
    changed = np.flatnonzero(loss != 0)
    same = np.flatnonzero(loss == 0)
    if changed.size == 0:
        return np.sort(idx[same[np.argsort(tiebreak[same], kind="stable")][:size]])
    order = np.lexsort((tiebreak[changed], -np.abs(loss[changed]), loss[changed] < 0))
    picked = changed[order[:size]]
    extra = min(size - len(picked), int(np.ceil(UNCHANGED_SHARE * len(picked))))
    unchanged = same[np.argsort(tiebreak[same], kind="stable")][:max(extra, 0)]
    return np.sort(idx[np.concatenate([picked, unchanged])])

