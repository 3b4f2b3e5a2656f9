"""The one decision rule: class probabilities -> the label a user sees, with its reasons.

Argmax by default. High-sensitivity mode labels the image malignant when
prob_malignant >= threshold even if argmax says otherwise, and says that it forced it.
Ties in argmax go to the more severe class (classes are ordered normal < benign < malignant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX, UNCERTAIN_MARGIN

Mode = Literal["argmax", "high-sensitivity"]
MODES: tuple[str, ...] = ("argmax", "high-sensitivity")
PROB_SUM_TOLERANCE = 0.05


@dataclass(frozen=True)
class Decision:
    """What the user is told about one image; `to_dict` is the JSON schema of CLI and server."""

    prediction: str
    argmax_prediction: str
    forced_malignant: bool
    mode: str
    threshold: float | None
    probs: dict[str, float]
    prob_malignant: float
    top2: list[dict[str, float | str]]
    margin: float
    uncertain: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _validate_probs(probs: Sequence[float]) -> list[float]:
    values = [float(p) for p in probs]
    if len(values) != len(CLASS_NAMES):
        raise ValueError(f"expected {len(CLASS_NAMES)} probabilities, got {len(values)}")
    if any(math.isnan(p) or math.isinf(p) for p in values):
        raise ValueError(f"probabilities must be finite, got {values}")
    if any(p < 0.0 or p > 1.0 for p in values):
        raise ValueError(f"probabilities must lie in [0, 1], got {values}")
    if abs(sum(values) - 1.0) > PROB_SUM_TOLERANCE:
        raise ValueError(f"probabilities must sum to 1, got {sum(values):.4f}")
    return values


def _validate_threshold(mode: str, threshold: float | None) -> float | None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "argmax":
        return None
    if threshold is None:
        raise ValueError("high-sensitivity mode needs a threshold")
    threshold = float(threshold)
    if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return threshold


def ranked_indices(probs: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Each row's class indices from most to least probable, equal probabilities ranking the
    more severe class first: the rule's one tie-break, for `decide` and (N, 3) arrays alike."""
    values = np.asarray(probs, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"expected an (N, {len(CLASS_NAMES)}) array of probabilities, "
                         f"got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("probabilities must be finite")
    # A stable descending sort of the columns in reverse order keeps the higher index first.
    reversed_order = np.argsort(-values[:, ::-1], axis=1, kind="stable")
    return values.shape[1] - 1 - reversed_order


def argmax_indices(probs: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Row-wise argmax with ties to the more severe class: decide()'s rule for (N, 3) arrays
    (what every metric, rate and benchmark counts as the predicted class)."""
    return ranked_indices(probs)[:, 0]


def requested_mode(mode: Mode | None, threshold: float | None) -> Mode:
    """The mode a user's options ask for: a threshold alone implies high-sensitivity, and a
    threshold with argmax is refused (ValueError), since argmax would silently ignore it."""
    if mode == "argmax" and threshold is not None:
        raise ValueError("a threshold applies to high-sensitivity mode only")
    return mode or ("high-sensitivity" if threshold is not None else "argmax")


def decide(
    probs: Sequence[float],
    mode: Mode = "argmax",
    threshold: float | None = None,
    uncertain_margin: float = UNCERTAIN_MARGIN,
) -> Decision:
    """Apply the decision rule to one probability vector in CLASS_NAMES order."""
    values = _validate_probs(probs)
    threshold = _validate_threshold(mode, threshold)
    ranked = [int(i) for i in ranked_indices([values])[0]]
    argmax_label = CLASS_NAMES[ranked[0]]
    prob_malignant = values[MALIGNANT_INDEX]
    forced = (
        threshold is not None and prob_malignant >= threshold and argmax_label != "malignant"
    )
    margin = values[ranked[0]] - values[ranked[1]]
    return Decision(
        prediction="malignant" if forced else argmax_label,
        argmax_prediction=argmax_label,
        forced_malignant=forced,
        mode=mode,
        threshold=threshold,
        probs=dict(zip(CLASS_NAMES, values)),
        prob_malignant=prob_malignant,
        top2=[{"label": CLASS_NAMES[i], "prob": values[i]} for i in ranked[:2]],
        margin=margin,
        uncertain=margin < uncertain_margin,
    )
