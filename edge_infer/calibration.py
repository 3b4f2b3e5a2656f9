"""Temperature scaling and the high-sensitivity threshold, in numpy alone (the light runtime has
no scipy or scikit-learn).

A model's probabilities p become softmax(log p / T): T > 1 softens over-confident outputs,
T < 1 sharpens them, and the class order of each image never changes. T is fitted by minimising
the negative log-likelihood on labelled images (a shipped model's validation data, listed in its
manifest entry's `temperature_fit`; a clinic's own images for a site profile); the threshold is
then chosen on the calibrated probabilities. Every tool applies T through `apply_temperature`,
so every figure is of the same probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX

TARGET_MALIGNANT_RECALL = 0.95
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
# A uint8 softmax output has steps of 1/256, so an exact 0 stands for anything below half a
# step; taking it as that (not as 0) keeps log p finite. Float outputs are never exactly 0.
ZERO_PROBABILITY = 0.5 / 256
SEARCH_TOLERANCE = 1e-7  # on log T
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _checked_probs(probs: np.ndarray) -> np.ndarray:
    values = np.asarray(probs, dtype=np.float64)
    if values.shape[-1:] != (len(CLASS_NAMES),) or values.ndim not in (1, 2):
        raise ValueError(f"expected probabilities of shape (3,) or (N, 3), got {values.shape}")
    if not np.isfinite(values).all() or (values < 0.0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if (values.sum(axis=-1) <= 0.0).any():
        raise ValueError("a probability vector sums to 0")
    return values


def _checked_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0.0:
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    return temperature


def _log_probs(values: np.ndarray) -> np.ndarray:
    return np.log(np.where(values > 0.0, values, ZERO_PROBABILITY))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(log p / T) of one (3,) or many (N, 3) probability vectors, as float64; they sum
    to 1 even when p (a dequantized uint8 output) did not. None: no temperature was fitted, p is
    returned as the model gave it."""
    values = _checked_probs(probs)
    if temperature is None:
        return values
    return np.exp(_log_softmax(_log_probs(values) / _checked_temperature(temperature)))


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or n == 0:
        raise ValueError(f"expected {n} labels for {n} probability vectors, got {labels.shape}")
    if not np.isin(labels, range(len(CLASS_NAMES))).all():
        raise ValueError(f"labels must be class indices 0..{len(CLASS_NAMES) - 1}")
    return labels.astype(np.int64)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray,
                            temperature: float | None = None) -> float:
    """Mean -log p(true class) of the probabilities, after the temperature if one is given."""
    values = _checked_probs(probs).reshape(-1, len(CLASS_NAMES))
    labels = _labels(labels, len(values))
    temperature = 1.0 if temperature is None else _checked_temperature(temperature)
    log_p = _log_softmax(_log_probs(values) / temperature)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T in `bounds` minimising the mean NLL of softmax(log p / T) on these labels.

    The NLL is convex in 1/T, so a golden-section search over log T finds its minimum (or the
    nearer bound, when every image is already classified right with margin to spare)."""
    values = _checked_probs(probs).reshape(-1, len(CLASS_NAMES))
    labels = _labels(labels, len(values))
    log_p, rows = _log_probs(values), np.arange(len(labels))
    low, high = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        return float(-_log_softmax(log_p / math.exp(log_t))[rows, labels].mean())

    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > SEARCH_TOLERANCE:
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - GOLDEN * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + GOLDEN * (high - low)
            loss_b = loss(b)
    best = (low + high) / 2.0
    # a minimum at a bound: the search closes in on the bound but stops a tolerance short
    for edge in (math.log(bounds[0]), math.log(bounds[1])):
        if loss(edge) <= loss(best):
            best = edge
    return math.exp(best)


def at_search_bound(temperature: float,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> bool:
    """Whether a fitted T is (to the search's tolerance) one of `bounds`: the images did not
    pin it down, e.g. every one already right with margin to spare (T at the lower bound)."""
    return any(abs(math.log(temperature) - math.log(bound)) <= 10 * SEARCH_TOLERANCE
               for bound in bounds)


def choose_threshold(y_true: np.ndarray, prob_malignant: np.ndarray,
                     target_recall: float = TARGET_MALIGNANT_RECALL) -> float:
    """The highest T with recall(prob_malignant >= T) >= target on these (validation) labels.

    Candidates are the malignant images' own probabilities, so T is the k-th largest of them,
    with k the fewest malignant images that must be caught to reach the target recall.
    """
    positives = np.sort(np.asarray(prob_malignant)[np.asarray(y_true) == MALIGNANT_INDEX])[::-1]
    if positives.size == 0:
        raise ValueError("no malignant images to choose a threshold on")
    needed = int(np.ceil(target_recall * positives.size - 1e-9))
    return float(positives[max(needed, 1) - 1])


@dataclass(frozen=True)
class Fit:
    """A temperature and the threshold chosen on the probabilities it calibrates."""

    temperature: float
    threshold: float
    target_recall: float
    n: int
    n_malignant: int
    nll_before: float
    nll_after: float


def fit_calibration(probs: np.ndarray, labels: np.ndarray,
                    target_recall: float = TARGET_MALIGNANT_RECALL) -> Fit:
    """Fit T on (probs, labels), then choose the high-sensitivity threshold on the calibrated
    probabilities: what `busi calibrate` stores per model and `edge-infer calibrate` per site."""
    values = _checked_probs(probs).reshape(-1, len(CLASS_NAMES))
    labels = _labels(labels, len(values))
    temperature = fit_temperature(values, labels)
    calibrated = apply_temperature(values, temperature)
    return Fit(temperature=temperature,
               threshold=choose_threshold(labels, calibrated[:, MALIGNANT_INDEX], target_recall),
               target_recall=target_recall, n=len(labels),
               n_malignant=int((labels == MALIGNANT_INDEX).sum()),
               nll_before=negative_log_likelihood(values, labels),
               nll_after=negative_log_likelihood(values, labels, temperature))


@dataclass(frozen=True)
class Calibration:
    """What a Classifier applies to its model's outputs: the temperature (None: not fitted),
    the high-sensitivity threshold, which profile they came from ('shipped' or a site
    profile's file name and sha256), the mode used when none is asked for, and a site's own
    warning threshold for the input check (None: the model's)."""

    temperature: float | None
    threshold: float
    profile: str
    mode: str = "argmax"
    ood_threshold: float | None = None

    def info(self) -> dict:
        """The fields every result carries, saying how its probabilities were calibrated."""
        return {"temperature": self.temperature, "profile": self.profile}


SHIPPED = "shipped"


def shipped_calibration(info: dict) -> Calibration:
    """A manifest entry's own temperature and threshold (fitted on its validation data)."""
    temperature = info.get("temperature")
    return Calibration(None if temperature is None else float(temperature),
                       float(info["threshold"]), SHIPPED)
