"""`edge-infer evaluate`: one model on a labelled set of images: every figure with its
bootstrap interval, a readable summary, and the JSON behind it.

Every figure comes from `benchmarks.metrics`. The external-hospital section of the benchmark
report uses `malignant_figures` from here, so `edge-infer evaluate` on the same images gives
the same numbers. Needs scikit-learn (the [evaluate] extra): `edge_infer.cli` imports this module
only when `evaluate` runs, so the runtime stays light.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_infer.classifier import Classifier
from edge_infer.decision import Mode
from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, SPLIT_FILENAME, models_dir
from edge_infer.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    auc_benign_vs_malignant,
    bootstrap_statistics,
    classification_metrics,
    evaluation_statistics,
    expected_calibration_error,
    malignant_called,
    malignant_recall_specificity,
    malignant_statistics,
    reliability_bins,
    roc_benign_vs_malignant,
)
from edge_infer.preprocess import ImageError
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX
from edge_infer.splits import read_split

SCHEMA_VERSION = 1
INTERVAL_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "malignant_recall",
                                  "malignant_specificity", "auc_benign_vs_malignant")


@dataclass
class Predictions:
    """What the classifier said about each labelled image it could read, and what it could
    not read as (file, reason)."""

    files: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def probs(self) -> np.ndarray:
        """(N, 3) class probabilities in CLASS_NAMES order."""
        return np.array([[d["probs"][c] for c in CLASS_NAMES] for d in self.decisions],
                        dtype=np.float64).reshape(-1, len(CLASS_NAMES))


def classify_labelled(classifier: Classifier, items: list[tuple[Path, str]], mode: Mode,
                      threshold: float | None, progress: bool = True,
                      say: Callable[[str], None] = print) -> Predictions:
    """Decode, preprocess and classify each (image, label) exactly as `edge-infer classify`
    does; unreadable images are collected, not raised. A progress bar on stderr if asked."""
    done = Predictions()
    per_run = {"model", *classifier.calibration.info()}  # in the report once, not per image
    for path, label in tqdm(items, unit="img", file=sys.stderr, disable=not progress):
        try:
            # labelled anyway ("warn"): every figure covers every image, as before the check
            record = classifier.predict(path, mode, threshold, "warn").to_dict()
        except ImageError as err:
            done.failures.append((str(path), str(err)))
            continue
        for note in record["notes"]:
            say(f"note: {path}: {note}")
        done.files.append(str(path))
        done.labels.append(CLASS_NAMES.index(label))
        done.decisions.append({k: v for k, v in record.items() if k not in per_run})
    return done


def seen_in_fitting(files: list[str], folder: Path | None = None) -> list[str]:
    """The files whose names are images of a shipped split's train or validation part (BUSI's
    or BUS-BRA's): the model was fitted or tuned on them, so its figures there flatter it."""
    folder = folder or models_dir()
    seen = {Path(row.file).name for name in (SPLIT_FILENAME, BUS_BRA_SPLIT_FILENAME)
            if (folder / name).is_file()
            for row in read_split(folder / name) if row.split in ("train", "val")}
    return [file for file in files if Path(file).name in seen]


def out_of_distribution(files: list[str], labels: list[int], decisions: list[dict]) -> dict:
    """What the model's input check says of the evaluated images (at a clinic of breast
    scans, every refusal is a false alarm): how many it would refuse as not breast ultrasound
    and how many it labels with a domain warning, in all and per class, and which; checked
    False: no fitted check."""
    tiers = ["warned" if d["domain_warning"] else "refused" if d["in_distribution"] is False
             else "" for d in decisions]
    checked = any(d["in_distribution"] is not None for d in decisions)
    per_class = {name: {tier: sum(t == tier for t, label in zip(tiers, labels) if label == i)
                        for tier in ("refused", "warned")}
                 for i, name in enumerate(CLASS_NAMES)}
    return {"checked": checked, "n": len(decisions),
            "refused": tiers.count("refused"), "warned": tiers.count("warned"),
            "per_class": per_class,
            "files_refused": [f for f, t in zip(files, tiers) if t == "refused"],
            "files_warned": [f for f, t in zip(files, tiers) if t == "warned"]}


def _quietly(compute: Callable[[], dict]) -> dict:
    """Run compute without sklearn's warnings about classes a (resampled) set lacks: the
    figures they concern come out as 0 or NaN and are shown as such."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UndefinedMetricWarning is one
        warnings.simplefilter("ignore", RuntimeWarning)  # nanpercentile of all-NaN resamples
        return compute()


def malignant_figures(y_true: np.ndarray, probs: np.ndarray, threshold: float | None,
                      n_resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> dict:
    """Malignant sensitivity and specificity (non-malignant images not called malignant) at
    argmax and, if a threshold is given, in high-sensitivity mode at it; and the benign-vs-
    malignant AUROC of P(malignant). Each with its 95 % bootstrap interval (same resamples)."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)

    def compute() -> dict:
        rules = {"argmax": None, "high_sensitivity": threshold}
        statistics = {"auc_benign_vs_malignant": malignant_statistics(
            y_true, probs, None)["auc_benign_vs_malignant"]}
        for rule, t in rules.items():
            if rule == "argmax" or t is not None:
                chosen = malignant_statistics(y_true, probs, t)
                statistics[f"{rule}_sensitivity"] = chosen["malignant_recall"]
                statistics[f"{rule}_specificity"] = chosen["malignant_specificity"]
        intervals = bootstrap_statistics(statistics, len(y_true), n_resamples, seed)
        result = {
            "n": int(y_true.size),
            "class_counts": {c: int((y_true == i).sum()) for i, c in enumerate(CLASS_NAMES)},
            "auc_benign_vs_malignant": {
                "value": auc_benign_vs_malignant(y_true, probs[:, MALIGNANT_INDEX]),
                "interval_95": intervals["auc_benign_vs_malignant"]},
        }
        for rule, t in rules.items():
            if rule != "argmax" and t is None:
                result[rule] = None
                continue
            sensitivity, specificity = malignant_recall_specificity(
                y_true, malignant_called(probs, t))
            result[rule] = {
                "threshold": None if t is None else float(t),
                "sensitivity": sensitivity, "specificity": specificity,
                "intervals_95": {"sensitivity": intervals[f"{rule}_sensitivity"],
                                 "specificity": intervals[f"{rule}_specificity"]}}
        return result

    return _quietly(compute)


def evaluate_predictions(y_true: np.ndarray, probs: np.ndarray, threshold: float | None,
                         n_resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> dict:
    """Every figure of a labelled set: the metrics (3-class figures by argmax; malignant
    calls at argmax and, if threshold is given, at it), calibration, the benign-vs-malignant
    ROC curve, and 95 % bootstrap intervals of the headline figures."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)

    def compute() -> dict:
        metrics = classification_metrics(y_true, probs, threshold)
        metrics.update(
            expected_calibration_error=expected_calibration_error(y_true, probs),
            reliability=reliability_bins(y_true, probs))
        recall, specificity = malignant_recall_specificity(
            y_true, malignant_called(probs, threshold))
        metrics.update(malignant_recall=recall, malignant_specificity=specificity)  # rule in use
        metrics.setdefault("auc_benign_vs_malignant", math.nan)
        metrics.setdefault("roc_auc_ovr", math.nan)
        statistics = evaluation_statistics(y_true, probs, threshold)
        return {
            "metrics": metrics,
            "intervals_95": bootstrap_statistics({k: statistics[k] for k in INTERVAL_KEYS},
                                                 len(y_true), n_resamples, seed),
            "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95},
            "roc_benign_vs_malignant": roc_benign_vs_malignant(y_true,
                                                               probs[:, MALIGNANT_INDEX]),
        }

    return _quietly(compute)


def build_report(classifier: Classifier, predictions: Predictions, mode: str,
                 threshold: float | None, threshold_source: str | None, source: dict,
                 errors: list[dict], notes: list[str], n_resamples: int) -> dict:
    """The whole result of one `edge-infer evaluate` run (what --json writes)."""
    y_true = np.array(predictions.labels, dtype=np.int64)
    report = {
        "schema_version": SCHEMA_VERSION,
        "model": classifier.model_info,
        **classifier.calibration.info(),
        "source": source,
        "mode": mode,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "n_images": len(predictions.files),
        "class_counts": {c: int((y_true == i).sum()) for i, c in enumerate(CLASS_NAMES)},
        **evaluate_predictions(y_true, predictions.probs, threshold, n_resamples),
        "errors": errors,
        "notes": notes,
        "out_of_distribution": out_of_distribution(predictions.files, predictions.labels,
                                                   predictions.decisions),
        "seen_in_fitting": seen_in_fitting(predictions.files),
        "predictions": [{"file": file, "label": CLASS_NAMES[label], **decision}
                        for file, label, decision in zip(predictions.files, predictions.labels,
                                                         predictions.decisions)],
    }
    return report


# --- the summary a person reads -------------------------------------------------------------


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if _undefined(value) else f"{value:.{digits}f}"


def _interval(report: dict, key: str) -> str:
    low, high = report["intervals_95"][key]
    if _undefined(low) or _undefined(high):
        return ""
    return f"[{low:.3f}, {high:.3f}]"


def summary_lines(report: dict) -> list[str]:
    """The figures of a report as plain text (what `edge-infer evaluate` prints)."""
    metrics, counts = report["metrics"], report["class_counts"]
    threshold = report["threshold"]
    rule = ("argmax" if threshold is None else
            f"high-sensitivity, T = {threshold:.3f} ({report['threshold_source']})")
    n_lesions = counts["benign"] + counts["malignant"]
    lines = [
        f"Evaluated {report['n_images']} images with {report['model']['key']} "
        f"({report['source']['kind']}: {report['source']['path']})",
        "Images: " + ", ".join(f"{counts[c]} {c}" for c in CLASS_NAMES),
    ]
    temperature = report["temperature"]
    lines.append("Probabilities: " + ("uncalibrated (no temperature fitted)" if temperature is None
                                      else f"temperature {temperature:.3f}")
                 + f", profile {report['profile']}")
    if report["errors"]:
        lines.append(f"Not evaluated: {len(report['errors'])} input(s), named on stderr")
    if report["seen_in_fitting"]:
        lines.append(f"warning: {len(report['seen_in_fitting'])} of these images are named like "
                     "images of the model's own training or validation split: its figures on "
                     "them flatter it (evaluate on images it has not seen)")
    ood = report["out_of_distribution"]
    if ood["checked"]:
        by_class = ", ".join(f"{name} {ood['per_class'][name]['refused']} / "
                             f"{ood['per_class'][name]['warned']}" for name in CLASS_NAMES)
        lines += [f"Not like breast ultrasound (edge-infer would refuse them): {ood['refused']} "
                  f"of {ood['n']} images; unlike the training hospitals' scans (labelled with "
                  f"a domain warning): {ood['warned']}; per class refused / warned: "
                  f"{by_class}. All are included in the figures below"]
    else:
        lines.append("Not checked for being breast ultrasound (the model has no fitted check)")
    lines += [
        f"Malignant calls: {rule}. Accuracy, per-class figures and the confusion matrix use "
        "argmax.",
        "",
        f"{'':34} {'value':>6}  95 % interval",
    ]
    rows = [
        ("accuracy", "accuracy", ""),
        ("balanced accuracy", "balanced_accuracy", ""),
        ("macro-F1", "macro_f1", ""),
        ("malignant sensitivity", "malignant_recall", "malignant images called malignant"),
        ("malignant specificity", "malignant_specificity",
         "other images not called malignant"),
        ("ROC-AUC benign vs malignant", "auc_benign_vs_malignant",
         f"P(malignant), {n_lesions} benign + malignant images"),
    ]
    for label, key, note in rows:
        interval = _interval(report, key)
        lines.append(f"{label:34} {_num(metrics[key]):>6}  {interval or '—':18} {note}".rstrip())
    if not math.isnan(metrics["roc_auc_ovr"]):
        lines.append(f"{'ROC-AUC one-vs-rest (macro)':34} {_num(metrics['roc_auc_ovr']):>6}")
    lines.append(f"{'expected calibration error':34} "
                 f"{_num(metrics['expected_calibration_error']):>6}")
    if threshold is not None:
        lines.append(f"at argmax instead: sensitivity {_num(metrics['malignant_recall_argmax'])}"
                     f", specificity {_num(metrics['malignant_specificity_argmax'])}")
    lines += ["", f"{'class':10} {'precision':>9} {'recall':>7} {'n':>5}"]
    predicted = np.array(metrics["confusion_matrix"]).sum(axis=0)
    for i, name in enumerate(CLASS_NAMES):
        per_class = metrics["per_class"][name]
        precision = per_class["precision"] if predicted[i] else None
        recall = per_class["recall"] if per_class["n"] else None
        lines.append(f"{name:10} {_num(precision):>9} {_num(recall):>7} {per_class['n']:>5}")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted by argmax)",
              f"{'':10} " + " ".join(f"{c:>9}" for c in CLASS_NAMES)]
    for name, row in zip(CLASS_NAMES, metrics["confusion_matrix"]):
        lines.append(f"{name:10} " + " ".join(f"{v:>9}" for v in row))
    boot = report["bootstrap"]
    lines += ["", f"Intervals: percentile bootstrap over images, {boot['resamples']} resamples, "
              f"seed {boot['seed']}. A research tool, not a diagnosis."]
    return lines


def json_ready(value):
    """NaN (an undefined metric) as JSON null, everywhere in a nested structure."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
