"""Test-split accuracy of one variant, compared with Keras on the same preprocessed images."""

from __future__ import annotations

import numpy as np

from edge_infer.metrics import (
    agreement,
    bootstrap_headline,
    bootstrap_interval,
    classification_metrics,
    expected_calibration_error,
    headline_statistics,
    reliability_bins,
)


def variant_accuracy(y_true: np.ndarray, probs: np.ndarray, threshold: float,
                     keras_probs: np.ndarray, n_resamples: int) -> dict:
    """Every accuracy figure of the report for one variant on the test split."""
    result = classification_metrics(y_true, probs, threshold)
    result.update(
        expected_calibration_error=expected_calibration_error(y_true, probs),
        reliability=reliability_bins(y_true, probs),
        intervals_95=bootstrap_headline(y_true, probs, threshold, n_resamples),
        keras_agreement=agreement(keras_probs, probs),
        accuracy_minus_keras=_paired_difference(y_true, probs, keras_probs, threshold,
                                                n_resamples),
    )
    return result


def _paired_difference(y_true: np.ndarray, probs: np.ndarray, keras_probs: np.ndarray,
                       threshold: float, n_resamples: int) -> dict:
    """Accuracy minus Keras's, with a paired bootstrap interval (same resampled images)."""
    mine = headline_statistics(y_true, probs, threshold)["accuracy"]
    theirs = headline_statistics(y_true, keras_probs, None)["accuracy"]
    everything = np.arange(len(y_true))
    low, high = bootstrap_interval(lambda idx: mine(idx) - theirs(idx), len(y_true),
                                   n_resamples)
    return {"value": mine(everything) - theirs(everything), "interval_95": [low, high]}
