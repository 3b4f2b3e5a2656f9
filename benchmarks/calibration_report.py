"""The report's calibration figures: each variant before and after its temperature (ECE, Brier,
NLL, reliability; sensitivity and specificity at the calibrated threshold on the test split), and
a simulated new clinic: BrEaST-Lesions_USG split in two halves by case, a site profile fitted
on one half (`edge-infer calibrate`'s own function) and tested on the other, both ways.

The two-halves simulation is the one place where BrEaST is used for fitting, and the fit never
sees the half it is tested on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.external import load_external
from benchmarks.site_halves import halves_by_case
from edge_infer.calibration import (
    Calibration,
    apply_temperature,
    fit_temperature,
    negative_log_likelihood,
)
from edge_infer.evaluation import malignant_figures
from edge_infer.metrics import brier_score, expected_calibration_error, reliability_bins
from edge_infer.site_profile import fit_site_profile
from edge_infer.spec import CLASS_NAMES
from train.datasets import LABELS_FILENAME

SITE_VARIANT = "tflite-int8"
HALVES_SEED = 0
SITE_TARGET_SENSITIVITY = 0.90


def calibration_results(raw_test_probs: dict[str, np.ndarray], test_labels: np.ndarray,
                        calibrations: dict[str, dict], n_resamples: int) -> dict:
    """Per variant: its temperature (and where it came from), ECE / Brier / NLL and reliability
    bins of the raw and the calibrated test probabilities, and the malignant figures at the
    calibrated threshold with bootstrap intervals; and, as a diagnostic only, the temperature the
    test split itself would pick. `calibrations[name]`: temperature (None: not fitted),
    threshold, source."""
    results = {}
    for name, raw in raw_test_probs.items():
        chosen = calibrations[name]
        stages = {"before": np.asarray(raw, dtype=np.float64),
                  "after": apply_temperature(raw, chosen["temperature"])}
        results[name] = {
            **chosen,
            **{metric: {stage: function(test_labels, probs) for stage, probs in stages.items()}
               for metric, function in (("ece", expected_calibration_error),
                                        ("brier", brier_score),
                                        ("nll", lambda y, p: negative_log_likelihood(p, y)),
                                        ("reliability", reliability_bins))},
            "test": malignant_figures(test_labels, stages["after"], chosen["threshold"],
                                      n_resamples),
            # a diagnostic of how far validation and test disagree; never used for anything
            "temperature_best_on_test": fit_temperature(raw, test_labels),
        }
    return results


def case_halves(root: Path, files: list[str], labels: np.ndarray,
                seed: int = HALVES_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of the external images, split by case (labels.csv's case_id),
    stratified by class, with a fixed seed: each class's cases shuffled, the first half to A."""
    with open(root / LABELS_FILENAME, newline="", encoding="utf-8-sig") as handle:
        case_of = {row["file"]: row["case_id"] for row in csv.DictReader(handle)}
    return halves_by_case([case_of[file] for file in files], labels,
                          np.random.default_rng(seed))


def _profile_summary(profile: dict) -> dict:
    keep = ("temperature", "threshold", "counts", "figures", "warnings")
    return {key: profile[key] for key in keep}


def site_simulation(root: Path, data: dict, raw_predict: Callable[[np.ndarray], np.ndarray],
                    shipped: Calibration, model: dict, n_resamples: int) -> dict:
    """Fit a site profile on one half of the external images and test it on the other, both
    ways, beside the shipped temperature and threshold (from the model's validation data) on the
    same half.
    `data`: the external set as `benchmarks.external.load_external` gives it."""
    labels, raw = data["labels"], raw_predict(data["images"])
    halves = dict(zip("AB", case_halves(root, data["files"], labels)))
    runs = []
    for fit_half, test_half in (("A", "B"), ("B", "A")):
        fit_idx, test_idx = halves[fit_half], halves[test_half]
        profile = fit_site_profile(raw[fit_idx], labels[fit_idx], model,
                                   {"kind": "simulation", "description":
                                    f"BrEaST-Lesions_USG half {fit_half} (seed {HALVES_SEED})"},
                                   n_resamples=n_resamples)
        test_labels, test_raw = labels[test_idx], raw[test_idx]
        runs.append({
            "fit_half": fit_half, "test_half": test_half,
            "profile": _profile_summary(profile),
            "shipped": malignant_figures(test_labels,
                                         apply_temperature(test_raw, shipped.temperature),
                                         shipped.threshold, n_resamples),
            "site": malignant_figures(test_labels,
                                      apply_temperature(test_raw, profile["temperature"]),
                                      profile["threshold"], n_resamples),
        })
    return {
        "variant": SITE_VARIANT, "model": model, "seed": HALVES_SEED,
        "halves": {half: {"n": len(idx), "class_counts": {
            c: int((labels[idx] == i).sum()) for i, c in enumerate(CLASS_NAMES)}}
            for half, idx in halves.items()},
        "shipped": {"temperature": shipped.temperature, "threshold": shipped.threshold},
        "target_sensitivity": SITE_TARGET_SENSITIVITY,
        "runs": runs,
        "target_met": all(run["site"]["high_sensitivity"]["sensitivity"]
                          >= SITE_TARGET_SENSITIVITY for run in runs),
    }


def calibrated_predictor(predict: Callable[[np.ndarray], np.ndarray],
                         temperature: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """A variant's predict, through its temperature (what the runtime reports)."""
    return lambda images: apply_temperature(predict(images), temperature)


def spec_calibrations(specs: dict) -> dict[str, dict]:
    """Each benchmarked variant's temperature, threshold and where they came from."""
    def source(spec) -> str:
        if spec.runtime == "onnx":
            return "BUSI val, fitted here"
        return "its validation data (manifest)" if spec.temperature is not None else \
            "none in the manifest (run python -m busi calibrate)"
    return {name: {"temperature": spec.temperature, "threshold": spec.threshold,
                   "source": source(spec)} for name, spec in specs.items()}


def site_section(root: Path, stride: int, runners: dict, n_resamples: int) -> dict:
    """The two-halves simulation for the shipped int8 model (every stride-th external image),
    or why it was skipped."""
    runner = runners.get(SITE_VARIANT)
    if runner is None:
        return {"skipped": f"no {SITE_VARIANT} model in the manifest"}
    classifier = runner.classifier
    return site_simulation(root, load_external(root, stride), runner.model.predict,
                           classifier.calibration, classifier.model_info, n_resamples)
