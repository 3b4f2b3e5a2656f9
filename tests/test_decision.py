"""The decision rule: argmax, high-sensitivity forcing, ties, uncertainty and refused inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_infer.decision import argmax_indices, decide, ranked_indices, requested_mode
from edge_infer.spec import CLASS_NAMES, UNCERTAIN_MARGIN

SEVERITY = {name: rank for rank, name in enumerate(CLASS_NAMES)}
HS = "high-sensitivity"


# --- argmax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "label"),
    [([0.7, 0.2, 0.1], "normal"), ([0.1, 0.8, 0.1], "benign"), ([0.05, 0.15, 0.8], "malignant")],
)
def test_argmax_picks_each_class(probs: list[float], label: str) -> None:
    decision = decide(probs)
    assert decision.prediction == decision.argmax_prediction == label
    assert decision.forced_malignant is False
    assert decision.mode == "argmax"
    assert decision.threshold is None
    assert decision.probs == dict(zip(CLASS_NAMES, probs))


def test_argmax_ignores_a_threshold() -> None:
    decision = decide([0.1, 0.6, 0.3], mode="argmax", threshold=0.2)
    assert decision.prediction == "benign"
    assert decision.forced_malignant is False
    assert decision.threshold is None


def test_numpy_float32_input() -> None:
    decision = decide(np.array([0.1, 0.3, 0.6], dtype=np.float32))
    assert decision.prediction == "malignant"
    assert all(type(p) is float for p in decision.probs.values())
    json.dumps(decision.to_dict())


# --- high sensitivity --------------------------------------------------------------------


def test_high_sensitivity_forces_malignant_over_benign() -> None:
    decision = decide([0.1, 0.6, 0.3], mode=HS, threshold=0.25)
    assert decision.prediction == "malignant"
    assert decision.forced_malignant is True
    assert decision.argmax_prediction == "benign"
    assert decision.mode == HS
    assert decision.threshold == 0.25
    assert decision.top2[0]["label"] == "benign"  # the ranking still reports the argmax


def test_high_sensitivity_forces_malignant_over_normal() -> None:
    decision = decide([0.8, 0.05, 0.15], mode=HS, threshold=0.1)
    assert (decision.prediction, decision.argmax_prediction) == ("malignant", "normal")
    assert decision.forced_malignant is True


def test_high_sensitivity_below_threshold_keeps_argmax() -> None:
    decision = decide([0.1, 0.6, 0.3], mode=HS, threshold=0.35)
    assert decision.prediction == decision.argmax_prediction == "benign"
    assert decision.forced_malignant is False
    assert decision.threshold == 0.35


def test_threshold_equal_to_prob_malignant_forces() -> None:
    decision = decide([0.1, 0.6, 0.3], mode=HS, threshold=0.3)
    assert decision.prob_malignant == decision.threshold == 0.3
    assert decision.prediction == "malignant"
    assert decision.forced_malignant is True


def test_not_forced_when_argmax_is_already_malignant() -> None:
    decision = decide([0.1, 0.2, 0.7], mode=HS, threshold=0.5)
    assert decision.prediction == decision.argmax_prediction == "malignant"
    assert decision.forced_malignant is False


@pytest.mark.parametrize("probs", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
def test_threshold_zero_always_forces(probs: list[float]) -> None:
    decision = decide(probs, mode=HS, threshold=0.0)
    assert decision.prediction == "malignant"
    assert decision.forced_malignant is True
    assert decision.argmax_prediction != "malignant"


def test_threshold_zero_with_malignant_argmax_is_not_forced() -> None:
    decision = decide([0.2, 0.2, 0.6], mode=HS, threshold=0.0)
    assert decision.prediction == "malignant"
    assert decision.forced_malignant is False


@pytest.mark.parametrize(
    ("probs", "prediction"),
    [
        ([0.0, 0.0, 1.0], "malignant"),  # p_malignant == 1 is always the argmax: never forced
        ([0.0, 0.01, 0.99], "malignant"),
        ([0.0, 0.51, 0.49], "benign"),  # just below 1 never forces
        ([0.001, 0.999, 0.0], "benign"),
    ],
)
def test_threshold_one(probs: list[float], prediction: str) -> None:
    decision = decide(probs, mode=HS, threshold=1.0)
    assert decision.prediction == prediction
    assert decision.forced_malignant is False


# --- ties, top2, margin, uncertainty ------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "label", "second"),
    [
        ([0.5, 0.5, 0.0], "benign", "normal"),
        ([0.0, 0.5, 0.5], "malignant", "benign"),
        ([0.5, 0.0, 0.5], "malignant", "normal"),
        ([1 / 3, 1 / 3, 1 / 3], "malignant", "benign"),
        ([0.4, 0.4, 0.2], "benign", "normal"),
    ],
)
def test_ties_go_to_the_more_severe_class(probs: list[float], label: str, second: str) -> None:
    decision = decide(probs)
    assert decision.prediction == decision.argmax_prediction == label
    assert [entry["label"] for entry in decision.top2] == [label, second]
    assert decision.margin == 0.0
    assert decision.uncertain is True


def test_tie_below_threshold_is_forced() -> None:
    decision = decide([0.45, 0.45, 0.1], mode=HS, threshold=0.1)
    assert decision.argmax_prediction == "benign"
    assert decision.prediction == "malignant" and decision.forced_malignant is True


def test_top2_and_margin() -> None:
    decision = decide([0.1, 0.3, 0.6])
    assert decision.top2 == [
        {"label": "malignant", "prob": 0.6},
        {"label": "benign", "prob": 0.3},
    ]
    assert decision.margin == pytest.approx(0.3)
    assert decision.prob_malignant == 0.6
    assert decision.uncertain is False


def test_uncertain_boundary_with_exact_binary_fractions() -> None:
    probs = [0.125, 0.25, 0.625]  # margin 0.375 exactly
    assert decide(probs).margin == 0.375
    assert decide(probs, uncertain_margin=0.375).uncertain is False  # margin == limit: certain
    assert decide(probs, uncertain_margin=math.nextafter(0.375, 1.0)).uncertain is True
    assert decide(probs, uncertain_margin=math.nextafter(0.375, 0.0)).uncertain is False


@pytest.mark.parametrize(
    ("offset", "uncertain"),
    [(-0.01, True), (-1e-6, True), (1e-6, False), (0.01, False)],
)
def test_uncertain_around_the_default_margin(offset: float, uncertain: bool) -> None:
    top = 0.5 + (UNCERTAIN_MARGIN + offset) / 2
    second = 0.5 - (UNCERTAIN_MARGIN + offset) / 2
    decision = decide([0.0, second, top])
    assert decision.margin == pytest.approx(UNCERTAIN_MARGIN + offset)
    assert decision.uncertain is uncertain


# --- refused inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "words"),
    [
        ([math.nan, 0.5, 0.5], "finite"),
        ([0.5, math.inf, 0.5], "finite"),
        ([0.5, 0.5, -math.inf], "finite"),
        ([-0.1, 0.6, 0.5], r"\[0, 1\]"),
        ([1.2, -0.1, -0.1], r"\[0, 1\]"),
        ([1.1, 0.0, 0.0], r"\[0, 1\]"),
        ([0.5, 0.5], "expected 3 probabilities, got 2"),
        ([0.25, 0.25, 0.25, 0.25], "expected 3 probabilities, got 4"),
        ([], "expected 3 probabilities, got 0"),
        ([0.5, 0.3, 0.1], "sum to 1"),
        ([0.6, 0.3, 0.2], "sum to 1"),
        ([0.0, 0.0, 0.0], "sum to 1"),
    ],
)
def test_bad_probabilities(probs: list[float], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        decide(probs)
    with pytest.raises(ValueError, match=words):  # refused in every mode
        decide(probs, mode=HS, threshold=0.5)


def test_sum_tolerance_accepts_rounded_model_output() -> None:
    assert decide([0.3, 0.3, 0.36]).prediction == "malignant"  # sums to 0.96
    with pytest.raises(ValueError, match="sum to 1"):
        decide([0.3, 0.3, 0.34])  # sums to 0.94


@pytest.mark.parametrize(
    ("mode", "threshold", "words"),
    [
        (HS, math.nan, r"\[0, 1\]"),
        (HS, -0.01, r"\[0, 1\]"),
        (HS, 1.01, r"\[0, 1\]"),
        (HS, math.inf, r"\[0, 1\]"),
        (HS, None, "needs a threshold"),
        ("max", 0.5, "mode must be one of"),
        ("High-Sensitivity", 0.5, "mode must be one of"),
        ("", None, "mode must be one of"),
    ],
)
def test_bad_threshold_or_mode(mode: str, threshold: float | None, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        decide([0.2, 0.3, 0.5], mode=mode, threshold=threshold)  # type: ignore[arg-type]


# --- the mode a user's options ask for ---------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "threshold", "chosen"),
    [(None, None, "argmax"), (None, 0.3, HS), (HS, None, HS), (HS, 0.3, HS),
     ("argmax", None, "argmax")],
)
def test_a_threshold_implies_high_sensitivity(mode: str | None, threshold: float | None,
                                              chosen: str) -> None:
    assert requested_mode(mode, threshold) == chosen  # type: ignore[arg-type]


def test_argmax_with_a_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="high-sensitivity mode only"):
        requested_mode("argmax", 0.3)


# --- the JSON schema ---------------------------------------------------------------------


def test_to_dict_keys_and_json() -> None:
    decision = decide([0.1, 0.6, 0.3], mode=HS, threshold=0.3)
    payload = decision.to_dict()
    assert set(payload) == {
        "prediction",
        "argmax_prediction",
        "forced_malignant",
        "mode",
        "threshold",
        "probs",
        "prob_malignant",
        "top2",
        "margin",
        "uncertain",
    }
    assert json.loads(json.dumps(payload)) == payload
    assert list(payload["probs"]) == list(CLASS_NAMES)
    assert payload["prediction"] == "malignant" and payload["threshold"] == 0.3


def test_to_dict_argmax_threshold_is_null() -> None:
    assert json.loads(json.dumps(decide([0.6, 0.3, 0.1]).to_dict()))["threshold"] is None


# --- properties --------------------------------------------------------------------------

weights = st.one_of(
    st.lists(st.integers(0, 6), min_size=3, max_size=3),  # small integers: many exact ties
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
).filter(lambda w: sum(w) > 0)
probabilities = weights.map(lambda w: [x / sum(w) for x in w])
thresholds = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))


@given(probabilities, thresholds)
def test_high_sensitivity_rule(probs: list[float], threshold: float) -> None:
    decision = decide(probs, mode=HS, threshold=threshold)
    p_malignant = probs[CLASS_NAMES.index("malignant")]
    assert (decision.prediction == "malignant") == (
        decision.argmax_prediction == "malignant" or p_malignant >= threshold
    )
    if decision.forced_malignant:
        assert decision.argmax_prediction != "malignant"
        assert decision.prediction == "malignant"
    else:
        assert decision.prediction == decision.argmax_prediction
    assert decision.argmax_prediction == decide(probs).prediction


@given(probabilities)
def test_argmax_is_the_most_severe_of_the_largest(probs: list[float]) -> None:
    decision = decide(probs)
    best = max(probs)
    tied = [name for name, p in zip(CLASS_NAMES, probs) if p == best]
    assert decision.prediction == max(tied, key=SEVERITY.__getitem__)
    first, second = decision.top2
    assert first["label"] == decision.prediction and first["prob"] == best
    assert first["label"] != second["label"]
    assert second["prob"] == sorted(probs)[-2]
    assert decision.margin == first["prob"] - second["prob"] >= 0.0
    assert decision.uncertain == (len(tied) > 1 or decision.margin < UNCERTAIN_MARGIN)


integer_rows = st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3).filter(any),
                        min_size=1, max_size=12)  # values 0-3: most rows hold a tie


@given(integer_rows)
def test_argmax_indices_is_decide_on_every_row(rows: list[list[int]]) -> None:
    decisions = [decide([x / sum(row) for x in row]) for row in rows]
    assert argmax_indices(np.array(rows)).tolist() == [
        CLASS_NAMES.index(d.argmax_prediction) for d in decisions]
    assert [order[:2] for order in ranked_indices(np.array(rows)).tolist()] == [
        [CLASS_NAMES.index(entry["label"]) for entry in d.top2] for d in decisions]


@given(probabilities, thresholds, thresholds)
def test_lowering_the_threshold_never_unflags_malignant(
    probs: list[float], low: float, high: float
) -> None:
    low, high = sorted((low, high))
    if decide(probs, mode=HS, threshold=high).prediction == "malignant":
        assert decide(probs, mode=HS, threshold=low).prediction == "malignant"


# --- the rule on (N, 3) arrays -----------------------------------------------------------------


def test_argmax_indices_breaks_ties_like_decide() -> None:
    rows = np.array([[0.45, 0.45, 0.10], [0.10, 0.45, 0.45], [0.45, 0.10, 0.45],
                     [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    assert argmax_indices(rows).tolist() == [1, 2, 2, 2, 0]
    assert np.argmax(rows, axis=1).tolist() == [0, 1, 0, 0, 0]  # numpy's ties go the other way
    assert [decide(row).argmax_prediction for row in rows] == [
        CLASS_NAMES[i] for i in argmax_indices(rows)]
    assert argmax_indices(np.empty((0, 3))).shape == (0,)


@pytest.mark.parametrize("probs", [[0.2, 0.3, 0.5], [[0.5, 0.5]], [[0.5, float("nan"), 0.5]]],
                         ids=["one-dimensional", "two-classes", "nan"])
def test_argmax_indices_refuses_what_is_not_n_by_3_probabilities(probs: list) -> None:
    with pytest.raises(ValueError):
        argmax_indices(probs)
