"""A Gaussian process over a discrete space and its expected improvement, in numpy and scipy.

Why not Optuna's ``GPSampler``: it needs torch, and the torch wheel on the package
index pulls in several GB of CUDA libraries, too much for the test extra that CI
installs on two cores. A discrete space of a few hundred points needs little: a
Matérn 5/2 kernel with one length scale per dimension of the space (shared by the
columns that encode it) and a noise term, chosen by the log marginal likelihood on a
fixed grid (the best common length and noise, then sweeps over each dimension's
length: deterministic, and no optimiser to diverge), and the expected improvement
evaluated on every point not tried yet. ``benchmarks/bench_tuning.py`` compares it with ``GPSampler``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.stats import norm

JITTER = 1e-8
LOG_LENGTHS = np.linspace(-2.5, 2.5, 11)
NOISES = (1e-6, 1e-4, 1e-2, 1e-1)
SWEEPS = 2


def matern52(a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) / lengths) ** 2, 0.0).sum(-1))
    s5 = math.sqrt(5.0) * d
    return (1.0 + s5 + 5.0 / 3.0 * d ** 2) * np.exp(-s5)


class GaussianProcess:
    """A zero-mean GP on standardised targets; ``fit`` then ``predict`` (mean, standard deviation)."""

    def __init__(self) -> None:
        self.x = np.zeros((0, 0))
        self.lengths = np.ones(0)
        self.noise = 1e-4
        self._mean, self._std = 0.0, 1.0
        self._factor = None
        self._alpha = np.zeros(0)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "GaussianProcess":
        """``groups[j]``: the dimension column ``j`` encodes (columns of one dimension share a length)."""
        self.x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        self._mean = float(y.mean())
        self._std = float(y.std()) or 1.0
        z = (y - self._mean) / self._std
        groups = np.arange(self.x.shape[1]) if groups is None else np.asarray(groups)
        count = int(groups.max()) + 1 if len(groups) else 0
        best = (math.inf, np.zeros(count), NOISES[0])
        for log_length in LOG_LENGTHS:
            for noise in NOISES:
                logs = np.full(count, log_length)
                nll = self._neg_log_likelihood(np.exp(logs[groups]), noise, z)
                if nll < best[0]:
                    best = (nll, logs, noise)
        nll, logs, noise = best
        for _ in range(SWEEPS):
            for g in range(count):
                for log_length in LOG_LENGTHS:
                    trial = logs.copy()
                    trial[g] = log_length
                    value = self._neg_log_likelihood(np.exp(trial[groups]), noise, z)
                    if value < nll:
                        nll, logs = value, trial
        self.lengths, self.noise = np.exp(logs[groups]), float(noise)
        k = matern52(self.x, self.x, self.lengths) + (self.noise + JITTER) * np.eye(len(z))
        self._factor = cho_factor(k, lower=True)
        self._alpha = cho_solve(self._factor, z)
        return self

    def _neg_log_likelihood(self, lengths: np.ndarray, noise: float, z: np.ndarray) -> float:
        k = matern52(self.x, self.x, lengths) + (noise + JITTER) * np.eye(len(z))
        try:
            factor = cho_factor(k, lower=True)
        except np.linalg.LinAlgError:
            return math.inf
        alpha = cho_solve(factor, z)
        return float(0.5 * z @ alpha + np.log(np.diag(factor[0])).sum() + 0.5 * len(z) * math.log(2 * math.pi))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ks = matern52(np.asarray(x, np.float64), self.x, self.lengths)
        mean = ks @ self._alpha
        v = cho_solve(self._factor, ks.T)
        var = np.maximum(1.0 - np.einsum("ij,ji->i", ks, v), 1e-12)
        return mean * self._std + self._mean, np.sqrt(var) * self._std


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI of each point for a minimisation whose best value so far is ``best``."""
    gain = best - mean - xi
    z = gain / std
    return gain * norm.cdf(z) + std * norm.pdf(z)
