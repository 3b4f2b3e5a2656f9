"""Site profiles: a clinic's own temperature and high-sensitivity threshold for one model.

`edge-infer calibrate` fits one from the clinic's labelled images (the model's uncalibrated
outputs, so a profile never builds on the shipped temperature) and writes it as JSON; `--site`
makes classify, evaluate and the server use it instead of the manifest's. A profile names the
model file it was fitted for by sha256 and is refused by any other.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_infer.calibration import (
    TARGET_MALIGNANT_RECALL,
    TEMPERATURE_BOUNDS,
    Calibration,
    apply_temperature,
    at_search_bound,
    fit_calibration,
)
from edge_infer.jsonfile import JsonFileError, read_json
from edge_infer.manifest import ModelEntry, ModelError, sha256_of
from edge_infer.rates import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    malignant_called,
    malignant_recall_specificity,
)
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX

PROFILE_KIND = "busi-edge site profile"
SCHEMA_VERSION = 1
MAX_PROFILE_BYTES = 2**20  # a written profile is a few KiB
# Below 20 malignant images one miss is already more than 5 %: the threshold must catch every
# one of them and says little about the next malignant lesion.
MIN_MALIGNANT = 20
# Below these a profile is refused: with fewer than 5 malignant images the threshold is just the
# lowest of a handful of probabilities and a bootstrap of them is meaningless; with fewer than
# 5 normal or benign ones the temperature is fitted (and the threshold kept) against almost no
# image it must not call malignant, and the specificity is undefined or a guess.
MIN_MALIGNANT_TO_FIT = 5
MIN_OTHER_TO_FIT = 5
WEAK_LOWER_BOUND = 0.90
NEW_CASES_METHOD = ("out-of-bag bootstrap: temperature and threshold refitted on each resample "
                    "of the images, sensitivity measured on the malignant images it left out, "
                    "pooled over resamples")
FITTING_METHOD = ("percentile bootstrap over the fitting images at the fitted threshold "
                  "(optimistic: the threshold was chosen on these images)")


class ProfileError(ModelError):
    """A site profile that cannot be read, or was fitted for another model."""


def _new_cases_sensitivity(raw_probs: np.ndarray, labels: np.ndarray, target: float,
                           n_resamples: int, seed: int) -> dict:
    """Sensitivity on images a refit did not see (out-of-bag bootstrap, pooled): how far the
    figure on the fitting images flatters the threshold."""
    everything = np.arange(len(labels))
    rng = np.random.default_rng(seed)
    caught = seen = 0
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), size=len(labels))
        left_out = np.setdiff1d(everything, idx)
        malignant = left_out[labels[left_out] == MALIGNANT_INDEX]
        if not malignant.size or not (labels[idx] == MALIGNANT_INDEX).any():
            continue
        fit = fit_calibration(raw_probs[idx], labels[idx], target)
        caught += int(malignant_called(apply_temperature(raw_probs[malignant], fit.temperature),
                                       fit.threshold).sum())
        seen += malignant.size
    return {"value": caught / seen if seen else None, "method": NEW_CASES_METHOD}


def _defined(value: float) -> float | None:
    """A figure, or None (JSON null) when it is undefined: specificity without a
    non-malignant image."""
    return None if math.isnan(value) else value


def too_few_to_fit(counts: dict[str, int]) -> str | None:
    """Why these labelled images (images per class) are too few for a profile, or None:
    fewer than MIN_MALIGNANT_TO_FIT malignant or MIN_OTHER_TO_FIT normal + benign ones."""
    others = counts.get("normal", 0) + counts.get("benign", 0)
    if counts.get("malignant", 0) >= MIN_MALIGNANT_TO_FIT and others >= MIN_OTHER_TO_FIT:
        return None
    return (f"too few labelled images for a site profile: {counts.get('malignant', 0)} "
            f"malignant and {others} normal or benign ({counts.get('normal', 0)} normal, "
            f"{counts.get('benign', 0)} benign); at least {MIN_MALIGNANT_TO_FIT} malignant and "
            f"{MIN_OTHER_TO_FIT} normal or benign are needed (~50 in all, 20 malignant, for a "
            "sound promise)")


def profile_warnings(n_malignant: int, interval_low: float | None, new_cases: float | None,
                     target: float, temperature: float | None = None) -> list[str]:
    """Why the profile is weak (empty when it is not): a temperature at a bound of its search
    range, too few malignant images, a bootstrap interval reaching below WEAK_LOWER_BOUND, or
    refits that fall below it on images they did not see."""
    found = []
    if temperature is not None and at_search_bound(temperature):
        low = temperature < math.sqrt(TEMPERATURE_BOUNDS[0] * TEMPERATURE_BOUNDS[1])
        why = ("every one is already classified right with margin to spare, so the calibrated "
               "probabilities are pushed to 0 and 1" if low else
               "the model is confidently wrong on them, so the calibrated probabilities are "
               "flattened towards one third each")
        found.append(f"the fitted temperature {temperature:.3g} sits at a bound of its search "
                     f"range [{TEMPERATURE_BOUNDS[0]}, {TEMPERATURE_BOUNDS[1]}]: these images "
                     f"do not pin it down ({why}); add images, including ones the model finds "
                     "hard")
    if n_malignant < MIN_MALIGNANT:
        found.append(f"only {n_malignant} malignant image(s): at least {MIN_MALIGNANT} are "
                     f"needed before a sensitivity of {target:.2f} can be measured (with fewer, "
                     "the threshold simply catches every one of them); add malignant cases")
    if interval_low is not None and interval_low < WEAK_LOWER_BOUND:
        found.append(f"the sensitivity's 95 % bootstrap interval reaches down to "
                     f"{interval_low:.2f}: too few malignant images to promise {target:.2f}")
    if new_cases is not None and new_cases < WEAK_LOWER_BOUND:
        found.append(f"refitted on resamples, the threshold caught only {new_cases:.2f} of the "
                     f"malignant images each refit had not seen: expect less than {target:.2f} "
                     "on new patients")
    return found


def fit_site_profile(raw_probs: np.ndarray, labels: np.ndarray, model: dict, source: dict,
                     target: float = TARGET_MALIGNANT_RECALL,
                     n_resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """The profile (JSON-ready) fitted on a site's labelled images: `raw_probs` are the model's
    uncalibrated outputs (N, 3), `model` its key, variant and sha256, `source` where the images
    came from. ValueError when no image is malignant, or the images are too few
    (`too_few_to_fit`)."""
    raw_probs = np.asarray(raw_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    counts = {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    if not counts["malignant"]:
        raise ValueError("no malignant image among the labelled images: a threshold for "
                         "malignant sensitivity cannot be fitted without some")
    if reason := too_few_to_fit(counts):
        raise ValueError(reason)
    fit = fit_calibration(raw_probs, labels, target)
    called = malignant_called(apply_temperature(raw_probs, fit.temperature), fit.threshold)
    sensitivity, specificity = malignant_recall_specificity(labels, called)
    intervals = {name: [_defined(bound) for bound in bootstrap_interval(
        lambda idx, k=k: malignant_recall_specificity(labels[idx], called[idx])[k],
        len(labels), n_resamples, seed=seed)] for k, name in enumerate(("sens", "spec"))}
    new_cases = _new_cases_sensitivity(raw_probs, labels, target, n_resamples, seed)
    return {
        "kind": PROFILE_KIND,
        "schema_version": SCHEMA_VERSION,
        "model": {key: model[key] for key in ("key", "variant", "sha256")},
        "temperature": fit.temperature,
        "threshold": fit.threshold,
        "target_sensitivity": target,
        "counts": {**counts, "total": int(labels.size)},
        "fit": {"nll_before": fit.nll_before, "nll_after": fit.nll_after,
                "temperature_bounds": list(TEMPERATURE_BOUNDS),
                "threshold_rule": f"highest T with malignant sensitivity >= {target} on these "
                                  "images, on their temperature-calibrated probabilities"},
        "figures": {
            "sensitivity": {"value": sensitivity, "interval_95": intervals["sens"],
                            "method": FITTING_METHOD},
            "specificity": {"value": _defined(specificity), "interval_95": intervals["spec"],
                            "method": FITTING_METHOD},
            "sensitivity_new_cases": new_cases,
        },
        "bootstrap": {"resamples": n_resamples, "seed": seed},
        "warnings": profile_warnings(counts["malignant"], intervals["sens"][0],
                                     new_cases["value"], target, fit.temperature),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
    }


def write_profile(profile: dict, path: str | os.PathLike) -> Path:
    """Write a profile as JSON."""
    path = Path(path)
    path.write_text(json.dumps(profile, indent=2, allow_nan=False) + "\n")
    return path


def _number(profile: dict, field: str, low: float, high: float, where: Path) -> float:
    value = profile.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and low <= value <= high):
        raise ProfileError(f"site profile {where}: {field} must be a number in [{low}, {high}], "
                           f"got {value!r}")
    return float(value)


def load_profile(path: str | os.PathLike, entry: ModelEntry) -> Calibration:
    """The temperature and threshold of a profile file, refused (ProfileError) when it cannot
    be read, is not a site profile, or was fitted for another model file than `entry`'s."""
    path = Path(path)
    try:
        profile = read_json(path, MAX_PROFILE_BYTES)
    except JsonFileError as err:
        raise ProfileError(f"cannot read site profile {path}: {err}") from None
    if not isinstance(profile, dict) or profile.get("kind") != PROFILE_KIND:
        raise ProfileError(f"{path} is not a site profile (made by `edge-infer calibrate`)")
    if profile.get("schema_version") != SCHEMA_VERSION:
        raise ProfileError(f"site profile {path}: schema version "
                           f"{profile.get('schema_version')!r}, this runtime reads "
                           f"{SCHEMA_VERSION}")
    model = profile.get("model") if isinstance(profile.get("model"), dict) else {}
    if model.get("sha256") != entry.info["sha256"]:
        raise ProfileError(
            f"site profile {path} was fitted for {model.get('key', 'another model')} (sha256 "
            f"{str(model.get('sha256'))[:12]}…), not for {entry.key} (sha256 "
            f"{entry.info['sha256'][:12]}…): run `edge-infer calibrate` with this model")
    temperature = _number(profile, "temperature", TEMPERATURE_BOUNDS[0], TEMPERATURE_BOUNDS[1],
                          path)
    threshold = _number(profile, "threshold", 0.0, 1.0, path)
    return Calibration(temperature, threshold, f"{path.name} (sha256 {sha256_of(path)[:12]})")


def _figure(block: dict) -> str:
    value, (low, high) = block["value"], block["interval_95"]
    if value is None:
        return "— (no such images)"
    return f"{value:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def profile_summary_lines(profile: dict, shipped: Calibration, path: Path) -> list[str]:
    """What `edge-infer calibrate` prints about the profile it wrote."""
    counts, figures = profile["counts"], profile["figures"]
    shipped_t = "none" if shipped.temperature is None else f"{shipped.temperature:.3f}"
    new_cases = figures["sensitivity_new_cases"]["value"]
    return [
        f"Site profile for {profile['model']['key']} from {counts['total']} images "
        f"({', '.join(f'{counts[c]} {c}' for c in CLASS_NAMES)}): {path}",
        f"temperature {profile['temperature']:.3f} (shipped {shipped_t}); high-sensitivity "
        f"threshold {profile['threshold']:.3f} (shipped {shipped.threshold:.3f})",
        f"on these images at that threshold: malignant sensitivity "
        f"{_figure(figures['sensitivity'])}, specificity {_figure(figures['specificity'])} "
        f"(95 % bootstrap, {profile['bootstrap']['resamples']} resamples)",
        "sensitivity of refits on images they did not see (out-of-bag): "
        + ("—" if new_cases is None else f"{new_cases:.3f}"),
        f"use it: edge-infer --site {path} IMAGE... | edge-infer evaluate --site {path} ... | "
        f"edge-infer serve --site {path}",
    ]
