"""The project's one implementation of every metric (scikit-learn underneath).

Training, conversion, benchmarks and `edge-infer evaluate` all report through these functions.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX

TARGET_MALIGNANT_RECALL = 0.95


def malignant_recall_specificity(y_true: np.ndarray, malignant_called: np.ndarray) -> tuple:
    """Sensitivity and specificity of 'called malignant' against 'is malignant'."""
    positive = np.asarray(y_true) == MALIGNANT_INDEX
    called = np.asarray(malignant_called, dtype=bool)
    recall = float(called[positive].mean()) if positive.any() else float("nan")
    specificity = float((~called[~positive]).mean()) if (~positive).any() else float("nan")
    return recall, specificity


def choose_threshold(
    y_true: np.ndarray, prob_malignant: np.ndarray, target_recall: float = TARGET_MALIGNANT_RECALL
) -> float:
    """The highest T with recall(prob_malignant >= T) >= target on these (validation) labels.

    Candidates are the malignant images' own probabilities, so T is the k-th largest of them,
    with k the fewest malignant images that must be caught to reach the target recall.
    """
    positives = np.sort(np.asarray(prob_malignant)[np.asarray(y_true) == MALIGNANT_INDEX])[::-1]
    if positives.size == 0:
        raise ValueError("no malignant images to choose a threshold on")
    needed = int(np.ceil(target_recall * positives.size - 1e-9))
    return float(positives[max(needed, 1) - 1])


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix, AUCs, and
    malignant recall / specificity at argmax and, if given, at the high-sensitivity threshold."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(CLASS_NAMES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    result = {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "n": int(s)}
            for name, p, r, f, s in zip(CLASS_NAMES, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    recall_argmax, spec_argmax = malignant_recall_specificity(y_true, y_pred == MALIGNANT_INDEX)
    result["malignant_recall_argmax"] = recall_argmax
    result["malignant_specificity_argmax"] = spec_argmax
    if threshold is not None:
        called = (y_pred == MALIGNANT_INDEX) | (probs[:, MALIGNANT_INDEX] >= threshold)
        recall_t, spec_t = malignant_recall_specificity(y_true, called)
        result.update(threshold=float(threshold), malignant_recall_at_threshold=recall_t,
                      malignant_specificity_at_threshold=spec_t)
    if len(np.unique(y_true)) == len(CLASS_NAMES):
        # Dequantized int8 outputs sum to 1 only within a few 1/256 steps: renormalise for AUC.
        normalised = probs / probs.sum(axis=1, keepdims=True)
        result["roc_auc_ovr"] = float(roc_auc_score(y_true, normalised, multi_class="ovr",
                                                    labels=labels))
    lesion = y_true != CLASS_NAMES.index("normal")
    if len(np.unique(y_true[lesion])) == 2:
        result["auc_benign_vs_malignant"] = float(
            roc_auc_score(y_true[lesion] == MALIGNANT_INDEX, probs[lesion, MALIGNANT_INDEX])
        )
    return result
