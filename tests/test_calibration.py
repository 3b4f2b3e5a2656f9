"""Temperature scaling, the calibrated threshold and site profiles: the numpy fits on synthetic
scores with a known answer, the shipped models' temperatures refitted from BUSI validation, one
temperature function behind the Classifier, CLI, server, evaluate and the benchmark, and
`edge-infer calibrate` / `--site` end to end.

Model-agnostic: temperatures and thresholds are read from the manifest or recomputed, never
written down here."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from required import missing

from convert.validation import trained_on_bus_bra, validation_set
from edge_infer.calibration import (
    TARGET_MALIGNANT_RECALL,
    TEMPERATURE_BOUNDS,
    ZERO_PROBABILITY,
    apply_temperature,
    choose_threshold,
    fit_calibration,
    fit_temperature,
    negative_log_likelihood,
)
from edge_infer.classifier import Classifier
from edge_infer.cli import main
from edge_infer.decision import argmax_indices
from edge_infer.manifest import (
    ModelError,
    manifest_path,
    read_manifest,
    resolve_model,
    sha256_of,
)
from edge_infer.preprocess import preprocess_image
from edge_infer.promise import (
    allowed_misses,
    cases_for_exact,
    clopper_pearson_lower,
    conservative_threshold,
)
from edge_infer.rates import malignant_called, malignant_recall_specificity
from edge_infer.site_profile import (
    MIN_MALIGNANT_TO_FIT,
    MIN_OTHER_TO_FIT,
    PROFILE_KIND,
    SCHEMA_VERSION,
    ProfileError,
    fit_rule,
    fit_site_profile,
    load_profile,
    write_profile,
)
from edge_infer.spec import CLASS_NAMES, MALIGNANT_INDEX
from edge_infer.splits import bus_bra_split_files, split_files
from train.datasets import resolve_bus_bra_dir, resolve_external_dir

# Float kernels of other CPUs round differently: a refit threshold may move this much (relative).
CPU_ROUNDING = 1e-5
MODEL = {"key": "arch/int8", "variant": "int8", "sha256": "0" * 64}
PROFILE_KEYS = {"kind", "schema_version", "model", "mode", "temperature", "threshold",
                "target_sensitivity", "promise", "counts", "fit", "figures", "input_check",
                "bootstrap", "warnings", "created", "source"}
FEW_MALIGNANT = 10
FEW_RESAMPLES = 50
SUBPROCESS_TIMEOUT = 300


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def synthetic(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """(true probabilities, labels drawn from them, a model's probabilities that are the true
    ones with logits divided by 1/temperature): softmax(log model / T) recovers the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, len(CLASS_NAMES)))
    true = softmax(logits)
    labels = np.array([rng.choice(len(CLASS_NAMES), p=p) for p in true])
    return true, labels, softmax(logits * temperature)


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_exit(result: Result, code: int) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- apply_temperature ---------------------------------------------------------------------


def test_apply_temperature_is_softmax_of_log_p_over_t() -> None:
    _, _, probs = synthetic(50, 1.0)
    for temperature in (0.5, 1.0, 2.5):
        expected = softmax(np.log(probs) / temperature)
        assert np.allclose(apply_temperature(probs, temperature), expected, atol=1e-12)
        assert np.allclose(apply_temperature(probs[0], temperature), expected[0], atol=1e-12)
    assert np.allclose(apply_temperature(probs, 1.0), probs, atol=1e-12)


def test_apply_temperature_keeps_each_images_class_order() -> None:
    _, _, probs = synthetic(200, 1.0, seed=1)
    for temperature in (0.1, 0.7, 4.0):
        calibrated = apply_temperature(probs, temperature)
        assert (np.argsort(calibrated, axis=1) == np.argsort(probs, axis=1)).all()


def test_apply_temperature_on_dequantized_uint8_outputs_with_zeros() -> None:
    steps = np.array([[0, 64, 191], [0, 0, 255], [255, 0, 0]], dtype=np.float64) / 256
    for temperature in (0.5, 1.0, 3.0):
        calibrated = apply_temperature(steps, temperature)
        assert np.isfinite(calibrated).all() and (calibrated > 0).all()
        assert np.allclose(calibrated.sum(axis=1), 1.0)
        floored = np.where(steps > 0, steps, ZERO_PROBABILITY)
        assert np.allclose(calibrated, softmax(np.log(floored) / temperature))
    assert np.isfinite(negative_log_likelihood(steps, np.array([0, 0, 1]))), "p = 0 of the truth"


def test_no_temperature_leaves_the_probabilities_as_they_are() -> None:
    probs = np.array([[0.0, 0.25, 0.7421875]])
    assert np.array_equal(apply_temperature(probs, None), probs)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_a_temperature_that_is_not_positive_and_finite_is_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.array([0.2, 0.3, 0.5]), temperature)


@pytest.mark.parametrize("probs", [[0.5, 0.5], [0.5, math.nan, 0.5], [-0.1, 0.6, 0.5],
                                   [0.0, 0.0, 0.0]])
def test_probabilities_that_are_not_probabilities_are_refused(probs: list[float]) -> None:
    with pytest.raises(ValueError):
        apply_temperature(np.array(probs), 1.5)


# --- fitting: a known temperature and threshold recovered ----------------------------------


@pytest.mark.parametrize("temperature", [0.5, 0.75, 1.0, 2.0, 3.0])
def test_fit_temperature_recovers_a_known_temperature(temperature: float) -> None:
    _, labels, overconfident = synthetic(20000, temperature, seed=2)
    fitted = fit_temperature(overconfident, labels)
    assert fitted == pytest.approx(temperature, rel=0.05)


def test_fit_temperature_minimises_the_nll() -> None:
    _, labels, probs = synthetic(3000, 1.7, seed=3)
    fitted = fit_temperature(probs, labels)
    best = negative_log_likelihood(probs, labels, fitted)
    for other in (fitted * 0.9, fitted * 1.1, 1.0, TEMPERATURE_BOUNDS[0], TEMPERATURE_BOUNDS[1]):
        assert best <= negative_log_likelihood(probs, labels, other) + 1e-12


def test_fit_temperature_stops_at_the_bound_when_everything_is_right() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert fit_temperature(probs, np.array([0, 1, 2])) == pytest.approx(TEMPERATURE_BOUNDS[0])


def test_choose_threshold_is_the_highest_reaching_the_target() -> None:
    prob_malignant = np.arange(1, 21) / 20  # 20 malignant images: 0.05, 0.10, ..., 1.00
    labels = np.full(20, MALIGNANT_INDEX)
    threshold = choose_threshold(labels, prob_malignant)
    assert threshold == pytest.approx(0.10)  # catches 19 of 20 = 0.95
    assert (prob_malignant >= threshold).mean() >= TARGET_MALIGNANT_RECALL
    assert (prob_malignant >= 0.15).mean() < TARGET_MALIGNANT_RECALL
    with pytest.raises(ValueError, match="no malignant"):
        choose_threshold(np.zeros(5, dtype=int), np.linspace(0, 1, 5))


def test_fit_calibration_recovers_temperature_and_threshold() -> None:
    true, labels, overconfident = synthetic(20000, 2.5, seed=4)
    fit = fit_calibration(overconfident, labels)
    assert fit.temperature == pytest.approx(2.5, rel=0.05)
    known = choose_threshold(labels, true[:, MALIGNANT_INDEX])
    assert fit.threshold == pytest.approx(known, abs=0.01)
    calibrated = apply_temperature(overconfident, fit.temperature)
    assert fit.threshold == choose_threshold(labels, calibrated[:, MALIGNANT_INDEX])
    assert fit.nll_after < fit.nll_before
    assert (fit.n, fit.n_malignant) == (20000, int((labels == MALIGNANT_INDEX).sum()))


# --- site profiles -------------------------------------------------------------------------


def test_a_site_profile_holds_its_fit_counts_and_intervals() -> None:
    _, labels, probs = synthetic(300, 2.0, seed=5)
    profile = fit_site_profile(probs, labels, MODEL, {"kind": "folder", "path": "/x"},
                               n_resamples=FEW_RESAMPLES)
    assert set(profile) == PROFILE_KEYS
    assert (profile["kind"], profile["schema_version"]) == (PROFILE_KIND, SCHEMA_VERSION)
    assert profile["model"] == MODEL and profile["mode"] == "high-sensitivity"
    temperature, threshold, basis = fit_rule(probs, labels, TARGET_MALIGNANT_RECALL)
    assert (profile["temperature"], profile["threshold"]) == (temperature, threshold)
    assert profile["promise"] == {**basis, "confidence": 0.95, "weak": basis["basis"] != "exact"}
    assert temperature == fit_calibration(probs, labels).temperature
    assert threshold <= fit_calibration(probs, labels).threshold  # conservative, never above
    counts = {c: int((labels == i).sum()) for i, c in enumerate(CLASS_NAMES)}
    assert profile["counts"] == {**counts, "total": 300}
    called = malignant_called(apply_temperature(probs, temperature), threshold)
    sensitivity, specificity = malignant_recall_specificity(labels, called)
    figures = profile["figures"]
    assert figures["sensitivity"]["value"] == sensitivity >= TARGET_MALIGNANT_RECALL
    assert figures["specificity"]["value"] == specificity
    for name in ("sensitivity", "specificity"):
        low, high = figures[name]["interval_95"]
        assert 0.0 <= low <= figures[name]["value"] <= high <= 1.0
    assert 0.0 < figures["sensitivity_new_cases"]["value"] <= 1.0
    assert profile["bootstrap"] == {"resamples": FEW_RESAMPLES, "seed": 0}
    json.dumps(profile, allow_nan=False)  # JSON as it stands


def test_few_malignant_images_make_a_weak_promise_and_say_so() -> None:
    _, labels, probs = synthetic(300, 1.0, seed=6)
    keep = np.flatnonzero(labels != MALIGNANT_INDEX)[:60]
    malignant = np.flatnonzero(labels == MALIGNANT_INDEX)[:FEW_MALIGNANT]
    chosen = np.concatenate([keep, malignant])
    profile = fit_site_profile(probs[chosen], labels[chosen], MODEL, {},
                               n_resamples=FEW_RESAMPLES)
    assert any(w.startswith(f"the promise is weak: it rests on only {FEW_MALIGNANT} malignant")
               and f"at least {cases_for_exact(0.95)}" in w for w in profile["warnings"])
    assert profile["promise"]["basis"] == "prediction" and profile["promise"]["weak"]
    assert profile["figures"]["sensitivity"]["value"] == 1.0  # never above the lowest one


def test_many_malignant_images_mostly_classified_right_give_no_warning() -> None:
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1, 2], 200)
    probs = softmax(rng.normal(0, 1.5, (600, 3)) + 4.0 * np.eye(3)[labels])
    assert 0.9 < (probs.argmax(axis=1) == labels).mean() < 1.0  # some errors: T is pinned down
    profile = fit_site_profile(probs, labels, MODEL, {}, n_resamples=FEW_RESAMPLES)
    assert TEMPERATURE_BOUNDS[0] < profile["temperature"] < TEMPERATURE_BOUNDS[1]
    assert profile["warnings"] == []


@pytest.mark.parametrize(("offset", "bound", "effect"),
                         [(4.0, 0, "pushed to 0 and 1"), (-4.0, 1, "flattened towards one third")],
                         ids=["all-right-with-margin", "all-confidently-wrong"])
def test_a_temperature_at_a_bound_of_its_search_range_is_warned(offset: float, bound: int,
                                                                effect: str) -> None:
    """Every image right with margin to spare drives T to the lower bound (probabilities pushed
    to 0 and 1), every one confidently wrong to the upper: the images did not pin T down."""
    rng = np.random.default_rng(9)
    labels = np.repeat([0, 1, 2], 30)
    probs = softmax(rng.normal(0, 0.3, (90, 3)) + offset * np.eye(3)[labels])
    profile = fit_site_profile(probs, labels, MODEL, {}, n_resamples=FEW_RESAMPLES)
    assert profile["temperature"] == pytest.approx(TEMPERATURE_BOUNDS[bound], rel=1e-6)
    [warning] = [w for w in profile["warnings"] if "bound of its search range" in w]
    assert f"{profile['temperature']:.3g}" in warning and effect in warning


def test_a_profile_needs_malignant_images() -> None:
    with pytest.raises(ValueError, match="no malignant"):
        fit_site_profile(np.full((4, 3), 1 / 3), np.array([0, 1, 1, 0]), MODEL, {})


@pytest.mark.parametrize(("malignant", "normal", "benign", "enough"), [
    (MIN_MALIGNANT_TO_FIT - 1, 30, 30, False),
    (30, 1, MIN_OTHER_TO_FIT - 2, False),
    (MIN_MALIGNANT_TO_FIT, 0, MIN_OTHER_TO_FIT, True),
    (MIN_MALIGNANT_TO_FIT, MIN_OTHER_TO_FIT, 0, True),
])
def test_a_profile_needs_a_minimum_of_malignant_and_other_images(
        malignant: int, normal: int, benign: int, enough: bool) -> None:
    _, labels, probs = synthetic(600, 1.0, seed=10)
    chosen = np.concatenate([np.flatnonzero(labels == i)[:n]
                             for i, n in enumerate((normal, benign, malignant))])
    if enough:
        profile = fit_site_profile(probs[chosen], labels[chosen], MODEL, {},
                                   n_resamples=FEW_RESAMPLES)
        assert profile["counts"]["total"] == malignant + normal + benign
        return
    with pytest.raises(ValueError, match="too few labelled images") as refused:
        fit_site_profile(probs[chosen], labels[chosen], MODEL, {})
    assert f"{malignant} malignant and {normal + benign} normal or benign" in str(refused.value)


# --- the conservative threshold ------------------------------------------------------------


def test_the_exact_bound_is_clopper_pearsons() -> None:
    from scipy.stats import beta

    for k, n in ((59, 59), (99, 100), (95, 100), (20, 25)):
        assert clopper_pearson_lower(k, n) == pytest.approx(beta.ppf(0.05, k, n - k + 1),
                                                            abs=1e-9)
    assert cases_for_exact(0.95) == 59
    assert allowed_misses(58, 0.95) is None and allowed_misses(59, 0.95) == 0
    assert allowed_misses(100, 0.95) == 1  # 99/100 -> 0.9534, 98/100 -> 0.9389


@pytest.mark.parametrize("n_malignant", [25, 100])
def test_the_threshold_keeps_its_promise_on_scores_of_known_sensitivity(n_malignant: int) -> None:
    """Malignant logits ~ N(1, 1.5): the true sensitivity at T is P(logit >= logit T). Over
    many draws, the conservative T reaches 0.95 in at least 90 % of them with the exact bound,
    and with the prediction bound (a weak promise) far more often than the plain rule (catch
    95 % of the sample) and 0.95 on average."""
    from statistics import NormalDist

    truth = NormalDist(1.0, 1.5)
    rng = np.random.default_rng(11)
    kept, plain_kept, sensitivities = [], [], []
    for _ in range(400):
        logits = rng.normal(1.0, 1.5, n_malignant)
        probs = 1.0 / (1.0 + np.exp(-logits))
        threshold, basis = conservative_threshold(probs, 0.95)
        assert basis["basis"] == ("exact" if n_malignant >= 59 else "prediction")
        sensitivities.append(1.0 - truth.cdf(math.log(threshold / (1.0 - threshold))))
        kept.append(sensitivities[-1] >= 0.95)
        labels = np.full(n_malignant, MALIGNANT_INDEX)
        plain = choose_threshold(labels, probs)
        plain_kept.append(1.0 - truth.cdf(math.log(plain / (1.0 - plain))) >= 0.95)
    assert np.mean(plain_kept) < 0.7
    assert np.mean(sensitivities) >= 0.95
    assert np.mean(kept) >= (0.9 if n_malignant >= 59 else np.mean(plain_kept) + 0.2)


# --- the mode and the input-check level a profile carries ----------------------------------


@pytest.fixture(scope="module")
def int8_entry(manifest: dict):
    return resolve_model("int8")


@pytest.fixture()
def written_profile(tmp_path: Path, int8_entry) -> Path:
    _, labels, probs = synthetic(200, 1.5, seed=8)
    model = {"key": int8_entry.key, "variant": "int8", "sha256": int8_entry.info["sha256"]}
    return write_profile(fit_site_profile(probs, labels, model, {}, n_resamples=FEW_RESAMPLES),
                         tmp_path / "site.json")


def test_a_written_profile_loads_for_its_model(written_profile: Path, int8_entry) -> None:
    profile = json.loads(written_profile.read_text())
    calibration = load_profile(written_profile, int8_entry)
    assert calibration.temperature == profile["temperature"]
    assert calibration.threshold == profile["threshold"]
    assert calibration.profile == f"site.json (sha256 {sha256_of(written_profile)[:12]})"


def test_a_profile_for_another_model_is_refused(written_profile: Path, manifest: dict,
                                                int8_entry) -> None:
    others = [key for key, info in manifest["models"].items()
              if info["sha256"] != int8_entry.info["sha256"]]
    other = resolve_model(others[0])
    with pytest.raises(ProfileError, match="was fitted for .*int8.*sha256.*not for"):
        load_profile(written_profile, other)


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(kind="something else"), "not a site profile"),
    (lambda p: p.update(schema_version=99), "schema version"),
    (lambda p: p.update(temperature=-1), "temperature"),
    (lambda p: p.update(temperature="warm"), "temperature"),
    (lambda p: p.update(threshold=1.5), "threshold"),
    (lambda p: p.pop("threshold"), "threshold"),
])
def test_a_damaged_profile_is_refused(written_profile: Path, int8_entry, change,
                                      message: str) -> None:
    profile = json.loads(written_profile.read_text())
    change(profile)
    written_profile.write_text(json.dumps(profile))
    with pytest.raises(ProfileError, match=message):
        load_profile(written_profile, int8_entry)


def test_a_file_that_is_not_json_is_refused(tmp_path: Path, int8_entry) -> None:
    path = tmp_path / "site.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="cannot read site profile"):
        load_profile(path, int8_entry)
    assert issubclass(ProfileError, ModelError)  # the runtime's "model cannot be used" errors


# --- the shipped models: temperatures fitted on BUSI validation ----------------------------


@pytest.fixture(scope="module")
def validation_sets(busi_root: Path) -> dict:
    """Each shipped architecture's validation data (BUSI val; + BUS-BRA val if trained on it)."""
    return {arch: validation_set(manifest_path(), arch)
            for arch in {info["arch"] for info in read_manifest()["models"].values()}}


def test_every_shipped_tflite_model_has_a_temperature_fitted_on_validation(
        manifest: dict, validation_sets: dict) -> None:
    tflite = {key: info for key, info in manifest["models"].items() if info["format"] == "tflite"}
    for key, info in tflite.items():
        images, labels, described = validation_sets[info["arch"]]
        assert info.get("temperature") is not None, f"{key}: run python -m busi calibrate"
        assert info["temperature_fit"]["split"] == "val"
        assert info["temperature_fit"]["sets"] == described["sets"]
        assert info["temperature_fit"]["images"] == len(labels)
        classifier = Classifier(key, threads=2)
        raw = np.stack([classifier.predict_proba(i, calibrated=False) for i in images])
        fit = fit_calibration(raw, labels)
        assert fit.temperature == pytest.approx(info["temperature"], rel=1e-6), key
        assert info["threshold"] == classifier.threshold, key
        assert fit.threshold == pytest.approx(info["threshold"], rel=CPU_ROUNDING), key
        calibrated = np.stack([classifier.predict_proba(image) for image in images])
        assert np.array_equal(calibrated, apply_temperature(raw, info["temperature"]))
        # the threshold is a malignant image's own P: allow the CPU's rounding below it
        at_threshold = malignant_called(calibrated, fit.threshold * (1 - CPU_ROUNDING))
        recall, _ = malignant_recall_specificity(labels, at_threshold)
        assert recall >= TARGET_MALIGNANT_RECALL, key


def test_calibrating_on_the_validation_images_gives_the_manifests_temperature(
        manifest: dict, busi_root: Path, tmp_path: Path) -> None:
    """`edge-infer calibrate` on the default model's validation images reproduces the shipped
    fit (BUSI val, plus BUS-BRA's validation patients for a model trained across sites)."""
    rows = [(busi_root / row.file, row.label) for row in split_files("val")]
    if trained_on_bus_bra(manifest_path(), manifest["default_arch"]):
        site_root = resolve_bus_bra_dir()
        rows += [(site_root / row.file, row.label) for row in bus_bra_split_files("val")]
    table = tmp_path / "val.csv"
    table.write_text("file,label\n" + "".join(f"{path},{label}\n" for path, label in rows))
    out = tmp_path / "busi_val.json"
    result = run("calibrate", "--labels", table, "--out", out, "--resamples", FEW_RESAMPLES,
                 "--quiet")
    assert_exit(result, 0)
    profile = json.loads(out.read_text())
    entry = manifest["models"][resolve_model("int8").key]
    assert profile["temperature"] == pytest.approx(entry["temperature"], rel=1e-6)
    assert profile["threshold"] <= entry["threshold"]  # the conservative rule, never above
    assert profile["model"]["sha256"] == entry["sha256"]
    assert profile["source"]["kind"] == "labels" and profile["source"]["path"] == str(table)


# --- one temperature function behind every result ------------------------------------------


@pytest.fixture(scope="module")
def few_images(busi_root: Path) -> list[Path]:
    rows = split_files("test")
    return [busi_root / next(r for r in rows if r.label == label).file for label in CLASS_NAMES]


def raw_and_expected(classifier: Classifier, paths: list[Path]) -> np.ndarray:
    raw = np.stack([classifier.predict_proba(preprocess_image(p), calibrated=False) for p in paths])
    return apply_temperature(raw, classifier.calibration.temperature)


def probs_of(result: dict) -> list[float]:
    return [result["probs"][c] for c in CLASS_NAMES]


def test_cli_server_evaluate_and_benchmark_apply_the_same_temperature(
        classifier: Classifier, few_images: list[Path], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from benchmarks.calibration_report import calibrated_predictor
    from benchmarks.variants import TFLiteRunner, VariantSpec
    from edge_infer.web.app import create_app

    expected = raw_and_expected(classifier, few_images)
    temperature = classifier.calibration.temperature
    assert temperature == resolve_model("int8").info["temperature"]
    # the Python API
    for path, probs in zip(few_images, expected):
        assert probs_of(classifier.predict(path).to_dict()) == probs.tolist()
    # the CLI
    result = run("--json", *few_images)
    assert_exit(result, 0)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [probs_of(line) for line in lines] == expected.tolist()
    assert {(line["temperature"], line["profile"]) for line in lines} == {(temperature,
                                                                          "shipped")}
    # the server
    with TestClient(create_app("int8", threads=1, workers=1)) as client:
        for path, probs in zip(few_images, expected):
            answer = client.post("/predict", files={"file": (path.name, path.read_bytes())})
            assert answer.status_code == 200
            body = answer.json()
            assert probs_of(body) == probs.tolist()
            assert (body["temperature"], body["profile"]) == (temperature, "shipped")
        health = client.get("/healthz").json()
        assert (health["temperature"], health["profile"]) == (temperature, "shipped")
    # evaluate
    folder = tmp_path / "set"
    for path, label in zip(few_images, CLASS_NAMES):
        (folder / label).mkdir(parents=True)
        shutil.copy(path, folder / label / path.name)
    report_file = tmp_path / "report.json"
    result = run("evaluate", folder, "--json", report_file, "--resamples", FEW_RESAMPLES,
                 "--quiet")
    assert_exit(result, 0)
    report = json.loads(report_file.read_text())
    assert (report["temperature"], report["profile"]) == (temperature, "shipped")
    assert [probs_of(p) for p in report["predictions"]] == expected.tolist()
    # the benchmark
    spec = VariantSpec("tflite-int8", "tflite", "int8", str(classifier.entry.path),
                       classifier.threshold, "manifest", classifier.entry.key, None, temperature)
    runner = TFLiteRunner(spec, threads=1)
    images = np.stack([preprocess_image(p) for p in few_images])
    assert calibrated_predictor(runner.predict, temperature)(images).tolist() == expected.tolist()


def test_uncertain_and_forced_malignant_follow_the_calibrated_probabilities(
        classifier: Classifier, few_images: list[Path]) -> None:
    for path, probs in zip(few_images, raw_and_expected(classifier, few_images)):
        decision = classifier.predict(path, mode="high-sensitivity")
        ranked = sorted(probs, reverse=True)
        assert decision.uncertain == (ranked[0] - ranked[1] < 0.2)
        assert decision.threshold == classifier.threshold
        forced = probs[MALIGNANT_INDEX] >= classifier.threshold and argmax_indices(
            probs[np.newaxis])[0] != MALIGNANT_INDEX
        assert decision.forced_malignant == forced


# --- edge-infer calibrate and --site end to end --------------------------------------------


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory: pytest.TempPathFactory, busi_root: Path) -> Path:
    """A clinic's labelled folder: 50 BUSI test images, 20 of them malignant."""
    folder = tmp_path_factory.mktemp("clinic")
    rows = split_files("test")
    for label, count in (("normal", 10), ("benign", 20), ("malignant", 20)):
        (folder / label).mkdir()
        for row in [r for r in rows if r.label == label][:count]:
            shutil.copy(busi_root / row.file, folder / label / Path(row.file).name)
    return folder


@pytest.fixture(scope="module")
def site_profile(tmp_path_factory: pytest.TempPathFactory, site_folder: Path,
                 manifest: dict) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("profile") / "clinic.json"
    result = run("calibrate", site_folder, "--out", out, "--description", "test clinic",
                 "--resamples", FEW_RESAMPLES, "--quiet")
    return out, result


def test_calibrate_writes_a_profile_for_the_clinics_images(site_profile, site_folder: Path,
                                                           classifier: Classifier) -> None:
    out, result = site_profile
    assert_exit(result, 0)
    profile = json.loads(out.read_text())
    assert set(profile) == PROFILE_KEYS
    assert profile["model"] == classifier.model_info
    assert profile["counts"] == {"normal": 10, "benign": 20, "malignant": 20, "total": 50}
    assert profile["source"] == {"kind": "folder", "path": str(site_folder.resolve()),
                                 "description": "test clinic", "not_used": 0}
    paths = sorted(site_folder.rglob("*.png"), key=lambda p: (CLASS_NAMES.index(p.parent.name),
                                                             p))
    labels = np.array([CLASS_NAMES.index(p.parent.name) for p in paths])
    raw = np.stack([classifier.predict_proba(preprocess_image(p), calibrated=False) for p in paths])
    temperature, threshold, _ = fit_rule(raw, labels, TARGET_MALIGNANT_RECALL)
    assert profile["temperature"] == pytest.approx(temperature, rel=1e-9)
    assert profile["threshold"] == pytest.approx(threshold, rel=1e-9)
    assert "promise: weak, resting on 20 malignant images" in result.stdout
    check = profile["input_check"]
    distances = [classifier.raw_output(preprocess_image(p))[1] for p in paths]
    assert check["images"] == 50 and check["median_distance"] == pytest.approx(
        float(np.median(distances)), rel=1e-9)
    assert (classifier.input_check.threshold <= check["warning_threshold"]
            <= classifier.input_check.refuse_threshold)
    assert f"temperature {profile['temperature']:.3f}" in result.stdout
    assert f"threshold {profile['threshold']:.3f}" in result.stdout
    assert [w for w in result.stderr.splitlines() if w.startswith("warning:")] == [
        f"warning: {w}" for w in profile["warnings"]]


def test_calibrate_warns_when_malignant_images_are_few(tmp_path: Path, site_folder: Path) -> None:
    few = tmp_path / "few"
    shutil.copytree(site_folder, few)
    for path in sorted((few / "malignant").iterdir())[5:]:
        path.unlink()
    result = run("calibrate", few, "--out", tmp_path / "few.json", "--resamples", FEW_RESAMPLES,
                 "--quiet")
    assert_exit(result, 0)
    assert any(line.startswith("warning: the promise is weak: it rests on only 5 malignant")
               for line in result.stderr.splitlines()), result.stderr


def test_calibrate_refuses_a_folder_without_malignant_images(tmp_path: Path,
                                                             site_folder: Path) -> None:
    benign_only = tmp_path / "benign_only"
    shutil.copytree(site_folder / "benign", benign_only / "benign")
    out = tmp_path / "never.json"
    result = run("calibrate", benign_only, "--out", out)
    assert_exit(result, 2)
    assert "no malignant images" in result.stderr
    assert not out.exists()


def test_calibrate_refuses_too_few_images_with_their_counts(tmp_path: Path,
                                                             site_folder: Path) -> None:
    """Two images (one benign, one malignant) gave a profile with T at its bound and a
    threshold of 0.99999999: now refused, exit 1, nothing written."""
    two = tmp_path / "two"
    for label in ("benign", "malignant"):
        (two / label).mkdir(parents=True)
        first = sorted((site_folder / label).iterdir())[0]
        shutil.copy(first, two / label / first.name)
    out = tmp_path / "two.json"
    result = run("calibrate", two, "--out", out, "--quiet")
    assert_exit(result, 1)
    [error] = error_lines(result.stderr)
    assert "too few labelled images" in error and "1 malignant and 1 normal or benign" in error
    assert f"at least {MIN_MALIGNANT_TO_FIT} malignant and {MIN_OTHER_TO_FIT} normal or benign" \
        in error
    assert result.stdout == "" and not out.exists()


def test_calibrate_help_states_the_minimum() -> None:
    text = " ".join(run("calibrate", "--help").stdout.split())
    assert f"refused below {MIN_MALIGNANT_TO_FIT} malignant or {MIN_OTHER_TO_FIT} normal + " \
        "benign" in text
    assert f"fewer than {MIN_MALIGNANT_TO_FIT} malignant or {MIN_OTHER_TO_FIT} normal + benign" \
        in text


@pytest.mark.parametrize("make", [
    lambda folder: folder / "nosuch.json",
    lambda folder: folder,
    lambda folder: folder / "not_json.json",
], ids=["missing", "a-folder", "not-json"])
def test_a_site_profile_that_cannot_be_loaded_is_exit_1(make, tmp_path: Path,
                                                        site_folder: Path) -> None:
    """Missing, a folder or damaged alike: one error line naming the file, exit 1."""
    (tmp_path / "not_json.json").write_text("{not json")
    profile = make(tmp_path)
    image = sorted((site_folder / "benign").iterdir())[0]
    for args in (["--site", profile, image], ["evaluate", site_folder, "--site", profile]):
        result = run(*args)
        assert_exit(result, 1)
        [error] = error_lines(result.stderr)
        assert f"site profile {profile}" in error


def test_calibrate_needs_only_the_light_runtime(site_folder: Path, tmp_path: Path) -> None:
    code = ("import sys; from click.testing import CliRunner; from edge_infer.cli import main; "
            "r = CliRunner().invoke(main, ['calibrate', sys.argv[1], '--out', sys.argv[2], "
            "'--resamples', '20', '--quiet']); assert r.exit_code == 0, r.output; "
            "print([m for m in ('sklearn', 'scipy', 'matplotlib', 'tensorflow', 'keras') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code, str(site_folder),
                           str(tmp_path / "light.json")], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[]"


def test_classify_with_a_site_profile_uses_and_names_it(site_profile, site_folder: Path,
                                                        classifier: Classifier) -> None:
    out, _ = site_profile
    profile = json.loads(out.read_text())
    image = sorted((site_folder / "benign").iterdir())[0]
    result = run("--json", "--mode", "high-sensitivity", "--site", out, image)
    assert_exit(result, 0)
    [line] = [json.loads(text) for text in result.stdout.splitlines()]
    name = f"clinic.json (sha256 {sha256_of(out)[:12]})"
    assert (line["profile"], line["temperature"]) == (name, profile["temperature"])
    assert line["threshold"] == profile["threshold"]
    raw = classifier.predict_proba(preprocess_image(image), calibrated=False)
    assert probs_of(line) == apply_temperature(raw, profile["temperature"]).tolist()
    assert f"note: probabilities calibrated with temperature {profile['temperature']:.3f}" in \
        result.stderr


def test_evaluate_with_a_site_profile(site_profile, site_folder: Path, tmp_path: Path) -> None:
    out, _ = site_profile
    profile = json.loads(out.read_text())
    report_file = tmp_path / "report.json"
    result = run("evaluate", site_folder, "--site", out, "--mode", "high-sensitivity",
                 "--json", report_file, "--resamples", FEW_RESAMPLES, "--quiet")
    assert_exit(result, 0)
    report = json.loads(report_file.read_text())
    assert report["profile"].startswith("clinic.json (sha256 ")
    assert report["temperature"] == profile["temperature"]
    assert (report["threshold"], report["threshold_source"]) == (
        profile["threshold"], "the site profile's threshold")
    # the images it was fitted on: sensitivity as the profile says
    assert report["metrics"]["malignant_recall"] == profile["figures"]["sensitivity"]["value"]
    assert f"profile {report['profile']}" in result.stdout


def test_server_with_a_site_profile(site_profile, site_folder: Path) -> None:
    from fastapi.testclient import TestClient

    from edge_infer.web.app import create_app

    out, _ = site_profile
    profile = json.loads(out.read_text())
    image = sorted((site_folder / "malignant").iterdir())[0]
    with TestClient(create_app("int8", threads=1, workers=1, site=out)) as client:
        body = client.post("/predict", files={"file": (image.name, image.read_bytes())},
                           data={"mode": "high-sensitivity"}).json()
        assert body["profile"].startswith("clinic.json (sha256 ")
        assert (body["temperature"], body["threshold"]) == (profile["temperature"],
                                                            profile["threshold"])
        assert client.get("/healthz").json()["profile"] == body["profile"]


def test_the_profile_states_its_mode_and_site_uses_it(site_profile, site_folder: Path,
                                                      tmp_path: Path) -> None:
    """Without --mode, --site decides by the profile's mode: classify, evaluate and the
    server alike; --mode still overrides it."""
    from fastapi.testclient import TestClient

    from edge_infer.web.app import create_app

    out, _ = site_profile
    profile = json.loads(out.read_text())
    assert profile["mode"] == "high-sensitivity"
    image = sorted((site_folder / "malignant").iterdir())[0]
    result = run("--json", "--site", out, image)
    assert_exit(result, 0)
    line = json.loads(result.stdout)
    assert (line["mode"], line["threshold"]) == ("high-sensitivity", profile["threshold"])
    assert f"deciding by high-sensitivity at {profile['threshold']:.3f}" in result.stderr
    assert json.loads(run("--json", "--site", out, "--mode", "argmax",
                          image).stdout)["mode"] == "argmax"
    report_file = tmp_path / "report.json"
    assert_exit(run("evaluate", site_folder, "--site", out, "--json", report_file,
                    "--resamples", FEW_RESAMPLES, "--quiet"), 0)
    report = json.loads(report_file.read_text())
    assert (report["mode"], report["threshold"]) == ("high-sensitivity", profile["threshold"])
    with TestClient(create_app("int8", threads=1, workers=1, site=out)) as client:
        body = client.post("/predict", files={"file": (image.name, image.read_bytes())}).json()
    assert (body["mode"], body["threshold"]) == ("high-sensitivity", profile["threshold"])


def test_calibrate_makes_a_profile_for_the_mode_asked(site_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "argmax.json"
    assert_exit(run("calibrate", site_folder, "--out", out, "--mode", "argmax", "--resamples",
                    FEW_RESAMPLES, "--quiet"), 0)
    assert json.loads(out.read_text())["mode"] == "argmax"
    image = sorted((site_folder / "benign").iterdir())[0]
    assert json.loads(run("--json", "--site", out, image).stdout)["mode"] == "argmax"


def test_a_version_1_profile_still_loads_and_decides_by_argmax(site_profile, site_folder: Path,
                                                               tmp_path: Path) -> None:
    out, _ = site_profile
    profile = json.loads(out.read_text())
    old = {key: value for key, value in profile.items()
           if key not in ("mode", "promise", "input_check")}
    old["schema_version"] = 1
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    image = sorted((site_folder / "benign").iterdir())[0]
    result = run("--json", "--site", path, image)
    assert_exit(result, 0)
    line = json.loads(result.stdout)
    assert line["mode"] == "argmax" and line["temperature"] == profile["temperature"]
    assert "version 1 profile states no mode: argmax unless --mode is given" in line["profile"]
    assert "deciding by argmax" in result.stderr


def test_the_profiles_input_check_level_is_used_everywhere(site_profile, site_folder: Path,
                                                           classifier: Classifier,
                                                           tmp_path: Path) -> None:
    """A calibrated site's scans are judged against its own warning level (classify, evaluate
    and the server); the refuse boundary stays the model's."""
    from fastapi.testclient import TestClient

    from edge_infer.web.app import create_app

    out, _ = site_profile
    profile = json.loads(out.read_text())
    raised = min(profile["input_check"]["warning_threshold"] * 1.5,
                 classifier.input_check.refuse_threshold)
    profile["input_check"]["warning_threshold"] = raised
    path = tmp_path / "raised.json"
    path.write_text(json.dumps(profile))
    image = sorted((site_folder / "benign").iterdir())[0]
    line = json.loads(run("--json", "--site", path, image).stdout)
    assert line["ood_threshold"] == raised
    assert line["refuse_threshold"] == classifier.input_check.refuse_threshold
    report_file = tmp_path / "report.json"
    assert_exit(run("evaluate", site_folder, "--site", path, "--json", report_file,
                    "--resamples", FEW_RESAMPLES, "--quiet"), 0)
    predictions = json.loads(report_file.read_text())["predictions"]
    assert {p["ood_threshold"] for p in predictions} == {raised}
    with TestClient(create_app("int8", threads=1, workers=1, site=path)) as client:
        body = client.post("/predict", files={"file": (image.name, image.read_bytes())}).json()
    assert body["ood_threshold"] == raised
    beyond = {**profile, "input_check": {**profile["input_check"], "warning_threshold": 1e6}}
    path.write_text(json.dumps(beyond))
    capped = Classifier("int8", site=path)
    assert capped.input_check.threshold == capped.input_check.refuse_threshold


def test_a_profile_for_another_model_is_exit_1_everywhere(site_profile, manifest: dict,
                                                          site_folder: Path) -> None:
    out, _ = site_profile
    int8 = resolve_model("int8")
    other = next(key for key, info in manifest["models"].items()
                 if info["format"] == "tflite" and info["sha256"] != int8.info["sha256"])
    image = sorted((site_folder / "benign").iterdir())[0]
    for args in (["--model", other, "--site", out, image],
                 ["evaluate", site_folder, "--model", other, "--site", out],
                 ["serve", "--model", other, "--site", out]):
        result = run(*args)
        assert_exit(result, 1)
        [error] = error_lines(result.stderr)
        assert f"was fitted for {int8.key}" in error and f"not for {other}" in error
    with pytest.raises(ProfileError):
        Classifier(other, site=out)


# --- the report's two-halves simulation ----------------------------------------------------


def test_external_halves_split_by_case_stratified_and_fixed() -> None:
    from benchmarks.calibration_report import case_halves
    from edge_infer.inputs import labelled_csv

    try:
        root = resolve_external_dir()
    except FileNotFoundError as err:
        missing(f"external test set absent: {err}")
    found = labelled_csv(root / "labels.csv")
    files = [path.relative_to(root).as_posix() for path, _ in found.items]
    labels = np.array([CLASS_NAMES.index(label) for _, label in found.items])
    half_a, half_b = case_halves(root, files, labels)
    assert sorted([*half_a, *half_b]) == list(range(len(files)))
    for label in range(len(CLASS_NAMES)):
        in_a, in_b = (labels[half_a] == label).sum(), (labels[half_b] == label).sum()
        assert abs(in_a - in_b) <= 1
    again = case_halves(root, files, labels)
    assert np.array_equal(again[0], half_a) and np.array_equal(again[1], half_b)
