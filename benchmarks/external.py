"""The external-hospital test: BrEaST-Lesions_USG, beside the BUSI test split.

A test set only: nothing is trained, calibrated or chosen on it. Each model keeps the temperature
and threshold of its manifest entry (fitted on its own validation data), so the figures show how
the model holds up on another hospital's scanners. The figures are
`benchmarks.evaluate.malignant_figures`, the ones `edge-infer evaluate` prints for the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_infer.evaluation import malignant_figures
from edge_infer.inputs import labelled_csv
from edge_infer.preprocess import preprocess_image
from edge_infer.spec import CLASS_NAMES
from train.datasets import LABELS_FILENAME

NAME = "BrEaST-Lesions_USG"
CITATION = ("Pawłowska A. et al., Curated benchmark dataset for ultrasound based breast lesion "
            "analysis, Scientific Data 11, 148 (2024); CC BY 4.0")
VARIANTS: tuple[str, ...] = ("keras", "tflite-float16", "tflite-int8")


def load_external(root: Path, stride: int) -> dict:
    """Every stride-th image of labels.csv (in its row order), preprocessed by
    the shared preprocessing, with labels and files. The set is curated: any file that cannot
    be used is an error, not a skip."""
    found = labelled_csv(root / LABELS_FILENAME)
    problems = found.unreadable + found.unlabelled
    if problems:
        where, reason = problems[0]
        raise ValueError(f"external test set {root}: {len(problems)} unusable row(s), first "
                         f"{where}: {reason}")
    items = found.items[::stride]
    return {"images": np.stack([preprocess_image(path) for path, _ in items]),
            "labels": np.array([CLASS_NAMES.index(label) for _, label in items], np.int64),
            "files": [path.relative_to(root).as_posix() for path, _ in items]}


def external_results(root: Path, stride: int,
                     predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
                     thresholds: dict[str, float], test_labels: np.ndarray,
                     test_probs: dict[str, np.ndarray], n_resamples: int) -> dict:
    """For each variant: its malignant figures on the external set and on the BUSI test
    split, at argmax and at its validated threshold T (what latest.json holds under
    "external")."""
    data = load_external(root, stride)
    variants = {}
    for name, predict in predictors.items():
        probs = predict(data["images"])
        variants[name] = {
            "threshold": thresholds[name],
            "external": malignant_figures(data["labels"], probs, thresholds[name], n_resamples),
            "busi_test": malignant_figures(test_labels, test_probs[name], thresholds[name],
                                           n_resamples),
            "external_probs": np.round(probs, 6).tolist(),
        }
    return {
        "name": NAME, "citation": CITATION, "dir": str(root), "stride": stride,
        "n": len(data["files"]),
        "class_counts": {c: int((data["labels"] == i).sum()) for i, c in enumerate(CLASS_NAMES)},
        "files": data["files"], "labels": data["labels"].tolist(),
        "variants": variants,
    }
