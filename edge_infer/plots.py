"""The figures of `edge-infer evaluate --plots` (matplotlib, Agg backend, imported only when
plots are asked for), and the drawing helpers the benchmark's figures share."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from edge_infer.spec import CLASS_NAMES  # noqa: E402

DPI = 120


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def draw_confusion(ax, matrix: list[list[int]], title: str) -> None:
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


def draw_reliability(ax, curves: dict[str, tuple[list[dict], float]], title: str) -> None:
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
    save_figure(figure, path)


def make_evaluation_plots(report: dict, out: Path) -> dict[str, str]:
    """The confusion matrix, ROC curve and reliability diagram of one `edge-infer evaluate`
    report, drawn into out; returns figure name -> file name."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, key = report["metrics"], report["model"]["key"]
    figure, ax = plt.subplots(figsize=(4.2, 4))
    draw_confusion(ax, metrics["confusion_matrix"], f"{key}, {report['n_images']} images")
    save_figure(figure, out / EVALUATION_PLOTS["confusion_matrix"])
    plot_roc(report, out / EVALUATION_PLOTS["roc_curve"])
    figure, ax = plt.subplots(figsize=(5.5, 5))
    draw_reliability(ax, {key: (metrics["reliability"],
                                 metrics["expected_calibration_error"])}, "Reliability")
    save_figure(figure, out / EVALUATION_PLOTS["reliability"])
    return dict(EVALUATION_PLOTS)
