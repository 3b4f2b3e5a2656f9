"""The project's one implementation of every metric (scikit-learn underneath).

Training, conversion, benchmarks and `edge-infer evaluate` all report through these functions.
The few the light runtime needs without scikit-learn (`edge-infer calibrate`) live in
`edge_infer.calibration` and `edge_infer.rates` and are used from there by everyone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from edge_infer.decision import argmax_indices
from edge_infer.rates import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    malignant_called,
    malignant_recall_specificity,
)
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX, NORMAL_INDEX

CALIBRATION_BINS = 10


def agreement(reference: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1 agreement of probs with a reference model's (both by the decision rule's argmax),
    and max / mean absolute probability difference (how conversion and the benchmark compare a
    variant with Keras)."""
    delta = np.abs(np.asarray(probs, np.float64) - np.asarray(reference, np.float64))
    return {
        "agreement": float((argmax_indices(reference) == argmax_indices(probs)).mean()),
        "max_abs_dprob": float(delta.max()),
        "mean_abs_dprob": float(delta.mean()),
    }


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix, AUCs, and
    malignant recall / specificity at argmax and, if given, at the high-sensitivity threshold."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = argmax_indices(probs)
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
        recall_t, spec_t = malignant_recall_specificity(y_true, malignant_called(probs, threshold))
        result.update(threshold=float(threshold), malignant_recall_at_threshold=recall_t,
                      malignant_specificity_at_threshold=spec_t)
    if len(np.unique(y_true)) == len(CLASS_NAMES):
        # Dequantized int8 outputs sum to 1 only within a few 1/256 steps: renormalise for AUC.
        normalised = probs / probs.sum(axis=1, keepdims=True)
        result["roc_auc_ovr"] = float(roc_auc_score(y_true, normalised, multi_class="ovr",
                                                    labels=labels))
    auc = auc_benign_vs_malignant(y_true, probs[:, MALIGNANT_INDEX])
    if not np.isnan(auc):
        result["auc_benign_vs_malignant"] = auc
    return result


def _lesions(y_true: np.ndarray, prob_malignant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is malignant, prob_malignant) of the benign and malignant images (normals left out)."""
    y_true = np.asarray(y_true)
    lesion = y_true != NORMAL_INDEX
    return y_true[lesion] == MALIGNANT_INDEX, np.asarray(prob_malignant)[lesion]


def auc_benign_vs_malignant(y_true: np.ndarray, prob_malignant: np.ndarray) -> float:
    """ROC-AUC of prob_malignant, malignant against benign (normals left out); NaN unless
    both benign and malignant images are present."""
    malignant, scores = _lesions(y_true, prob_malignant)
    if malignant.all() or not malignant.any():
        return float("nan")
    return float(roc_auc_score(malignant, scores))


def roc_benign_vs_malignant(y_true: np.ndarray, prob_malignant: np.ndarray) -> dict | None:
    """The ROC curve behind `auc_benign_vs_malignant`: false- and true-positive rates at each
    threshold on prob_malignant (None unless benign and malignant images are both present)."""
    malignant, scores = _lesions(y_true, prob_malignant)
    if malignant.all() or not malignant.any():
        return None
    fpr, tpr, thresholds = roc_curve(malignant, scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "thresholds": np.minimum(thresholds, 1.0).tolist()}  # sklearn's first is +inf


def reliability_bins(y_true: np.ndarray, probs: np.ndarray,
                     n_bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per confidence bin [k/M, (k+1)/M) (last closed): count, mean confidence, accuracy."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # dequantized int8 sums to 1 only roughly
    confidence = probs.max(axis=1)
    correct = argmax_indices(probs) == np.asarray(y_true)
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins = []
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        bins.append({
            "lower": k / n_bins, "upper": (k + 1) / n_bins, "n": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return bins


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray,
                               n_bins: int = CALIBRATION_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over the reliability bins."""
    bins = reliability_bins(y_true, probs, n_bins)
    total = sum(b["n"] for b in bins)
    return float(sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])
                 / total)


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: the mean over images of sum_k (p_k - [y = k])^2 (0 is perfect,
    2 the worst); probabilities renormalised, as dequantized int8 sums to 1 only roughly."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    one_hot = np.eye(len(CLASS_NAMES))[np.asarray(y_true)]
    return float(((probs - one_hot) ** 2).sum(axis=1).mean())


def headline_statistics(y_true: np.ndarray, probs: np.ndarray,
                        threshold: float | None) -> dict[str, Callable[[np.ndarray], float]]:
    """Accuracy, macro-F1 and malignant recall at T as functions of resample indices."""
    y_true = np.asarray(y_true)
    y_pred = argmax_indices(probs)
    labels = list(range(len(CLASS_NAMES)))
    return {
        "accuracy": lambda idx: float(accuracy_score(y_true[idx], y_pred[idx])),
        "macro_f1": lambda idx: float(f1_score(y_true[idx], y_pred[idx], labels=labels,
                                               average="macro", zero_division=0)),
        "malignant_recall": malignant_statistics(y_true, probs, threshold)["malignant_recall"],
    }


def malignant_statistics(y_true: np.ndarray, probs: np.ndarray,
                         threshold: float | None) -> dict[str, Callable[[np.ndarray], float]]:
    """Malignant recall (sensitivity) and specificity of the malignant calls (argmax, or at T
    if given), and the benign-vs-malignant AUROC, as functions of resample indices."""
    y_true = np.asarray(y_true)
    called = malignant_called(probs, threshold)
    prob_malignant = np.asarray(probs, dtype=np.float64)[:, MALIGNANT_INDEX]
    return {
        "malignant_recall": lambda idx: malignant_recall_specificity(y_true[idx],
                                                                     called[idx])[0],
        "malignant_specificity": lambda idx: malignant_recall_specificity(y_true[idx],
                                                                          called[idx])[1],
        "auc_benign_vs_malignant": lambda idx: auc_benign_vs_malignant(y_true[idx],
                                                                       prob_malignant[idx]),
    }


def evaluation_statistics(y_true: np.ndarray, probs: np.ndarray,
                          threshold: float | None) -> dict[str, Callable[[np.ndarray], float]]:
    """The headline statistics plus balanced accuracy, malignant specificity and the
    benign-vs-malignant AUROC (what `edge-infer evaluate` gives intervals for)."""
    y_true = np.asarray(y_true)
    y_pred = argmax_indices(probs)

    def balanced(idx: np.ndarray) -> float:
        with warnings.catch_warnings():  # a resample may predict a class it does not hold
            warnings.simplefilter("ignore", UserWarning)
            return float(balanced_accuracy_score(y_true[idx], y_pred[idx]))

    return {**headline_statistics(y_true, probs, threshold), "balanced_accuracy": balanced,
            **malignant_statistics(y_true, probs, threshold)}


def bootstrap_statistics(statistics: dict[str, Callable[[np.ndarray], float]], n: int,
                         n_resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> dict[str, list[float]]:
    """95 % bootstrap intervals [low, high] of each statistic, all on the same resamples."""
    return {name: list(bootstrap_interval(statistic, n, n_resamples, seed=seed))
            for name, statistic in statistics.items()}


def bootstrap_headline(y_true: np.ndarray, probs: np.ndarray, threshold: float | None,
                       n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> dict[str, list[float]]:
    """95 % bootstrap intervals [low, high] of accuracy, macro-F1 and malignant recall."""
    return bootstrap_statistics(headline_statistics(y_true, probs, threshold), len(y_true),
                                n_resamples, seed)


def lesion_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float | None) -> dict:
    """For a site without normal images (BUS-BRA): benign-vs-malignant AUROC, malignant
    sensitivity / specificity at argmax and at T, and how many lesions were called normal."""
    probs = np.asarray(probs, dtype=np.float64)
    sens, spec = malignant_recall_specificity(y_true, malignant_called(probs))
    sens_t, spec_t = malignant_recall_specificity(y_true, malignant_called(probs, threshold))
    return {"n": int(len(y_true)),
            "auc_benign_vs_malignant": auc_benign_vs_malignant(y_true, probs[:, MALIGNANT_INDEX]),
            "malignant_recall_argmax": sens, "malignant_specificity_argmax": spec,
            "malignant_recall_at_threshold": sens_t, "malignant_specificity_at_threshold": spec_t,
            "called_normal": float((argmax_indices(probs) == NORMAL_INDEX).mean())}


def detection_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution images (higher score) from in-distribution ones:
    the chance that a random OOD image scores above a random in-distribution one."""
    in_scores, out_scores = np.asarray(in_scores, float), np.asarray(out_scores, float)
    if not (len(in_scores) and len(out_scores)):
        return float("nan")
    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(truth, np.r_[in_scores, out_scores]))
