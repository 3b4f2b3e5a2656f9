"""The report's figures (matplotlib, Agg backend), drawn from the results dict alone."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from benchmarks.cam_eval import plot_cam_examples  # noqa: E402
from edge_infer.plots import draw_confusion, draw_reliability, save_figure  # noqa: E402

PLOTS: dict[str, str] = {
    "latency": "latency.png",
    "accuracy_vs_size": "accuracy_vs_size.png",
    "confusion_matrices": "confusion_matrices.png",
    "reliability": "reliability.png",
    "reliability_calibration": "reliability_calibration.png",
    "cam_examples": "cam_examples.png",
}


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
    save_figure(figure, path)


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
    save_figure(figure, path)


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
        draw_confusion(ax, results["variants"][name]["accuracy"]["confusion_matrix"], name)
    save_figure(figure, path)


def plot_reliability(results: dict, path: Path) -> None:
    """Reliability diagram of every variant on the test split."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    draw_reliability(ax, {name: (info["accuracy"]["reliability"],
                                  info["accuracy"]["expected_calibration_error"])
                           for name, info in results["variants"].items()},
                      "Reliability on the test split")
    save_figure(figure, path)


def plot_reliability_calibration(results: dict, path: Path) -> None:
    """Reliability of every variant on the test split before and after its temperature."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, stage, title in ((axes[0], "before", "Model outputs (no temperature)"),
                             (axes[1], "after", "Temperature-scaled (as the runtime reports)")):
        draw_reliability(ax, {name: (info["reliability"][stage], info["ece"][stage])
                               for name, info in results["calibration"].items()}, title)
    save_figure(figure, path)


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
