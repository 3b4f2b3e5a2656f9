"""Compare a TFLite variant with its Keras model on the same preprocessed arrays.

The targets are checked on the test split; thresholds are chosen on validation only.
"""

from __future__ import annotations

import numpy as np

from edge_infer.calibration import choose_threshold
from edge_infer.metrics import agreement, classification_metrics
from edge_infer.spec import MALIGNANT_INDEX

TARGETS: dict[str, dict[str, float]] = {
    "float32": {"min_agreement": 0.995},
    "float16": {"min_agreement": 0.995},
    "dynamic": {"min_agreement": 0.99},
    "int8": {
        "min_agreement": 0.99,
        "max_accuracy_drop": 0.01,
        "max_malignant_recall_drop": 0.02,
        "min_size_ratio": 3.5,
    },
}


def evaluate_variant(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                     keras_probs: dict[str, np.ndarray]) -> dict:
    """Threshold on val; metrics and agreement with Keras on val and test."""
    threshold = choose_threshold(labels["val"], probs["val"][:, MALIGNANT_INDEX])
    report: dict = {"threshold": threshold}
    for split in ("val", "test"):
        report[split] = {
            **classification_metrics(labels[split], probs[split], threshold),
            **agreement(keras_probs[split], probs[split]),
        }
    return report


def targets_for(variant: str) -> dict[str, float]:
    """A copy of the variant's targets (the int8 size target is the same for every
    architecture)."""
    return dict(TARGETS[variant])


def check_targets(targets: dict[str, float], report: dict, keras_report: dict,
                  size_ratio: float) -> list[str]:
    """Failures of the given targets on the test split (empty when it passes)."""
    test, keras_test = report["test"], keras_report["test"]
    failures = []
    if test["agreement"] < targets["min_agreement"]:
        failures.append(f"agreement {test['agreement']:.4f} < {targets['min_agreement']}")
    if "max_accuracy_drop" in targets:
        drop = keras_test["accuracy"] - test["accuracy"]
        if drop > targets["max_accuracy_drop"] + 1e-9:
            failures.append(f"accuracy {drop:.4f} below Keras (> {targets['max_accuracy_drop']})")
    if "max_malignant_recall_drop" in targets:
        drop = (keras_test["malignant_recall_at_threshold"]
                - test["malignant_recall_at_threshold"])
        if drop > targets["max_malignant_recall_drop"] + 1e-9:
            failures.append(f"malignant recall {drop:.4f} below Keras "
                            f"(> {targets['max_malignant_recall_drop']})")
    if "min_size_ratio" in targets and size_ratio < targets["min_size_ratio"]:
        failures.append(f"only {size_ratio:.2f}x smaller than float32 weights "
                        f"(< {targets['min_size_ratio']})")
    return failures


# The feature-map output must leave the probabilities as a single-output conversion gives them.
FEATURE_OUTPUT_MAX_DPROB = 1e-6


def feature_output_report(single: dict[str, np.ndarray], double: dict[str, np.ndarray]) -> dict:
    """Agreement and |dp| of the two-output model's probabilities with the single-output
    conversion's, on val and test."""
    return {split: agreement(single[split], double[split]) for split in ("val", "test")}


def check_feature_output(variant: str, report: dict) -> list[str]:
    """Failures when adding the feature-map output changed any probability."""
    return [f"feature-map output changed {split} probabilities by up to "
            f"{block['max_abs_dprob']:.2g} (> {FEATURE_OUTPUT_MAX_DPROB}) in {variant}"
            for split, block in report.items()
            if block["max_abs_dprob"] > FEATURE_OUTPUT_MAX_DPROB or block["agreement"] < 1.0]
