"""The input check (issues 10 and 22): the feature score against an explicit covariance on
hand-built features, the fit, the colour, frame and logit scores, the threshold rule; both tiers'
thresholds and the parameters read from the manifest (sha256-checked); the shipped int8 model
on real BUSI test and BUS-BRA test scans and on the non-ultrasound set at the rates
benchmarks/reports/ood.json states; the fields, exit codes and refuse / warn / domain-warning
behaviour of the CLI, evaluate and the web API."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks import ood_sets
from benchmarks.ood_eval import JSON_NAME
from edge_infer.classifier import Classifier
from edge_infer.cli import EXIT_REFUSED, EXIT_UNREADABLE
from edge_infer.cli import main as edge_infer
from edge_infer.manifest import MANIFEST_FILENAME, ModelError, resolve_model
from edge_infer.ood import (
    COLOUR_THRESHOLD,
    DOMAIN_WARNING,
    REFUSE_MARGIN,
    FeatureDensity,
    choose_threshold,
    colour_score,
    energy_score,
    fit_feature_density,
    frame_reasons,
    load_feature_density,
    max_softmax_score,
    ood_fields,
)
from edge_infer.preprocess import ImageSource, decode_image
from edge_infer.splits import bus_bra_split_files, split_files
from edge_infer.web.app import create_app

REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "reports" / JSON_NAME
# Measured rates may differ from the report's by this much: the same model and images give
# the same scores, up to float round-off on an image that sits at a threshold.
RATE_TOLERANCE = 0.02


# --- the feature score on hand-built features -----------------------------------------------


def explicit_score(density: FeatureDensity, x: np.ndarray) -> float:
    """min over classes of (x - m)^T S^-1 (x - m) / C with the covariance S written out:
    sigma^2 I plus (lambda_i - sigma^2) p_i p_i^T along each principal direction p_i."""
    channels = density.channels
    cov = density.residual_variance * np.eye(channels)
    for direction, variance in zip(density.components, density.variances):
        cov += (variance - density.residual_variance) * np.outer(direction, direction)
    precision = np.linalg.inv(cov)
    unit = x / np.linalg.norm(x)
    return min(float((unit - m) @ precision @ (unit - m)) for m in density.means) / channels


@pytest.fixture()
def density() -> FeatureDensity:
    """Two classes at e0 and e1 in 5 dimensions; one principal direction (e2 + e3)/sqrt 2 of
    variance 0.25; every other direction variance 0.01."""
    eye = np.eye(5)
    direction = (eye[2] + eye[3]) / math.sqrt(2)
    return FeatureDensity(means=eye[:2], components=direction[None], variances=np.array([0.25]),
                          residual_variance=0.01)


def test_score_equals_the_mahalanobis_distance_of_the_written_out_covariance(density) -> None:
    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(size=(20, 5)), np.eye(5), [[1, 0, 0.3, 0.3, 0]]])
    scores = density.score(points)
    for point, score in zip(points, scores):
        assert score == pytest.approx(explicit_score(density, point), rel=1e-9)
    assert density.score(points[0]) == pytest.approx(scores[0], rel=1e-12)  # one image, (C,)


def test_score_by_hand(density) -> None:
    # (e0 + e2) / sqrt 2 against the class at e0: along the principal direction 0.5 -> 0.5^2 /
    # 0.25 = 1; off it, |offset|^2 - 0.25 = (1/sqrt2 - 1)^2 + 0.5 - 0.25 -> / 0.01
    point = np.array([1.0, 0, 1.0, 0, 0])
    outside = (1 / math.sqrt(2) - 1) ** 2 + 0.5 - 0.25
    assert density.score(point) == pytest.approx((1.0 + outside / 0.01) / 5)
    assert density.score(np.eye(5)[0]) == 0.0  # a class mean itself
    assert density.score(np.eye(5)[1] * 7.0) == 0.0  # length does not matter, direction does


def test_a_black_image_scores_far_not_nan(density) -> None:
    score = density.score(np.zeros(5))
    assert np.isfinite(score) and score == pytest.approx(1 / 0.01 / 5)


def test_fit_gives_class_means_and_the_top_eigenvectors_of_the_shared_covariance() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 40)
    centres = rng.normal(size=(3, 12)) * 3
    features = centres[labels] + rng.normal(size=(120, 12)) * np.linspace(2, 0.1, 12)
    fitted = fit_feature_density(features, labels, components=3)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    means = np.stack([unit[labels == c].mean(axis=0) for c in range(3)])
    residual = unit - means[labels]
    eigenvalues, eigenvectors = np.linalg.eigh(residual.T @ residual / (120 - 3))
    order = np.argsort(eigenvalues)[::-1]
    np.testing.assert_allclose(fitted.means, means, atol=1e-12)
    np.testing.assert_allclose(fitted.variances, eigenvalues[order[:3]], rtol=1e-9)
    overlap = np.abs(fitted.components @ eigenvectors[:, order[:3]])
    np.testing.assert_allclose(overlap, np.eye(3), atol=1e-6)  # same directions, up to sign
    assert fitted.residual_variance == pytest.approx(eigenvalues[order[3:]].mean(), rel=1e-9)
    assert np.median(fitted.score(features)) == pytest.approx(1.0, abs=0.25)


def test_fit_refuses_too_many_components() -> None:
    with pytest.raises(ValueError, match="components"):
        fit_feature_density(np.ones((10, 4)) + np.eye(10, 4), np.repeat([0, 1], 5), components=4)


def test_parameters_survive_the_file_and_shapes_are_checked(density, tmp_path: Path) -> None:
    path = tmp_path / "ood.npz"
    density.save(path)
    loaded = load_feature_density(path, channels=5)
    point = np.array([0.2, 1.0, 0.1, -0.3, 0.4])
    assert loaded.score(point) == pytest.approx(density.score(point), rel=1e-6)
    with pytest.raises(ModelError, match="do not fit a model with 7 channels"):
        load_feature_density(path, channels=7)
    path.write_bytes(b"not an npz")
    with pytest.raises(ModelError, match="not an OOD parameter file"):
        load_feature_density(path, channels=5)


# --- colour, logit scores and the threshold rule --------------------------------------------


def test_colour_score_ignores_grey_and_a_display_tint_but_not_colour(busi_root: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 256), (128, 1))
    grey = np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)
    sepia = np.clip(ramp[..., None] * [1.0, 0.85, 0.6] + [12, 6, 0], 0, 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    assert colour_score(Image.fromarray(grey)) == 0.0
    assert colour_score(Image.fromarray(sepia)) == 0.0
    assert colour_score(Image.fromarray(noise)) > 0.5
    scan = Image.open(busi_root / split_files("test")[0].file)
    assert colour_score(scan) < COLOUR_THRESHOLD


def test_logit_scores() -> None:
    assert energy_score(np.zeros(3)) == pytest.approx(-math.log(3))
    assert energy_score(np.array([[10.0, 0, 0]]))[0] == pytest.approx(
        -(10 + math.log(1 + 2 * math.exp(-10))))
    assert max_softmax_score(np.array([0.7, 0.2, 0.1])) == pytest.approx(0.3)


def test_threshold_flags_the_allowed_share_midway_between_scores() -> None:
    scores = np.arange(1.0, 101.0)  # 100 in-distribution images
    threshold = choose_threshold(scores, 0.02)
    assert threshold == 98.5 and (scores > threshold).sum() == 2
    assert choose_threshold(scores, 0.02, flagged_elsewhere=1) == pytest.approx(99.5)
    assert (scores > choose_threshold(scores, 0.0)).sum() == 0
    with pytest.raises(ValueError, match="budget"):
        choose_threshold(scores, 0.02, flagged_elsewhere=3)


# --- parameters and thresholds from the manifest ---------------------------------------------


def record_of(classifier: Classifier, source: ImageSource) -> dict:
    """The result record `edge-infer --json` gives for one image (less `file`)."""
    return classifier.predict(source).to_dict()


@pytest.fixture(scope="module")
def checked(classifier: Classifier) -> Classifier:
    """The shipped int8 classifier, which must have a fitted check."""
    assert classifier.input_check is not None, (f"{classifier.entry.key} has no OOD check in the "
                                        "manifest: run python -m busi ood-fit")
    return classifier


@pytest.fixture(scope="module")
def scan(busi_root: Path, checked: Classifier) -> Path:
    """A BUSI test image the shipped check passes."""
    for row in split_files("test"):
        path = busi_root / row.file
        if record_of(checked, path)["in_distribution"]:
            return path
    raise AssertionError("the check flags every BUSI test image")


def copied_models(tmp_path: Path, manifest: dict, ood: dict | None) -> Path:
    """A models folder with the shipped int8 model, its sidecars and a manifest whose int8
    entry has `ood` in place of its own (or none); returns the manifest path."""
    entry = resolve_model("int8")
    info = dict(entry.info)
    for sidecar in ("cam_head", "ood"):
        if sidecar in info:
            shutil.copy(entry.path.with_name(info[sidecar]["file"]), tmp_path)
    shutil.copy(entry.path, tmp_path)
    info.pop("ood", None)
    if ood is not None:
        info["ood"] = ood
    changed = {**manifest, "models": {**manifest["models"], entry.key: info}}
    (tmp_path / MANIFEST_FILENAME).write_text(json.dumps(changed))
    return tmp_path / MANIFEST_FILENAME


def test_thresholds_come_from_the_manifest(checked: Classifier, manifest: dict, scan: Path,
                                           tmp_path: Path) -> None:
    """Above the warning threshold a real scan is labelled with a domain warning; above the
    refuse boundary it is refused."""
    shipped = checked.entry.info["ood"]
    result = record_of(checked, scan)
    assert result["ood_threshold"] == shipped["threshold"]
    assert result["refuse_threshold"] == shipped["refuse_threshold"] > shipped["threshold"]
    assert result["in_distribution"] is True and result["ood_score"] <= shipped["threshold"]
    assert result["domain_warning"] is False and result["ood_reasons"] == []
    warn_at = result["ood_score"] / 2
    lowered = copied_models(tmp_path, manifest, {**shipped, "threshold": warn_at})
    warned = record_of(Classifier("int8", manifest_file=lowered), scan)
    assert warned["in_distribution"] is False and warned["domain_warning"] is True
    assert warned["refused"] is False and warned["prediction"] == result["prediction"]
    assert warned["ood_reasons"] == [DOMAIN_WARNING]
    refuse_at = copied_models(tmp_path, manifest, {**shipped, "threshold": warn_at / 2,
                                                   "refuse_threshold": warn_at})
    strict = record_of(Classifier("int8", manifest_file=refuse_at), scan)
    assert strict["domain_warning"] is False and strict["refused"] is True
    assert strict["prediction"] is None and strict["argmax_prediction"] is not None


def test_the_refuse_boundary_was_chosen_by_leaving_a_site_out(checked: Classifier) -> None:
    facts = checked.entry.info["ood"]
    rule = facts["refuse_rule"]
    assert rule["margin"] == REFUSE_MARGIN
    assert rule["ratio"] == pytest.approx(max(rule["leave_a_site_out_max_ratio"].values())
                                          * REFUSE_MARGIN)
    assert facts["refuse_threshold"] == pytest.approx(facts["threshold"] * rule["ratio"])


def test_real_scans_of_both_training_sites_pass_the_frame_checks(busi_root: Path,
                                                                 bus_bra_root: Path) -> None:
    """Every BUSI and BUS-BRA train/val scan (every 4th) has contrast, structure and texture;
    the bounds leave room below the lowest of them."""
    files = ([busi_root / row.file for split in ("train", "val")
              for row in split_files(split)][::4]
             + [bus_bra_root / row.file for split in ("train", "val")
                for row in bus_bra_split_files(split)][::4])
    assert len(files) > 200
    assert [f for f in files if frame_reasons(decode_image(f).image)] == []


@pytest.mark.parametrize(("name", "reason"), [
    ("flat-grey-128", "blank"), ("flat-colour-200-30-30", "blank"),
    ("noise-uniform-0", "noise"), ("noise-gaussian-1", "noise"), ("noise-rayleigh-2", "noise"),
    ("gradient-horizontal", "gradient"), ("gradient-radial", "gradient"),
    ("noise-blobs-0", "blank")])
def test_blank_noise_and_gradient_frames_are_refused(checked: Classifier, name: str,
                                                     reason: str) -> None:
    image = next(n.image for n in ood_sets.synthetic_images() if n.name.endswith("/" + name))
    assert reason in " ".join(frame_reasons(image))
    result = record_of(checked, image)
    assert result["refused"] is True and result["domain_warning"] is False


def test_a_colour_doppler_frame_on_a_real_scan_is_refused(checked: Classifier,
                                                         scan: Path) -> None:
    frame = ood_sets.doppler_overlay(decode_image(scan).image, np.random.default_rng(0))
    result = record_of(checked, frame)
    assert result["refused"] is True and result["colour_score"] > COLOUR_THRESHOLD
    assert any("colour Doppler" in reason for reason in result["ood_reasons"])


def test_the_fit_records_every_split_file_it_read(checked: Classifier) -> None:
    from convert.validation import split_sha256s, trained_on_bus_bra
    from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, SPLIT_FILENAME, manifest_path, sha256_of

    folder = manifest_path().parent
    both = trained_on_bus_bra(manifest_path(), checked.entry.info["arch"])
    expected = {name: sha256_of(folder / name)
                for name in [SPLIT_FILENAME] + ([BUS_BRA_SPLIT_FILENAME] if both else [])}
    assert split_sha256s(folder, both) == expected
    assert checked.entry.info["ood"]["split_sha256s"] == expected  # the shipped fit


def test_ood_parameters_are_checked_like_model_files(checked: Classifier, manifest: dict,
                                                     tmp_path: Path) -> None:
    shipped = checked.entry.info["ood"]
    manifest_file = copied_models(tmp_path, manifest, shipped)
    sidecar = tmp_path / shipped["file"]
    data = bytearray(sidecar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sidecar.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the manifest"):
        Classifier("int8", manifest_file=manifest_file)
    sidecar.unlink()
    with pytest.raises(ModelError, match="file missing"):
        Classifier("int8", manifest_file=manifest_file)
    other = copied_models(tmp_path, manifest, {**shipped, "model_sha256": "0" * 64})
    with pytest.raises(ModelError, match="fitted for another model file"):
        Classifier("int8", manifest_file=other)


def test_a_model_without_a_fitted_check_says_so(manifest: dict, scan: Path,
                                                tmp_path: Path) -> None:
    manifest_file = copied_models(tmp_path, manifest, None)
    unchecked = Classifier("int8", manifest_file=manifest_file)
    result = record_of(unchecked, scan)
    assert unchecked.input_check is None
    assert {k: result[k] for k in ood_fields(None, "refuse")} == ood_fields(None, "refuse")
    assert result["prediction"] is not None


# --- the shipped int8 model on real files, at the report's rates ----------------------------


@pytest.fixture(scope="module")
def report(checked: Classifier) -> dict:
    """The shipped int8 model's two-tier figures in benchmarks/reports/ood.json."""
    if not REPORT.is_file():
        pytest.fail(f"{REPORT} missing: run python -m busi ood-eval")
    section = json.loads(REPORT.read_text())
    figures = section["variants"].get(checked.entry.key)
    assert figures is not None, f"{REPORT} has no {checked.entry.key}"
    assert figures["model"]["sha256"] == checked.entry.info["sha256"], (
        f"{REPORT} was measured on another model file: run python -m busi ood-eval")
    assert figures["refuse_threshold"] == checked.input_check.refuse_threshold, (
        f"{REPORT} was measured with another refuse boundary: run python -m busi ood-eval")
    return figures["tiers"]


def tier_shares(classifier: Classifier, sources: list) -> dict[str, float]:
    """The refused and warned shares of these images."""
    records = [record_of(classifier, source) for source in sources]
    return {"refused": float(np.mean([r["refused"] for r in records])),
            "warned": float(np.mean([r["domain_warning"] for r in records]))}


def assert_at_reported_rates(shares: dict[str, float], reported: dict) -> None:
    for tier in ("refused", "warned"):
        assert shares[tier] == pytest.approx(reported[tier]["rate"], abs=RATE_TOLERANCE), tier


def test_busi_test_scans_are_answered_at_the_reported_rates(checked: Classifier, report: dict,
                                                           busi_root: Path) -> None:
    files = [busi_root / row.file for row in split_files("test")]
    assert len(files) == report["test"]["refused"]["n"]
    shares = tier_shares(checked, files)
    assert_at_reported_rates(shares, report["test"])
    assert shares["refused"] <= 0.01  # the target for real breast scans


def test_bus_bra_test_patients_are_never_refused(checked: Classifier, report: dict,
                                                 bus_bra_root: Path) -> None:
    files = [bus_bra_root / row.file for row in bus_bra_split_files("test")]
    shares = tier_shares(checked, files)
    assert_at_reported_rates(shares, report["bus_bra"])
    assert shares["refused"] <= 0.01


def test_the_ood_set_is_refused_and_warned_at_the_reported_rates(checked: Classifier,
                                                                 report: dict,
                                                                 busi_root: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image (the [bench] extra) not installed")
    pytest.importorskip("pydicom", reason="pydicom (the [bench] extra) not installed")
    busi = [busi_root / row.file for row in split_files("test")]
    images = [named.image for named in ood_sets.ood_images(busi)]
    assert len(images) == report["ood"]["refused"]["n"]
    assert_at_reported_rates(tier_shares(checked, images), report["ood"])


# --- CLI and web API ------------------------------------------------------------------------


def run(*args: object):
    return CliRunner().invoke(edge_infer, [str(arg) for arg in args])


def test_cli_refuses_to_label_what_is_not_ultrasound(checked: Classifier, scan: Path,
                                                     not_ultrasound: Path) -> None:
    result = run("--json", scan, not_ultrasound)
    assert result.exit_code == EXIT_REFUSED, result.stderr
    good, bad = (json.loads(line) for line in result.stdout.splitlines())
    assert good["in_distribution"] is True and good["prediction"] is not None
    assert bad["in_distribution"] is False and bad["refused"] is True
    assert bad["prediction"] is None and bad["ood_reasons"] and not bad["domain_warning"]
    refusals = [line for line in result.stderr.splitlines() if line.startswith("refused:")]
    assert len(refusals) == 1 and str(not_ultrasound) in refusals[0]
    assert "does not look like a breast ultrasound" in refusals[0]
    table = run(scan, not_ultrasound)
    assert table.exit_code == EXIT_REFUSED
    row = next(line for line in table.stdout.splitlines() if str(not_ultrasound) in line)
    assert row.startswith("refused") and "not-ultrasound" in row
    rows = list(csv.DictReader(io.StringIO(run("--csv", not_ultrasound).stdout)))
    assert rows[0]["in_distribution"] == "False" and rows[0]["prediction"] == ""


def test_cli_warn_labels_it_anyway(checked: Classifier, not_ultrasound: Path) -> None:
    result = run("--json", "--ood", "warn", not_ultrasound)
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["in_distribution"] is False and answer["refused"] is False
    assert answer["prediction"] == answer["argmax_prediction"]
    assert any(line.startswith("warning:") and "labelled anyway" in line
               for line in result.stderr.splitlines())


def test_an_unreadable_file_outranks_a_refusal(checked: Classifier, not_ultrasound: Path,
                                               tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert run(not_ultrasound, broken).exit_code == EXIT_UNREADABLE


def test_web_api_carries_the_check_and_honours_warn(checked: Classifier, scan: Path,
                                                    not_ultrasound: Path) -> None:
    def post(path: Path, **form: str):
        return client.post("/predict", data=form,
                           files={"file": (path.name, path.read_bytes(), "image/png")})

    with TestClient(create_app("int8", threads=1, workers=1)) as client:
        good, refused = post(scan).json(), post(not_ultrasound).json()
        warned = post(not_ultrasound, ood="warn").json()
        assert post(not_ultrasound, ood="ignore").status_code == 422
    assert good["in_distribution"] is True and good["prediction"] is not None
    assert refused["in_distribution"] is False and refused["prediction"] is None
    assert refused["refused"] and refused["ood_reasons"]
    assert warned["in_distribution"] is False and not warned["refused"]
    assert warned["prediction"] == warned["argmax_prediction"]
    assert refused == {**warned, "prediction": None, "refused": True,
                       "forced_malignant": False}


def warned_models(tmp_path: Path, manifest: dict, scan: Path, checked: Classifier) -> Path:
    """A models folder whose int8 check warns about `scan` (its warning threshold halved
    below the scan's distance); the folder."""
    shipped = checked.entry.info["ood"]
    score = record_of(checked, scan)["ood_score"]
    tmp_path.mkdir(exist_ok=True)
    return copied_models(tmp_path, manifest, {**shipped, "threshold": score / 2}).parent


def test_cli_labels_a_breast_scan_unlike_the_training_ones_and_exits_0(
        checked: Classifier, manifest: dict, scan: Path, not_ultrasound: Path,
        tmp_path: Path) -> None:
    env = {"EDGE_INFER_MODELS": str(warned_models(tmp_path, manifest, scan, checked))}
    result = CliRunner().invoke(edge_infer, ["--json", str(scan)], env=env)
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["domain_warning"] is True and answer["refused"] is False
    assert answer["prediction"] == answer["argmax_prediction"]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "differs from the training hospitals' scans" in line
    assert "edge-infer evaluate" in line and ">" not in line
    both = CliRunner().invoke(edge_infer, [str(scan), str(not_ultrasound)], env=env)
    assert both.exit_code == EXIT_REFUSED  # the refused image decides the batch's exit code
    row = next(line for line in both.stdout.splitlines() if str(scan) in line)
    assert "domain-warning" in row and not row.startswith("refused")


def test_evaluate_counts_refusals_and_warnings_per_class(checked: Classifier, manifest: dict,
                                                         scan: Path, not_ultrasound: Path,
                                                         tmp_path: Path) -> None:
    """At a clinic, `edge-infer evaluate` says how many of its labelled scans the check would
    refuse (false alarms there) and how many draw the domain warning, per class, and still
    scores every image."""
    pytest.importorskip("sklearn", reason="scikit-learn (the [evaluate] extra) not installed")
    images = tmp_path / "images"
    (images / "benign").mkdir(parents=True)
    shutil.copy(scan, images / "benign" / "scan.png")
    shutil.copy(not_ultrasound, images / "benign" / "screenshot.png")
    out = tmp_path / "report.json"
    env = {"EDGE_INFER_MODELS": str(warned_models(tmp_path / "models", manifest, scan,
                                                  checked))}
    result = CliRunner().invoke(edge_infer, ["evaluate", str(images), "--json", str(out),
                                             "--resamples", "10", "--quiet"], env=env)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["n_images"] == 2
    ood = report["out_of_distribution"]
    assert (ood["refused"], ood["warned"]) == (1, 1)
    assert ood["per_class"]["benign"] == {"refused": 1, "warned": 1}
    assert ood["files_refused"] == [str(images / "benign" / "screenshot.png")]
    assert ood["files_warned"] == [str(images / "benign" / "scan.png")]
    assert "refuse them): 1 of 2 images" in result.stdout
    assert all(p["prediction"] is not None for p in report["predictions"])
