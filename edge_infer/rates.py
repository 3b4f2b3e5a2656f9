"""Malignant calls, their sensitivity and specificity, and the seeded percentile bootstrap, in
numpy alone: `edge-infer calibrate` needs them in the light runtime (no scikit-learn), and
`benchmarks.metrics` reports through these same functions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_infer.decision import argmax_indices
from edge_infer.spec import MALIGNANT_INDEX

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def malignant_recall_specificity(y_true: np.ndarray, malignant_called: np.ndarray) -> tuple:
    """Sensitivity and specificity of 'called malignant' against 'is malignant'."""
    positive = np.asarray(y_true) == MALIGNANT_INDEX
    called = np.asarray(malignant_called, dtype=bool)
    recall = float(called[positive].mean()) if positive.any() else float("nan")
    specificity = float((~called[~positive]).mean()) if (~positive).any() else float("nan")
    return recall, specificity


def malignant_called(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Which images are called malignant: the decision rule's argmax (ties to the more severe
    class), or also prob_malignant >= threshold if given."""
    probs = np.asarray(probs, dtype=np.float64)
    called = argmax_indices(probs) == MALIGNANT_INDEX
    if threshold is not None:
        called |= probs[:, MALIGNANT_INDEX] >= threshold
    return called


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int,
                       n_resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of statistic(indices); NaN resamples ignored."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_resamples)],
                      dtype=np.float64)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
