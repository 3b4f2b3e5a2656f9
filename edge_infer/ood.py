"""Does an image look like the breast ultrasound the model was trained on? numpy only.

A 3-class softmax always answers normal, benign or malignant, also for a photo or a screenshot.
The check has two tiers:

- refuse (no label): not a breast ultrasound at all: a colour picture or a Doppler-dominated
  frame (colour), a blank, noise-only or smooth-gradient frame (`frame_reasons`, on a 64 px
  thumbnail), or features beyond the refuse boundary;
- warn (label given, `domain_warning`): a breast scan unlike the training hospitals' ones:
  feature distance above the warning threshold but within the refuse boundary. Such a scan is
  answered, with the advice to validate the model locally.

Cheap checks, on what the runtime already has:

- feature distance (the check that decides): the model's pooled features (the feature map
  averaged over space, what its classifier head sees), scaled to unit length, and their
  Mahalanobis distance to the nearest BUSI training class mean under one shared covariance,
  modelled as probabilistic PCA: `k` principal directions with their own variances, every
  other direction with the mean of the rest. So only the class means, k directions and k + 1
  variances are stored (about 0.35 MB for 1280 channels and k = 64), never a 1280 x 1280 matrix.
  Divided by the number of channels, the score is about 1 for a training image.
- colour: B-mode ultrasound is grey, or grey under one display tint (blue, sepia): every pixel of
  the same brightness has the same colour. The score is the fraction of pixels whose colour is
  off the image's own tint (the mean colour of pixels of that brightness); a photograph has
  many, a tinted scan almost none. It reads the decoded RGB image
  (`edge_infer.preprocess.decode_image`), since the model input is luma only.

The parameters are fitted on the model's training split (BUSI, plus BUS-BRA's training patients
for a model trained on both) and the warning threshold is chosen on the matching validation
images for a stated false-alarm rate (`python -m busi ood-fit`, convert/ood_fit.py). The refuse
boundary is set by leaving a site out: fitted on one training hospital, how far do the other
hospital's scans land (as a multiple of that fit's warning threshold)? The largest such
multiple, with a 5 % margin, times the warning threshold, is the boundary. Both live beside the
model, in a sidecar .npz and its manifest entry ("ood"), checked by sha256 on load. A site
profile (`edge-infer calibrate`) may raise the warning threshold to its own scans' level, never
past the refuse boundary.
`energy_score` and `max_softmax_score` are the logit-based scores the benchmark compares against.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from edge_infer.manifest import ModelError, checked_sidecar

FEATURE_METHOD = "ppca-mahalanobis-l2"
COLOUR_METHOD = "off-tint-fraction"
DEFAULT_COMPONENTS = 64
TARGET_FALSE_ALARM = 0.02  # of in-distribution (validation) images
COLOUR_THRESHOLD = 0.05  # off-tint pixel fraction; BUSI's highest is about 0.01
COLOUR_SAMPLES = 96  # the colour check reads about this many pixels along each side
COLOUR_LUMA_BINS = 16
COLOUR_TOLERANCE = 24  # levels of (R - G, B - G) away from the tint of the pixel's brightness
REFUSE_MARGIN = 1.05  # the refuse boundary: the largest leave-a-site-out multiple, times this
THUMBNAIL_SIDE = 64  # the frame checks read a grey thumbnail of this side
# Frame checks (bounds chosen on all 1096 BUSI and BUS-BRA train/val scans, whose lowest values
# are 14.2, 0.78 and 3.3): a real scan has contrast, neighbouring pixels that agree, and
# speckle texture.
BLANK_STD = 5.0  # grey levels: below it the frame is blank
NOISE_CORRELATION = 0.5  # neighbour correlation: below it the frame is noise
SMOOTH_TEXTURE = 1.0  # mean |pixel - its 3x3 mean|: below it the frame is a smooth gradient
Tier = Literal["ok", "warn", "refuse"]
OodPolicy = Literal["refuse", "warn"]
POLICIES: tuple[str, ...] = ("refuse", "warn")
MIN_NORM = 1e-6  # a feature vector shorter than this (an all-black image) counts as zero


class OodError(ModelError):
    """An OOD parameter file that is missing, damaged or does not fit the model."""


@dataclass(frozen=True, eq=False)
class FeatureDensity:
    """Class means and a shared probabilistic-PCA covariance of unit-length pooled features."""

    means: np.ndarray  # (classes, C)
    components: np.ndarray  # (k, C), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: float  # of every direction outside the k components

    @property
    def channels(self) -> int:
        return int(self.means.shape[1])

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """Distance of pooled features (C,) or (N, C) to the nearest class mean, divided by
        C: about 1 for training images, larger the less an image looks like them."""
        features = unit_length(np.asarray(pooled, dtype=np.float64))
        single = features.ndim == 1
        features = np.atleast_2d(features)
        if features.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} features, got {features.shape[1]}")
        best = np.full(len(features), np.inf)
        for mean in self.means.astype(np.float64):
            offset = features - mean
            projected = offset @ self.components.T.astype(np.float64)
            inside = (projected ** 2 / self.variances).sum(axis=1)
            outside = (offset ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
            distance = inside + np.maximum(outside, 0.0) / self.residual_variance
            best = np.minimum(best, distance)
        scores = best / self.channels
        return scores[0] if single else scores

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters as an .npz of float32 arrays (numpy alone reads it back)."""
        with open(path, "wb") as handle:
            np.savez(handle, means=self.means.astype(np.float32),
                     components=self.components.astype(np.float32),
                     variances=self.variances.astype(np.float32),
                     residual_variance=np.float32(self.residual_variance))


def unit_length(features: np.ndarray) -> np.ndarray:
    """Features scaled to length 1 along the last axis (near-zero vectors stay zero)."""
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return np.where(norms > MIN_NORM, features / np.maximum(norms, MIN_NORM), 0.0)


def fit_feature_density(features: np.ndarray, labels: np.ndarray,
                        components: int = DEFAULT_COMPONENTS) -> FeatureDensity:
    """Fit class means and the shared covariance (k principal directions + one variance for
    the rest) on pooled features (N, C) of labelled in-distribution images."""
    features = unit_length(np.asarray(features, dtype=np.float64))
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"expected features (N, C) and labels (N,), got {features.shape} "
                         f"and {labels.shape}")
    classes = np.unique(labels)
    channels = features.shape[1]
    most = min(len(features) - len(classes), channels) - 1
    if not 0 < components <= most:
        raise ValueError(f"components must lie in 1..{most}, got {components}")
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    residuals = features - means[np.searchsorted(classes, labels)]
    _, singular, directions = np.linalg.svd(residuals, full_matrices=False)
    eigenvalues = singular ** 2 / (len(features) - len(classes))
    rest = float(eigenvalues[components:].sum()) / (channels - components)
    return FeatureDensity(means, directions[:components], eigenvalues[:components], rest)


def load_feature_density(path: str | os.PathLike, channels: int) -> FeatureDensity:
    """Read an .npz written by `FeatureDensity.save`; check its shapes against the model."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            density = FeatureDensity(archive["means"], archive["components"],
                                     archive["variances"], float(archive["residual_variance"]))
    except (OSError, KeyError, ValueError) as err:
        raise OodError(f"{path}: not an OOD parameter file ({err})") from None
    k = len(density.variances)
    if (density.means.ndim != 2 or density.channels != channels
            or density.components.shape != (k, channels)
            or not (density.variances > 0).all() or not density.residual_variance > 0):
        raise OodError(f"{path}: OOD parameters do not fit a model with {channels} channels")
    return density


def colour_score(image: Image.Image) -> float:
    """Fraction of pixels (sampled on a grid of about COLOUR_SAMPLES per side) whose colour
    differs from the mean colour of pixels of the same brightness: 0 for grey or uniformly
    tinted scans, large for photographs, colour drawings and screenshots."""
    width, height = image.size
    step = max(1, max(width, height) // COLOUR_SAMPLES)
    grid = image.resize((max(1, width // step), max(1, height // step)),
                        Image.Resampling.NEAREST).convert("RGB")
    sample = np.asarray(grid, dtype=np.int32).reshape(-1, 3)
    red, green, blue = sample[:, 0], sample[:, 1], sample[:, 2]
    luma = (299 * red + 587 * green + 114 * blue) // 1000
    bins = np.minimum(luma * COLOUR_LUMA_BINS // 256, COLOUR_LUMA_BINS - 1)
    counts = np.maximum(np.bincount(bins, minlength=COLOUR_LUMA_BINS), 1)
    off = np.zeros(len(sample), dtype=bool)
    for chroma in (red - green, blue - green):
        tint = np.bincount(bins, chroma, COLOUR_LUMA_BINS) / counts
        off |= np.abs(chroma - tint[bins]) > COLOUR_TOLERANCE
    return float(off.mean())


def grey_thumbnail(image: Image.Image) -> np.ndarray:
    """The image as a THUMBNAIL_SIDE x THUMBNAIL_SIDE grey array, float64: sampled on a grid
    of twice that side, then box-averaged (a tenth of the time of averaging every pixel)."""
    side = 2 * THUMBNAIL_SIDE
    grid = image.resize((side, side), Image.Resampling.NEAREST)
    small = grid.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX).convert("L")
    return np.asarray(small, dtype=np.float64)


def frame_reasons(image: Image.Image) -> list[str]:
    """Why a frame cannot be an ultrasound scan (empty when nothing is found): blank, noise
    without structure, or a smooth gradient without speckle texture."""
    grey = grey_thumbnail(image)
    if grey.std() < BLANK_STD:
        return ["the image is blank"]
    centred = grey - grey.mean()
    correlation = float((centred[:, 1:] * centred[:, :-1]).mean() / centred.var())
    if correlation < NOISE_CORRELATION:
        return ["the image is noise without structure"]
    window = sum(grey[1 + dy:grey.shape[0] - 1 + dy, 1 + dx:grey.shape[1] - 1 + dx]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    if np.abs(grey[1:-1, 1:-1] - window).mean() < SMOOTH_TEXTURE:
        return ["the image is a smooth gradient without ultrasound texture"]
    return []


def energy_score(logits: np.ndarray) -> np.ndarray:
    """-logsumexp(logits) per image: higher = less familiar (Liu et al., 2020)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return -(top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1)))


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """1 - the largest class probability: higher = less confident (Hendrycks & Gimpel, 2017)."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=-1)


def choose_threshold(scores: np.ndarray, false_alarm: float = TARGET_FALSE_ALARM,
                     flagged_elsewhere: int = 0) -> float:
    """A threshold T that flags (score > T) k = floor(false_alarm * n) - flagged_elsewhere of
    these in-distribution scores, n counting the `flagged_elsewhere` images another check
    already flags: midway between the k-th and (k+1)-th highest score, so that round-off
    in a re-computed score cannot move an image across it."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("need finite scores of at least one in-distribution image")
    allowed = math.floor(false_alarm * (scores.size + flagged_elsewhere)) - flagged_elsewhere
    if allowed < 0:
        raise ValueError(f"{flagged_elsewhere} images flagged elsewhere already exceed the "
                         f"{false_alarm:.1%} false-alarm budget")
    if allowed == 0:
        return float(scores[0] + 1e-6 * max(1.0, abs(scores[0])))
    allowed = min(allowed, scores.size - 1)
    return float((scores[allowed - 1] + scores[allowed]) / 2)


@dataclass(frozen=True)
class OodCheck:
    """The verdict on one image: tier ok, warn (a breast scan unlike the training hospitals':
    labelled, with a domain warning) or refuse (not a breast ultrasound); reasons say why."""

    tier: Tier
    ood_score: float
    ood_threshold: float
    refuse_threshold: float
    colour_score: float | None  # None: no decoded image was given
    colour_threshold: float
    reasons: list[str] = field(default_factory=list)

    @property
    def in_distribution(self) -> bool:
        """Whether the image looks like the training hospitals' scans (tier ok)."""
        return self.tier == "ok"


@dataclass(frozen=True, eq=False)
class OodDetector:
    """A model's fitted feature density and thresholds (from its manifest entry): `threshold`
    warns, `refuse_threshold` refuses."""

    density: FeatureDensity
    threshold: float
    refuse_threshold: float
    colour_threshold: float

    def check(self, pooled: np.ndarray, image: Image.Image | None = None) -> OodCheck:
        """Score one image's pooled features (and its decoded RGB image, when given)."""
        score = float(self.density.score(pooled))
        colour = colour_score(image) if image is not None else None
        refuse = frame_reasons(image) if image is not None else []
        if colour is not None and colour > self.colour_threshold:
            refuse.append(f"{colour:.0%} of its pixels are coloured (a photograph, drawing or "
                          "colour Doppler); B-mode ultrasound is grey")
        if score > self.refuse_threshold:
            refuse.append("its features are far from every breast ultrasound scan the check "
                          "knows")
        if refuse:
            return OodCheck("refuse", score, self.threshold, self.refuse_threshold, colour,
                            self.colour_threshold, refuse)
        if score > self.threshold:
            return OodCheck("warn", score, self.threshold, self.refuse_threshold, colour,
                            self.colour_threshold, [DOMAIN_WARNING])
        return OodCheck("ok", score, self.threshold, self.refuse_threshold, colour,
                        self.colour_threshold)

    def with_threshold(self, threshold: float) -> OodDetector:
        """The same detector warning above `threshold` (a site's own level), capped at the
        refuse boundary, which a site never moves."""
        return replace(self, threshold=min(float(threshold), self.refuse_threshold))


DOMAIN_WARNING = ("the scan differs from the training hospitals' scans: the label is given, but "
                  "validate the model on your own labelled scans (edge-infer evaluate, "
                  "edge-infer calibrate)")


def load_detector(info: dict, folder: str | os.PathLike, owner: str) -> OodDetector | None:
    """The detector a manifest entry lists under "ood" (its .npz sha256-checked), or None
    when the entry has none (a model not yet fitted by python -m busi ood-fit). An entry
    fitted before the two tiers has no refuse_threshold: it refuses at its threshold."""
    facts = info.get("ood")
    if facts is None:
        return None
    if facts.get("model_sha256") != info["sha256"]:
        raise OodError(f"{owner}: its OOD parameters were fitted for another model file: run "
                       "python -m busi ood-fit again")
    path = checked_sidecar(Path(folder), facts, owner)
    channels = int(info["feature_map"]["shape"][-1]) if "feature_map" in info else -1
    threshold = float(facts["threshold"])
    return OodDetector(load_feature_density(path, channels), threshold,
                       float(facts.get("refuse_threshold", threshold)),
                       float(facts["colour_threshold"]))


def ood_fields(check: OodCheck | None, policy: str) -> dict:
    """The result fields every output carries: in_distribution (None = not checked: the
    model has no OOD parameters), domain_warning (a breast scan unlike the training
    hospitals', labelled), the scores and thresholds, the reasons and whether the label was
    withheld (refused: not a breast ultrasound, under the refuse policy)."""
    if policy not in POLICIES:
        raise ValueError(f"OOD policy must be one of {POLICIES}, got {policy!r}")
    if check is None:
        return {"in_distribution": None, "domain_warning": False, "ood_score": None,
                "ood_threshold": None, "refuse_threshold": None, "colour_score": None,
                "ood_reasons": [], "refused": False}
    return {"in_distribution": check.in_distribution, "domain_warning": check.tier == "warn",
            "ood_score": check.ood_score, "ood_threshold": check.ood_threshold,
            "refuse_threshold": check.refuse_threshold, "colour_score": check.colour_score,
            "ood_reasons": list(check.reasons),
            "refused": check.tier == "refuse" and policy == "refuse"}


def with_ood(result: dict, check: OodCheck | None, policy: str) -> dict:
    """A classification result with the OOD fields added; when refused, `prediction` is None
    (the label is withheld; the probabilities stay for inspection, not to be trusted)."""
    merged = {**result, **ood_fields(check, policy)}
    if merged["refused"]:
        merged["prediction"] = None
        merged["forced_malignant"] = False
    return merged


def ood_message(name: str, result: dict) -> str:
    """One plain line for a person about a flagged image: what was found and what was done."""
    if result["domain_warning"]:
        return f"{name}: {DOMAIN_WARNING}"
    action = "no label given" if result["refused"] else "labelled anyway (--ood warn)"
    return (f"{name} does not look like a breast ultrasound: {'; '.join(result['ood_reasons'])}"
            f"; {action}")
