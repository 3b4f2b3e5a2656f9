"""int8 fidelity away from home: the shipped int8's top-1 agreement with the Keras model it came
from, on every set of every hospital (BUSI val + test, BUS-BRA val + test, BrEaST) and pooled,
with a Wilson 95 % interval, and each set's benign-vs-malignant AUROC for both models."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import binomtest

from edge_infer.decision import argmax_indices
from edge_infer.metrics import auc_benign_vs_malignant
from edge_infer.spec import MALIGNANT_INDEX

HEADING = "## int8 fidelity across sites"
TARGET_AGREEMENT = 0.985
TARGET_AUROC_GAP = 0.01
POOLED = "pooled"


def _agreement(keras: np.ndarray, int8: np.ndarray) -> dict:
    same = int((argmax_indices(keras) == argmax_indices(int8)).sum())
    interval = binomtest(same, len(keras)).proportion_ci(method="wilson")
    return {"images": len(keras), "agreeing": same, "agreement": same / len(keras),
            "interval_95": [float(interval.low), float(interval.high)]}


def fidelity_results(sets: dict[str, tuple[np.ndarray, np.ndarray]],
                     keras: Callable[[np.ndarray], np.ndarray],
                     int8: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Agreement and AUROC of both models per named set of (images, labels), and pooled."""
    rows, pooled = {}, {"keras": [], "int8": []}
    for name, (images, labels) in sets.items():
        probs = {"keras": keras(images), "int8": int8(images)}
        aurocs = {model: auc_benign_vs_malignant(labels, p[:, MALIGNANT_INDEX])
                  for model, p in probs.items()}
        rows[name] = {**_agreement(probs["keras"], probs["int8"]),
                      "auroc_keras": aurocs["keras"], "auroc_int8": aurocs["int8"]}
        for model in pooled:
            pooled[model].append(probs[model])
    rows[POOLED] = _agreement(np.concatenate(pooled["keras"]), np.concatenate(pooled["int8"]))
    return {"sets": rows, "target_agreement": TARGET_AGREEMENT,
            "target_auroc_gap": TARGET_AUROC_GAP}


def fidelity_section(results: dict) -> list[str]:
    """The report's table: agreement [Wilson 95 %] and AUROC per set, then pooled."""
    fidelity = results.get("fidelity")
    lines = [HEADING, ""]
    if not fidelity or "skipped" in fidelity:
        reason = (fidelity or {}).get("skipped", "this run has no fidelity results")
        return lines + [f"Skipped: {reason}.", ""]
    lines += ["Top-1 agreement (argmax) of the shipped int8 with the Keras model, and the "
              "benign-vs-malignant AUROC of each. Target: agreement ≥ "
              f"{fidelity['target_agreement']:.1%} pooled, AUROC within "
              f"{fidelity['target_auroc_gap']} on each set.", "",
              "| set | images | agreeing | agreement [95 % Wilson] | AUROC Keras | AUROC int8 |"
              " Δ AUROC |", "|---|---|---|---|---|---|---|"]
    for name, row in fidelity["sets"].items():
        low, high = row["interval_95"]
        cells = [f"**{name}**" if name == POOLED else name, str(row["images"]),
                 str(row["agreeing"]), f"{row['agreement']:.1%} [{low:.1%}, {high:.1%}]"]
        if name == POOLED:
            cells += ["", "", ""]
        else:
            cells += [f"{row['auroc_keras']:.3f}", f"{row['auroc_int8']:.3f}",
                      f"{row['auroc_int8'] - row['auroc_keras']:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
