"""The one public API, `Classifier.predict` / `predict_proba`, on real scans and the shipped int8:
what it answers, that the input check and calibration always apply, and what it exposes."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge_infer import Classifier, Result, __version__
from edge_infer.cam import MAX_SIDE
from edge_infer.classifier import HEATMAP_MIN_PROBABILITY
from edge_infer.cli import EXIT_CANNOT_LISTEN, main
from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import split_files

REPO = Path(__file__).resolve().parent.parent
RECORD_FIELDS = ["prediction", "argmax_prediction", "forced_malignant", "mode", "threshold",
                 "probs", "prob_malignant", "top2", "margin", "uncertain", "model",
                 "temperature", "profile", "in_distribution", "domain_warning", "ood_score",
                 "ood_threshold", "refuse_threshold", "colour_score", "ood_reasons", "refused",
                 "notes"]
WHEEL_LIMIT_BYTES = 20 * 10**6


@pytest.fixture(scope="module")
def scans(busi_root: Path) -> list[Path]:
    """Three BUSI test-split scans, one of each class."""
    rows = split_files("test")
    return [busi_root / next(r.file for r in rows if r.label == label) for label in CLASS_NAMES]


def test_result_is_the_frozen_json_record(classifier: Classifier, scans: list[Path]) -> None:
    result = classifier.predict(scans[2])
    assert isinstance(result, Result)
    record = result.to_dict()
    assert list(record) == RECORD_FIELDS
    assert json.loads(json.dumps(record)) == record
    assert sum(record["probs"].values()) == pytest.approx(1.0, abs=1e-6)
    assert record["model"]["sha256"] == classifier.entry.info["sha256"]
    assert record["temperature"] == classifier.calibration.temperature  # calibration applied
    assert record["in_distribution"] is True  # the input check ran
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.prediction = "normal"  # type: ignore[misc]


def test_every_kind_of_input_gives_the_same_answer(classifier: Classifier,
                                                   scans: list[Path]) -> None:
    path = scans[1]
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    inputs = [path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), image,
              np.asarray(image)]
    answers = [classifier.predict(source).to_dict() for source in inputs]
    assert all(answer == answers[0] for answer in answers)
    grey = classifier.predict(np.asarray(image.convert("L")))  # the model sees luma only
    assert grey.probs == answers[0]["probs"]
    np.testing.assert_allclose(classifier.predict_proba(path),
                               [answers[0]["probs"][c] for c in CLASS_NAMES], atol=1e-12)


def test_predict_refuses_a_colour_photograph() -> None:
    """The colourful photo the old README example labelled 'benign' gets no label now."""
    skimage_data = pytest.importorskip("skimage.data")
    classifier = Classifier("int8")
    for photo in (skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()):
        result = classifier.predict(photo)
        assert result.refused and result.prediction is None, result.ood_reasons
        assert result.in_distribution is False
        assert classifier.predict(photo, ood="warn").prediction in CLASS_NAMES


def test_predict_proba_calibrated_or_raw(classifier: Classifier, scans: list[Path]) -> None:
    calibrated = classifier.predict_proba(scans[0])
    raw = classifier.predict_proba(scans[0], calibrated=False)
    assert calibrated.shape == raw.shape == (len(CLASS_NAMES),)
    assert classifier.calibration.temperature is not None
    assert not np.allclose(calibrated, raw)  # the shipped temperature is not 1
    assert np.argmax(calibrated) == np.argmax(raw)  # a temperature never reorders classes


def test_high_sensitivity_defaults_to_the_classifiers_threshold(classifier: Classifier,
                                                                scans: list[Path]) -> None:
    result = classifier.predict(scans[1], mode="high-sensitivity")
    assert result.threshold == classifier.threshold
    assert result.forced_malignant == (result.prob_malignant >= classifier.threshold
                                       and result.argmax_prediction != "malignant")


def test_unreadable_input_is_an_image_error(classifier: Classifier, tmp_path: Path) -> None:
    from edge_infer import ImageError

    text = tmp_path / "letter.png"
    text.write_text("not an image")
    for source in (text, b"", np.zeros((4, 4), dtype=np.float32)):
        with pytest.raises(ImageError):
            classifier.predict(source)


def test_the_public_methods_are_predict_and_its_parts() -> None:
    public = sorted(name for name, value in vars(Classifier).items()
                    if not name.startswith("_") and callable(value))
    assert public == ["decision_rule", "predict", "predict_proba", "raw_output"]


def test_heatmap_is_drawn_at_a_bounded_size(classifier: Classifier, scans: list[Path],
                                            tmp_path: Path) -> None:
    with Image.open(scans[2]) as opened:
        big = opened.convert("RGB").resize((3 * MAX_SIDE, 2 * MAX_SIDE))
    result = classifier.predict(big, heatmap=True)
    assert result.heatmap is not None
    assert result.heatmap.size == (MAX_SIDE, round(MAX_SIDE * 2 / 3))


def test_no_heatmap_for_a_class_the_model_all_but_rules_out(classifier: Classifier,
                                                            scans: list[Path]) -> None:
    for scan in scans:
        result = classifier.predict(scan)
        unlikely = min(CLASS_NAMES, key=lambda c: result.probs[c])
        if result.probs[unlikely] < HEATMAP_MIN_PROBABILITY:
            answer = classifier.predict(scan, heatmap=unlikely)
            assert answer.heatmap is None
            assert any("no heat-map drawn" in note for note in answer.notes)
            return
    pytest.fail("no test scan gives any class less than 1 %: pick another scan")


def test_version_is_printed() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_serve_on_a_busy_port_exits_6(manifest: dict) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert result.exit_code == EXIT_CANNOT_LISTEN, result.output
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.output


def test_evaluate_warns_about_images_the_model_was_fitted_on(busi_root: Path,
                                                             tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    chosen = [row for row in split_files("train")][:2] + [row for row in split_files("val")][:1]
    for row in chosen:
        target = tmp_path / "set" / row.label / Path(row.file).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((busi_root / row.file).read_bytes())
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "set"), "--json", str(report),
                                       "--resamples", "10", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: 3 of these images are named like images of the model's own training" \
        in result.output
    assert len(json.loads(report.read_text())["seen_in_fitting"]) == 3


def test_the_wheel_carries_the_runtime_and_lite0_models_only(tmp_path: Path) -> None:
    """The runtime and the Lite0 int8 and float16 models with their side files: float32 (the
    same answers as float16 at twice the size) stays in a checkout's models/."""
    source = tmp_path / "source"  # a clean copy: setuptools would reuse a stale build/ folder
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "runs", "__pycache__", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(
        (".dist-info", ".data"))}
    assert packages == {"edge_infer"}
    assert not [name for name in names if "efficientnetb0" in name]
    for variant in ("int8", "float16"):
        assert f"edge_infer/models/efficientnet-lite0-{variant}.tflite" in names
        assert f"edge_infer/models/efficientnet-lite0-{variant}-ood.npz" in names
    assert not [name for name in names if "float32" in name or name.endswith(".keras")]
    assert "edge_infer/web/static/index.html" in names
    assert wheel.stat().st_size <= WHEEL_LIMIT_BYTES, wheel.stat().st_size
