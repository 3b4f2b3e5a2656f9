"""The report's figures (matplotlib, Agg backend), drawn from the results dict alone."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from benchmarks.cam_eval import plot_cam_examples  # noqa: E402
from edge_infer.spec import CLASS_NAMES  # noqa: E402

PLOTS: dict[str, str] = {
    "latency": "latency.png",
    "accuracy_vs_size": "accuracy_vs_size.png",
    "confusion_matrices": "confusion_matrices.png",
    "reliability": "reliability.png",
    "reliability_calibration": "reliability_calibration.png",
    "cam_examples": "cam_examples.png",
}
DPI = 120


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_latency(results: dict, path: Path) -> None:
    """Single-image p50 (bars) and p90 (whiskers), end to end and model only, per thread count."""
    latency = results["latency"]
    rows = list(latency["rows"])
    figure, axes = plt.subplots(1, len(latency["threads"]), squeeze=False,
                                figsize=(6 * len(latency["threads"]), 0.5 * len(rows) + 2))
    for ax, threads in zip(axes[0], (str(t) for t in latency["threads"])):
        for offset, kind, label in ((-0.2, "end_to_end_ms", "end to end"),
                                    (0.2, "model_only_ms", "model only")):
            stats = [latency["rows"][row]["by_threads"][threads][kind] for row in rows]
            p50 = [s["p50"] for s in stats]
            whisker = [[0] * len(stats), [s["p90"] - s["p50"] for s in stats]]
            ax.barh([i + offset for i in range(len(rows))], p50, height=0.4, xerr=whisker,
                    capsize=3, label=f"{label} (p50, whisker p90)")
        ax.set_yticks(range(len(rows)), rows)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds per image (log scale)")
        ax.set_title(f"Single-image latency, {threads} thread{'' if threads == '1' else 's'}")
        ax.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def plot_accuracy_vs_size(results: dict, path: Path) -> None:
    """Test accuracy (95 % bootstrap interval) against model file size."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for name, info in results["variants"].items():
        accuracy = info["accuracy"]["accuracy"]
        low, high = info["accuracy"]["intervals_95"]["accuracy"]
        size = info["bytes"] / 1e6
        ax.errorbar(size, accuracy, yerr=[[accuracy - low], [high - accuracy]], fmt="o",
                    capsize=4, label=f"{name} ({size:.1f} MB)")
    ax.set_xlim(left=0)
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("model file size (MB)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs size (bars: 95 % bootstrap interval)")
    _save(figure, path)


def plot_confusion_matrices(results: dict, path: Path) -> None:
    """One test-split confusion matrix (argmax) per variant."""
    names = list(results["variants"])
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(3.6 * columns, 3.4 * rows))
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        _draw_confusion(ax, results["variants"][name]["accuracy"]["confusion_matrix"], name)
    _save(figure, path)


def _draw_confusion(ax, matrix: list[list[int]], title: str) -> None:
    """One argmax confusion matrix (rows true, columns predicted) with its counts."""
    ax.imshow(matrix, cmap="Blues")
    dark = max(max(row) for row in matrix) / 2
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if count > dark else "black")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
    ax.set_xlabel("predicted (argmax)", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=10)


def _draw_reliability(ax, curves: dict[str, tuple[list[dict], float]], title: str) -> None:
    """Reliability diagram: accuracy against mean top-label confidence per bin, per curve."""
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for name, (bins, ece) in curves.items():
        bins = [b for b in bins if b["n"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                markersize=4, label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)


def plot_reliability(results: dict, path: Path) -> None:
    """Reliability diagram of every variant on the test split."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    _draw_reliability(ax, {name: (info["accuracy"]["reliability"],
                                  info["accuracy"]["expected_calibration_error"])
                           for name, info in results["variants"].items()},
                      "Reliability on the test split")
    _save(figure, path)


def plot_reliability_calibration(results: dict, path: Path) -> None:
    """Reliability of every variant on the test split before and after its temperature."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, stage, title in ((axes[0], "before", "Model outputs (no temperature)"),
                             (axes[1], "after", "Temperature-scaled (as the runtime reports)")):
        _draw_reliability(ax, {name: (info["reliability"][stage], info["ece"][stage])
                               for name, info in results["calibration"].items()}, title)
    _save(figure, path)


def make_plots(results: dict, out: Path) -> dict[str, str]:
    """Draw every figure into out; returns figure name -> file name."""
    plot_latency(results, out / PLOTS["latency"])
    plot_accuracy_vs_size(results, out / PLOTS["accuracy_vs_size"])
    plot_confusion_matrices(results, out / PLOTS["confusion_matrices"])
    plot_reliability(results, out / PLOTS["reliability"])
    plot_reliability_calibration(results, out / PLOTS["reliability_calibration"])
    plot_cam_examples(results, out / PLOTS["cam_examples"])
    return dict(PLOTS)


# --- `edge-infer evaluate --plots DIR` ------------------------------------------------------

EVALUATION_PLOTS: dict[str, str] = {
    "confusion_matrix": "confusion_matrix.png",
    "roc_curve": "roc_curve.png",
    "reliability": "reliability.png",
}


def plot_roc(report: dict, path: Path) -> None:
    """The benign-vs-malignant ROC curve of prob_malignant (or a note that it is undefined)."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="chance")
    roc = report["roc_benign_vs_malignant"]
    if roc:
        auc = report["metrics"]["auc_benign_vs_malignant"]
        ax.plot(roc["fpr"], roc["tpr"], "-", label=f"{report['model']['key']} (AUROC {auc:.3f})")
    else:
        ax.text(0.5, 0.5, "undefined: needs benign and malignant images", ha="center",
                va="center", fontsize=9)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (benign called malignant)")
    ax.set_ylabel("sensitivity (malignant called malignant)")
    ax.set_title("Benign vs malignant: ROC of P(malignant)")
    ax.legend(fontsize=7, loc="lower right")
    _save(figure, path)


def make_evaluation_plots(report: dict, out: Path) -> dict[str, str]:
    """The confusion matrix, ROC curve and reliability diagram of one `edge-infer evaluate`
    report, drawn into out; returns figure name -> file name."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, key = report["metrics"], report["model"]["key"]
    figure, ax = plt.subplots(figsize=(4.2, 4))
    _draw_confusion(ax, metrics["confusion_matrix"], f"{key}, {report['n_images']} images")
    _save(figure, out / EVALUATION_PLOTS["confusion_matrix"])
    plot_roc(report, out / EVALUATION_PLOTS["roc_curve"])
    figure, ax = plt.subplots(figsize=(5.5, 5))
    _draw_reliability(ax, {key: (metrics["reliability"],
                                 metrics["expected_calibration_error"])}, "Reliability")
    _save(figure, out / EVALUATION_PLOTS["reliability"])
    return dict(EVALUATION_PLOTS)
