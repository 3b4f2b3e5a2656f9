"""A high-sensitivity threshold that keeps its promise on new cases, in numpy and the standard
library alone.

The plain rule (the highest threshold catching 95 % of the calibration's malignant cases) holds
on those cases only: on the next ones it catches fewer. Here the threshold is chosen so that a
95 % lower confidence bound of sensitivity reaches the target:

- exact: with n malignant cases, allow only as many misses m as keep the one-sided
  Clopper-Pearson lower bound of (n - m) / n at or above the target; the threshold is then
  the (n - m)-th highest malignant probability. With zero misses the bound is 0.05 ** (1 / n),
  so a target of 0.95 needs n >= 59;
- with fewer cases: a one-sided t prediction bound on the logits of the malignant
  probabilities (mean - t * sd * sqrt(1 + 1 / n), t the target quantile: a new malignant case
  scores above it with probability `target` if the logits are normal), and never above the
  lowest of them. This rests on an assumption and is no confidence bound, so the promise is
  called weak. (A normal tolerance bound, the confidence analogue, was tried: on BrEaST halves
  it kept sensitivity 0.997 but cut specificity to 0.14, below the shipped threshold's 0.25;
  benchmarks/reports/site_halves.md has the prediction bound's figures.)
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
EXACT = "exact"
PREDICTION = "prediction"
LOGIT_FLOOR = 1e-6  # probabilities are clipped to [floor, 1 - floor] before the logit


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@lru_cache(maxsize=4096)
def clopper_pearson_lower(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """The exact one-sided lower confidence bound of a proportion k / n: the p at which
    P(X >= k) = 1 - confidence (0 when k = 0)."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if k == 0:
        return 0.0
    low, high = 0.0, k / n
    for _ in range(60):
        middle = (low + high) / 2
        if binomial_tail(k, n, middle) < 1.0 - confidence:
            low = middle
        else:
            high = middle
    return low


def allowed_misses(n: int, target: float, confidence: float = CONFIDENCE) -> int | None:
    """The most misses among n malignant cases whose exact lower bound of sensitivity still
    reaches target; None when even zero misses does not (too few cases for an exact promise)."""
    misses = None
    for m in range(n):
        if clopper_pearson_lower(n - m, n, confidence) < target:
            break
        misses = m
    return misses


def t_quantile(q: float, dof: int) -> float:
    """Student's t quantile, by the Cornish-Fisher expansion around the normal one (within
    about 1e-3 for dof >= 4)."""
    z = NormalDist().inv_cdf(q)
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))


def conservative_threshold(malignant_probs: np.ndarray, target: float,
                           confidence: float = CONFIDENCE) -> tuple[float, dict]:
    """The highest threshold on prob_malignant whose sensitivity on new cases reaches target
    at this confidence, and how it was found: {"basis": "exact" | "prediction",
    "malignant_cases": n, "allowed_misses": m or None, "lower_bound": ...}."""
    values = np.sort(np.asarray(malignant_probs, dtype=np.float64))[::-1]
    n = int(values.size)
    if n < 2:
        raise ValueError("need at least two malignant cases for a threshold")
    misses = allowed_misses(n, target, confidence)
    if misses is not None:
        return float(values[n - misses - 1]), {
            "basis": EXACT, "malignant_cases": n, "allowed_misses": misses,
            "lower_bound": clopper_pearson_lower(n - misses, n, confidence)}
    clipped = np.clip(values, LOGIT_FLOOR, 1.0 - LOGIT_FLOOR)
    logits = np.log(clipped / (1.0 - clipped))
    bound = (logits.mean()
             - t_quantile(target, n - 1) * logits.std(ddof=1) * math.sqrt(1.0 + 1.0 / n))
    threshold = min(float(1.0 / (1.0 + math.exp(-bound))), float(values[-1]))
    return threshold, {"basis": PREDICTION, "malignant_cases": n, "allowed_misses": None,
                       "lower_bound": None}


def cases_for_exact(target: float, confidence: float = CONFIDENCE) -> int:
    """The fewest malignant cases with which zero misses gives an exact promise of target."""
    return math.ceil(math.log(1.0 - confidence) / math.log(target))
