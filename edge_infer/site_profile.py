"""Site profiles: a clinic's own temperature, high-sensitivity threshold, mode and input-check
level for one model.

`edge-infer calibrate` fits one from the clinic's labelled images (the model's uncalibrated
outputs, so a profile never builds on the shipped temperature) and writes it as JSON; `--site`
makes classify, evaluate and the server use it instead of the manifest's. The threshold is set
so that a 95 % lower confidence bound of sensitivity reaches the target (edge_infer/promise.py);
the profile states the mode it was made for (high-sensitivity by default), which `--site` uses
unless another is asked for; and it carries the site's own feature-distance level, so the
clinic's scans stop drawing the domain warning (the refuse boundary stays the model's). A
profile names the model file it was fitted for by sha256 and is refused by any other. Version 1
profiles (before the mode) still load and decide by argmax, as they did.
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
    fit_temperature,
    negative_log_likelihood,
)
from edge_infer.decision import MODES
from edge_infer.jsonfile import JsonFileError, read_json
from edge_infer.manifest import ModelEntry, ModelError, sha256_of
from edge_infer.ood import TARGET_FALSE_ALARM, OodDetector, choose_threshold
from edge_infer.promise import CONFIDENCE, EXACT, cases_for_exact, conservative_threshold
from edge_infer.rates import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    malignant_called,
    malignant_recall_specificity,
)
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX

PROFILE_KIND = "busi-edge site profile"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_MODE = "high-sensitivity"
MAX_PROFILE_BYTES = 2**20  # a written profile is a few KiB
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


def fit_rule(raw_probs: np.ndarray, labels: np.ndarray, target: float) -> tuple[float, float,
                                                                                dict]:
    """Temperature (by NLL), then the conservative high-sensitivity threshold on the calibrated
    malignant probabilities, and how it was found (`conservative_threshold`)."""
    temperature = fit_temperature(raw_probs, labels)
    malignant = apply_temperature(raw_probs[labels == MALIGNANT_INDEX], temperature)
    threshold, basis = conservative_threshold(malignant[:, MALIGNANT_INDEX], target)
    return temperature, threshold, basis


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
        if not malignant.size or (labels[idx] == MALIGNANT_INDEX).sum() < 2:
            continue
        temperature, threshold, _ = fit_rule(raw_probs[idx], labels[idx], target)
        caught += int(malignant_called(apply_temperature(raw_probs[malignant], temperature),
                                       threshold).sum())
        seen += malignant.size
    return {"value": caught / seen if seen else None, "method": NEW_CASES_METHOD}


def site_input_check(distances: np.ndarray, detector: OodDetector) -> dict:
    """The site's own feature-distance level: the warning threshold its scans would have at
    the model's false-alarm rate, never below the model's nor above its refuse boundary."""
    distances = np.asarray(distances, dtype=np.float64)
    level = choose_threshold(distances, TARGET_FALSE_ALARM)
    return {"warning_threshold": min(max(level, detector.threshold), detector.refuse_threshold),
            "site_level": level, "model_threshold": detector.threshold,
            "refuse_threshold": detector.refuse_threshold, "images": int(distances.size),
            "median_distance": float(np.median(distances)),
            "rule": f"the threshold flagging {TARGET_FALSE_ALARM:.0%} of these scans, kept "
                    "between the model's warning threshold and its refuse boundary"}


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
            f"{MIN_OTHER_TO_FIT} normal or benign are needed "
            f"({cases_for_exact(TARGET_MALIGNANT_RECALL)} malignant for an exact promise of "
            f"sensitivity {TARGET_MALIGNANT_RECALL})")


def profile_warnings(basis: dict, interval_low: float | None, new_cases: float | None,
                     target: float, temperature: float | None = None) -> list[str]:
    """Why the profile is weak (empty when it is not): a temperature at a bound of its search
    range, too few malignant images for an exact promise, a bootstrap interval reaching below
    WEAK_LOWER_BOUND, or refits that fall below it on images they did not see."""
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
    if basis["basis"] != EXACT:
        found.append(f"the promise is weak: it rests on only {basis['malignant_cases']} "
                     f"malignant image(s), and an exact promise of sensitivity {target:.2f} needs "
                     f"at least {cases_for_exact(target)}; the threshold comes from a prediction "
                     "bound that assumes the malignant scores are roughly normal; add malignant "
                     "cases")
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
                     seed: int = BOOTSTRAP_SEED, mode: str = DEFAULT_MODE,
                     input_check: dict | None = None) -> dict:
    """The profile (JSON-ready) fitted on a site's labelled images: `raw_probs` are the model's
    uncalibrated outputs (N, 3), `model` its key, variant and sha256, `source` where the images
    came from, `mode` the one it is made for, `input_check` the site's feature-distance level
    (`site_input_check`; None: the model has no check). ValueError when no image is malignant,
    or the images are too few (`too_few_to_fit`)."""
    raw_probs = np.asarray(raw_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    counts = {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    if not counts["malignant"]:
        raise ValueError("no malignant image among the labelled images: a threshold for "
                         "malignant sensitivity cannot be fitted without some")
    if reason := too_few_to_fit(counts):
        raise ValueError(reason)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    temperature, threshold, basis = fit_rule(raw_probs, labels, target)
    called = malignant_called(apply_temperature(raw_probs, temperature), threshold)
    sensitivity, specificity = malignant_recall_specificity(labels, called)
    intervals = {name: [_defined(bound) for bound in bootstrap_interval(
        lambda idx, k=k: malignant_recall_specificity(labels[idx], called[idx])[k],
        len(labels), n_resamples, seed=seed)] for k, name in enumerate(("sens", "spec"))}
    new_cases = _new_cases_sensitivity(raw_probs, labels, target, n_resamples, seed)
    rule = (f"highest T whose one-sided {CONFIDENCE:.0%} lower bound of malignant sensitivity "
            f"is >= {target}: exact (Clopper-Pearson) with >= {cases_for_exact(target)} "
            "malignant images, else a t prediction bound on their logits (a weak promise), "
            "never above the lowest; on temperature-calibrated probabilities")
    return {
        "kind": PROFILE_KIND,
        "schema_version": SCHEMA_VERSION,
        "model": {key: model[key] for key in ("key", "variant", "sha256")},
        "mode": mode,
        "temperature": temperature,
        "threshold": threshold,
        "target_sensitivity": target,
        "promise": {**basis, "confidence": CONFIDENCE, "weak": basis["basis"] != EXACT},
        "counts": {**counts, "total": int(labels.size)},
        "fit": {"nll_before": negative_log_likelihood(raw_probs, labels),
                "nll_after": negative_log_likelihood(raw_probs, labels, temperature),
                "temperature_bounds": list(TEMPERATURE_BOUNDS), "threshold_rule": rule},
        "figures": {
            "sensitivity": {"value": sensitivity, "interval_95": intervals["sens"],
                            "method": FITTING_METHOD},
            "specificity": {"value": _defined(specificity), "interval_95": intervals["spec"],
                            "method": FITTING_METHOD},
            "sensitivity_new_cases": new_cases,
        },
        "input_check": input_check,
        "bootstrap": {"resamples": n_resamples, "seed": seed},
        "warnings": profile_warnings(basis, intervals["sens"][0], new_cases["value"], target,
                                     temperature),
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
    version = profile.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ProfileError(f"site profile {path}: schema version {version!r}, this runtime "
                           f"reads {', '.join(map(str, READABLE_VERSIONS))}")
    model = profile.get("model") if isinstance(profile.get("model"), dict) else {}
    if model.get("sha256") != entry.info["sha256"]:
        raise ProfileError(
            f"site profile {path} was fitted for {model.get('key', 'another model')} (sha256 "
            f"{str(model.get('sha256'))[:12]}…), not for {entry.key} (sha256 "
            f"{entry.info['sha256'][:12]}…): run `edge-infer calibrate` with this model")
    temperature = _number(profile, "temperature", TEMPERATURE_BOUNDS[0], TEMPERATURE_BOUNDS[1],
                          path)
    threshold = _number(profile, "threshold", 0.0, 1.0, path)
    name = f"{path.name} (sha256 {sha256_of(path)[:12]})"
    if version == 1:
        return Calibration(temperature, threshold, f"{name}; a version 1 profile states no "
                           "mode: argmax unless --mode is given (calibrate again)")
    if profile.get("mode") not in MODES:
        raise ProfileError(f"site profile {path}: mode must be one of {MODES}, got "
                           f"{profile.get('mode')!r}")
    check = profile.get("input_check")
    level = None if check is None else _number(check, "warning_threshold", 0.0, math.inf, path)
    return Calibration(temperature, threshold, name, profile["mode"], level)


def _figure(block: dict) -> str:
    value, (low, high) = block["value"], block["interval_95"]
    if value is None:
        return "— (no such images)"
    return f"{value:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def _promise_line(profile: dict) -> str:
    """What the threshold's promise rests on, in one line."""
    promise, target = profile["promise"], profile["target_sensitivity"]
    if promise["basis"] == EXACT:
        return (f"promise: sensitivity >= {target:.2f} on new cases with "
                f"{promise['confidence']:.0%} confidence, exact, resting on "
                f"{promise['malignant_cases']} malignant images "
                f"({promise['allowed_misses']} missed at this threshold)")
    return (f"promise: weak, resting on {promise['malignant_cases']} malignant images (an exact "
            f"one needs {cases_for_exact(target)}): a prediction bound assuming normal scores")


def _input_check_lines(check: dict | None) -> list[str]:
    """The site's input-check level, in one line (none when the model has no check)."""
    if check is None:
        return []
    return [f"input check: these scans' feature distances (median {check['median_distance']:.2f})"
            f" put the domain warning at {check['warning_threshold']:.2f} (model "
            f"{check['model_threshold']:.2f}, refuse boundary {check['refuse_threshold']:.2f})"]


def profile_summary_lines(profile: dict, shipped: Calibration, path: Path) -> list[str]:
    """What `edge-infer calibrate` prints about the profile it wrote."""
    counts, figures = profile["counts"], profile["figures"]
    shipped_t = "none" if shipped.temperature is None else f"{shipped.temperature:.3f}"
    new_cases = figures["sensitivity_new_cases"]["value"]
    return [
        f"Site profile for {profile['model']['key']} from {counts['total']} images "
        f"({', '.join(f'{counts[c]} {c}' for c in CLASS_NAMES)}): {path}",
        f"temperature {profile['temperature']:.3f} (shipped {shipped_t}); high-sensitivity "
        f"threshold {profile['threshold']:.3f} (shipped {shipped.threshold:.3f}); mode "
        f"{profile['mode']} (used by --site unless --mode is given)",
        _promise_line(profile),
        f"on these images at that threshold: malignant sensitivity "
        f"{_figure(figures['sensitivity'])}, specificity {_figure(figures['specificity'])} "
        f"(95 % bootstrap, {profile['bootstrap']['resamples']} resamples)",
        "sensitivity of refits on images they did not see (out-of-bag): "
        + ("—" if new_cases is None else f"{new_cases:.3f}"),
        *_input_check_lines(profile["input_check"]),
        f"use it: edge-infer --site {path} IMAGE... | edge-infer evaluate --site {path} ... | "
        f"edge-infer serve --site {path}",
    ]
