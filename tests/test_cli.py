"""`edge-infer` end to end: the CLI against the Python API, its output formats, exit codes and
awkward inputs. Model-agnostic: it runs against whatever models are shipped."""

from __future__ import annotations

import builtins
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from fake_images import png_header_only
from PIL import Image
from required import missing

from edge_infer import manifest as manifest_module
from edge_infer.classifier import Classifier
from edge_infer.cli import (
    CALIBRATE_EXIT_CODES,
    CLASSIFY_EXIT_CODES,
    EVALUATE_EXIT_CODES,
    EXIT_REFUSED,
    INFO_EXIT_CODES,
    PROGRESS_MIN_IMAGES,
    SERVE_EXIT_CODES,
    main,
)
from edge_infer.decision import argmax_indices, decide
from edge_infer.manifest import MANIFEST_FILENAME, ModelError, resolve_model
from edge_infer.ood import ood_fields
from edge_infer.spec import CLASS_NAMES, UNCERTAIN_MARGIN
from edge_infer.splits import split_files

DECISION_KEYS = ("prediction", "argmax_prediction", "forced_malignant", "mode", "threshold",
                 "probs", "prob_malignant", "top2", "margin", "uncertain")
RESULT_KEYS = {*DECISION_KEYS, "file", "model", "temperature", "profile", "notes",
               *ood_fields(None, "refuse")}
MODEL_KEYS = {"key", "variant", "sha256"}
RECORD_KEYS = [*DECISION_KEYS, "model", "temperature", "profile", *ood_fields(None, "refuse"),
               "notes"]
PER_RUN_KEYS = ("model", "temperature", "profile")  # evaluate states them once per report
CSV_HEADER = ["file", "prediction", "argmax_prediction", "prob_normal", "prob_benign",
              "prob_malignant", "forced_malignant", "uncertain", "threshold", "margin",
              "temperature", "profile", "in_distribution", "domain_warning", "ood_score", "error"]
PROB_TOLERANCE = 1e-6
IMAGES_PER_CLASS = {"normal": 3, "benign": 4, "malignant": 3}
ORIENTATION_TAG = 0x0112
HEAVY_MODULES = ("tensorflow", "keras", "tf_keras")
SUBPROCESS_TIMEOUT = 300

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")

BadInputMaker = Callable[[Path, Path], Path]  # (folder, a BUSI scan) -> the bad input
ImageBuilder = Callable[[Image.Image, Path], Path]  # (grey scan, folder) -> the image file


# --- helpers -------------------------------------------------------------------------------


def run(*args: object) -> Result:
    """`edge-infer ARGS` in-process (stdout and stderr kept apart)."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_exit(result: Result, code: int) -> None:
    """The command exited with `code` on purpose: no exception escaped."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line parsed as JSON (so stdout holds nothing else)."""
    return [json.loads(line) for line in stdout.splitlines()]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error(stderr: str, *fragments: str) -> None:
    """Exactly one `error:` line, mentioning every fragment."""
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def assert_consistent(result: dict) -> None:
    """A result follows the documented schema and the decision rule for its own probabilities."""
    assert set(result) == RESULT_KEYS
    assert set(result["model"]) == MODEL_KEYS
    probs = result["probs"]
    assert list(probs) == list(CLASS_NAMES)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert sum(probs.values()) == pytest.approx(1.0, abs=0.05)
    values = [probs[c] for c in CLASS_NAMES]
    ranked = sorted(range(len(values)), key=lambda i: (values[i], i), reverse=True)
    assert result["argmax_prediction"] == CLASS_NAMES[ranked[0]]
    assert result["prob_malignant"] == probs["malignant"]
    assert result["top2"] == [{"label": CLASS_NAMES[i], "prob": values[i]} for i in ranked[:2]]
    assert result["margin"] == pytest.approx(values[ranked[0]] - values[ranked[1]], abs=1e-12)
    assert result["uncertain"] == (result["margin"] < UNCERTAIN_MARGIN)
    threshold = result["threshold"]
    assert (threshold is None) == (result["mode"] == "argmax")
    forced = (threshold is not None and result["prob_malignant"] >= threshold
              and result["argmax_prediction"] != "malignant")
    assert result["forced_malignant"] == forced
    assert result["prediction"] == ("malignant" if forced else result["argmax_prediction"])
    expected = decide(values, result["mode"], threshold).to_dict()
    assert {key: result[key] for key in DECISION_KEYS} == expected


def assert_matches_api(result: dict, api: dict) -> None:
    """The CLI's decision equals the Python API's: labels and flags exactly, numbers to 1e-6."""
    for key in ("prediction", "argmax_prediction", "forced_malignant", "mode", "threshold",
                "uncertain"):
        assert result[key] == api[key], key
    for name in CLASS_NAMES:
        assert result["probs"][name] == pytest.approx(api["probs"][name], abs=PROB_TOLERANCE)
    assert result["prob_malignant"] == pytest.approx(api["prob_malignant"], abs=PROB_TOLERANCE)
    assert [t["label"] for t in result["top2"]] == [t["label"] for t in api["top2"]]
    assert result["margin"] == pytest.approx(api["margin"], abs=2 * PROB_TOLERANCE)


def model_key(manifest: dict, variant: str) -> str:
    return f"{manifest['default_arch']}/{variant}"


def flip_a_byte(path: Path) -> None:
    """Damage a file in the middle, keeping its size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def console_script() -> Path:
    """The installed `edge-infer` of this interpreter's environment."""
    installed = Path(sysconfig.get_path("scripts")) / "edge-infer"
    found = installed if installed.is_file() else shutil.which("edge-infer")
    if not found:
        pytest.fail("the edge-infer console script is not installed (pip install .)")
    return Path(found)


def run_script(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess (inherits the environment)."""
    return subprocess.run([str(console_script()), *(str(arg) for arg in args)], cwd=cwd,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


def run_python(code: str, *args: object) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", code, *(str(arg) for arg in args)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


def modules_loaded_by(code: str, packages: tuple[str, ...], *args: object) -> str:
    """Run CODE (given ARGS) in a fresh interpreter; the modules of `packages` it loaded, as
    the printed sorted list ('[]' when none)."""
    done = run_python(f"{code}; import sys; "
                      f"print(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r}))",
                      *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_images(busi_root: Path) -> list[Path]:
    """~10 BUSI test-split images, a few of each class."""
    rows = split_files("test")
    chosen = [row for label, count in IMAGES_PER_CLASS.items()
              for row in [r for r in rows if r.label == label][:count]]
    return [busi_root / row.file for row in chosen]


@pytest.fixture(scope="session")
def scan(test_images: list[Path]) -> Path:
    return test_images[0]


@pytest.fixture(scope="session")
def borderline(classifier: Classifier, busi_root: Path) -> tuple[Path, dict]:
    """The first BUSI test image whose argmax is not malignant but prob_malignant > 0."""
    for row in split_files("test"):
        path = busi_root / row.file
        result = classifier.predict(path).to_dict()
        if result["argmax_prediction"] != "malignant" and result["prob_malignant"] > 0.0:
            return path, result
    pytest.skip("the model gives no BUSI test image a non-malignant argmax with "
                "prob_malignant > 0: no image a threshold could force")


@pytest.fixture()
def scans_folder(tmp_path: Path, test_images: list[Path]) -> Path:
    """PROGRESS_MIN_IMAGES copies of BUSI scans in one folder (enough for a progress bar)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(PROGRESS_MIN_IMAGES):
        source = test_images[i % len(test_images)]
        shutil.copy(source, folder / f"scan {i:02d}{source.suffix}")
    return folder


# --- no model needed -----------------------------------------------------------------------


def test_importing_the_runtime_does_not_import_tensorflow() -> None:
    code = "import edge_infer, edge_infer.cli, edge_infer.classifier"
    assert modules_loaded_by(code, HEAVY_MODULES) == "[]"


@pytest.mark.parametrize("args", [
    [],
    ["classify"],
    ["--json", "--csv", "scan.png"],
    ["--mode", "argmax", "--threshold", "0.5", "scan.png"],
    ["--threshold", "1.5", "scan.png"],
    ["--threshold", "-0.1", "scan.png"],
    ["--threshold", "nan", "scan.png"],
    ["--mode", "sensitive", "scan.png"],
    ["--threads", "0", "scan.png"],
], ids=["no-args", "classify-no-args", "json-and-csv", "argmax-with-threshold",
        "threshold-above-1", "threshold-below-0", "threshold-nan", "unknown-mode", "threads-0"])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert_exit(result, 2)
    assert result.stdout == ""


def test_help_through_the_console_script() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: edge-infer" in done.stdout and "info" in done.stdout
    done = run_script("classify", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--model", "--mode", "--threshold", "--json", "--csv", "--threads", "--quiet"):
        assert option in done.stdout


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(("command", "epilog", "codes"), [
    ("classify", CLASSIFY_EXIT_CODES, ["0", "1", "2", "3", "5"]),
    ("evaluate", EVALUATE_EXIT_CODES, ["0", "1", "2", "3", "4"]),
    ("calibrate", CALIBRATE_EXIT_CODES, ["0", "1", "2", "3", "4"]),
    ("info", INFO_EXIT_CODES, ["0", "1"]),
    ("serve", SERVE_EXIT_CODES, ["0", "1", "2", "6"]),
], ids=["classify", "evaluate", "calibrate", "info", "serve"])
def test_help_lists_each_commands_exit_codes(command: str, epilog: str,
                                             codes: list[str]) -> None:
    """The codes each command can exit with (read off cli.py), in its --help; the group's help
    says where to find them."""
    result = run(command, "--help")
    assert_exit(result, 0)
    assert one_line(epilog) in one_line(result.stdout)
    assert re.findall(r"(?:Exit codes:|;) (\d) (?!takes precedence)", epilog) == codes
    group = run("--help")
    assert "Exit codes" in group.stdout and "COMMAND --help" in one_line(group.stdout)


def test_quiet_console_script_prints_nothing_on_stderr(classifier: Classifier,
                                                       scan: Path) -> None:
    """Not even the interpreter's own C++ log line ("Created TensorFlow Lite XNNPACK
    delegate"), which no Python setting reaches."""
    done = run_script("-q", "--json", scan)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [line] = json_lines(done.stdout)
    assert_matches_api(line, classifier.predict(scan).to_dict())


def test_silencing_native_stderr_restores_fd_2_and_lets_exceptions_through() -> None:
    code = ("import os, sys; from edge_infer.tflite_model import native_stderr_silenced\n"
            "try:\n"
            "    with native_stderr_silenced():\n"
            "        os.write(2, b'hidden\\n')\n"
            "        raise KeyError('raised inside')\n"
            "except KeyError as err:\n"
            "    os.write(2, f'after: {err}\\n'.encode())\n"
            "with native_stderr_silenced(False):\n"
            "    os.write(2, b'not silenced\\n')\n")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "after: 'raised inside'\nnot silenced\n"


@pytest.mark.parametrize(("content", "message"), [
    (None, "manifest not found"),
    ("{not json", "is not valid JSON"),
    ("[]", "has no 'models' table"),
], ids=["missing", "not-json", "no-models"])
@pytest.mark.parametrize("args", [["scan.png"], ["info"], ["info", "--json"]],
                         ids=["classify", "info", "info-json"])
def test_an_unreadable_manifest_is_one_error_line_and_exit_1(
        args: list[str], content: str | None, message: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    manifest_file = tmp_path / MANIFEST_FILENAME
    if content is not None:
        manifest_file.write_text(content)
    monkeypatch.setattr(manifest_module, "manifest_path", lambda: manifest_file)
    result = run(*args)
    assert_exit(result, 1)
    assert result.stdout == ""
    assert_one_error(result.stderr, message)


# --- output formats against the Python API -------------------------------------------------


def test_json_equals_the_python_api(classifier: Classifier, manifest: dict,
                                    test_images: list[Path]) -> None:
    result = run("--json", *test_images)
    assert_exit(result, 0)
    lines = json_lines(result.stdout)
    assert [line["file"] for line in lines] == [str(path) for path in test_images]
    key = model_key(manifest, "int8")
    for line, path in zip(lines, test_images):
        assert_consistent(line)
        assert_matches_api(line, classifier.predict(path).to_dict())
        assert line["model"] == {"key": key, "variant": "int8",
                                 "sha256": manifest["models"][key]["sha256"]}


def test_json_lines_are_the_classifiers_answer(classifier: Classifier, test_images: list[Path],
                                               not_ultrasound: Path) -> None:
    """Each --json line is Classifier.answer's record byte for byte, keys in schema order; a
    refused image withholds `prediction` but keeps what the model computed."""
    images = [*test_images[:2], not_ultrasound]
    result = run("--json", "--threads", 1, *images)
    assert_exit(result, EXIT_REFUSED)
    lines = result.stdout.splitlines()
    assert len(lines) == len(images)
    for line, path in zip(lines, images):
        record = classifier.predict(path).to_dict()
        assert line == json.dumps({"file": str(path), **record})
        assert list(json.loads(line)) == ["file", *RECORD_KEYS]
    refused = json.loads(lines[-1])
    assert refused["refused"] is True and refused["prediction"] is None
    assert refused["argmax_prediction"] == refused["top2"][0]["label"]
    assert refused["argmax_prediction"] in CLASS_NAMES  # computed, shown for inspection only


def test_csv_header_and_rows(classifier: Classifier, test_images: list[Path]) -> None:
    images = test_images[:3]
    result = run("--csv", *images)
    assert_exit(result, 0)
    reader = csv.DictReader(io.StringIO(result.stdout))
    rows = list(reader)
    assert reader.fieldnames == CSV_HEADER
    assert [row["file"] for row in rows] == [str(path) for path in images]
    for row, path in zip(rows, images):
        api = classifier.predict(path).to_dict()
        assert (row["prediction"], row["argmax_prediction"]) == (api["prediction"],
                                                                 api["argmax_prediction"])
        for name in CLASS_NAMES:
            assert float(row[f"prob_{name}"]) == pytest.approx(api["probs"][name],
                                                               abs=PROB_TOLERANCE)
        assert row["forced_malignant"] == str(api["forced_malignant"])
        assert row["uncertain"] == str(api["uncertain"])
        assert row["threshold"] == ""  # argmax mode has no threshold
        assert float(row["margin"]) == pytest.approx(api["margin"], abs=2 * PROB_TOLERANCE)


def test_default_table(classifier: Classifier, test_images: list[Path]) -> None:
    images = test_images[:3]
    result = run(*images)
    assert_exit(result, 0)
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["prediction", *CLASS_NAMES, "flags", "file"]
    assert len(rows) == len(images)
    for row, path in zip(rows, images):
        prediction, *probs, flags, name = row.split(None, 5)
        api = classifier.predict(path).to_dict()
        assert name == str(path)
        assert prediction == api["prediction"]
        for text, label in zip(probs, CLASS_NAMES):
            assert float(text) == pytest.approx(api["probs"][label], abs=5e-4 + PROB_TOLERANCE)
        expected_flags = [f for f, on in (("forced", api["forced_malignant"]),
                                          ("uncertain", api["uncertain"])) if on]
        assert flags == (",".join(expected_flags) or "-")


@pytest.mark.parametrize("variant", ["float16", "float32"])
def test_other_variants_report_their_own_model(variant: str, manifest: dict,
                                               test_images: list[Path]) -> None:
    key = model_key(manifest, variant)
    if key not in manifest["models"]:
        missing(f"the manifest has no {key}")
    images = test_images[:2]
    result = run("--json", "--model", variant, *images)
    assert_exit(result, 0)
    lines = json_lines(result.stdout)
    assert len(lines) == len(images)
    api = Classifier(variant)
    for line, path in zip(lines, images):
        assert_consistent(line)
        assert line["model"] == {"key": key, "variant": variant,
                                 "sha256": manifest["models"][key]["sha256"]}
        assert_matches_api(line, api.predict(path).to_dict())


# --- models: names, files and the manifest -------------------------------------------------


@pytest.mark.parametrize("name", ["int4", "efficientnet-b9/int8", "keras"])
def test_a_model_the_runtime_cannot_use_is_exit_1(name: str, manifest: dict, scan: Path) -> None:
    """Unknown names, and the Keras entry (not TFLite; its file is not shipped either)."""
    result = run("--model", name, scan)
    assert_exit(result, 1)
    assert result.stdout == ""
    assert_one_error(result.stderr)


def keras_entry(manifest: dict) -> tuple[str, list[str]]:
    """The default architecture's Keras key and the names of its TFLite variants."""
    arch = manifest["default_arch"]
    keys = [key for key, info in manifest["models"].items()
            if info["arch"] == arch and info["format"] == "keras"]
    if not keys:
        missing(f"no Keras entry for {arch} in the manifest")
    return keys[0], [info["variant"] for info in manifest["models"].values()
                     if info["arch"] == arch and info["format"] == "tflite"]


def test_a_keras_model_is_refused_with_the_tflite_variants_to_use(manifest: dict, scan: Path,
                                                                   tmp_path: Path) -> None:
    """Whether or not its file is there (an installed runtime does not ship it): the error says
    the light runtime runs TFLite only and names the variants to use, not a missing file."""
    key, variants = keras_entry(manifest)
    (tmp_path / MANIFEST_FILENAME).write_text(json.dumps(manifest))  # no model files beside it
    for env in ({}, {"EDGE_INFER_MODELS": str(tmp_path)}):
        result = CliRunner().invoke(main, ["--model", key, str(scan)], env=env)
        assert_exit(result, 1)
        assert result.stdout == ""
        assert_one_error(result.stderr, key, "Keras model", "TFLite", *variants)
        assert "missing" not in result.stderr
    info = run("info")
    [row] = [line for line in info.stdout.splitlines() if line.startswith(f"{key} ")]
    assert "not run by edge-infer" in row
    assert not any("not run by edge-infer" in line for line in info.stdout.splitlines()
                   if line.split()[0] in manifest["models"]
                   and manifest["models"][line.split()[0]]["format"] == "tflite")


def test_a_copy_of_a_shipped_model_file_is_recognised(manifest: dict, scan: Path,
                                                      tmp_path: Path) -> None:
    copy = tmp_path / "copy.tflite"
    shutil.copy(resolve_model("int8").path, copy)
    result = run("--json", "--model", copy, scan)
    assert_exit(result, 0)
    [line] = json_lines(result.stdout)
    assert line["model"]["key"] == model_key(manifest, "int8")


def test_a_model_file_not_in_the_manifest_is_refused(manifest: dict, scan: Path,
                                                     tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tflite"
    shutil.copy(resolve_model("int8").path, damaged)
    flip_a_byte(damaged)
    result = run("--json", "--model", damaged, scan)
    assert_exit(result, 1)
    assert result.stdout == ""
    assert_one_error(result.stderr, str(damaged), "not a model the manifest knows")


def test_classifier_refuses_an_unknown_model(manifest: dict) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        Classifier("int4")


def test_classifier_refuses_a_file_whose_sha256_differs(manifest: dict, tmp_path: Path) -> None:
    shipped = resolve_model("int8")
    manifest_file = tmp_path / MANIFEST_FILENAME
    manifest_file.write_text(json.dumps(manifest))
    model_file = tmp_path / shipped.info["file"]
    shutil.copy(shipped.path, model_file)
    for sidecar in ("cam_head", "ood"):  # heat-map head, OOD parameters: checked like the model
        if sidecar in shipped.info:
            shutil.copy(shipped.path.with_name(shipped.info[sidecar]["file"]), tmp_path)
    assert Classifier("int8", manifest_file=manifest_file).entry.path == model_file
    flip_a_byte(model_file)
    with pytest.raises(ModelError, match="does not match the manifest") as refused:
        Classifier("int8", manifest_file=manifest_file)
    assert shipped.info["sha256"][:12] in str(refused.value)
    model_file.unlink()
    with pytest.raises(ModelError, match="model file missing"):
        Classifier("int8", manifest_file=manifest_file)


def test_info_lists_every_manifest_key(manifest: dict) -> None:
    result = run("info")
    assert_exit(result, 0)
    lines = result.stdout.splitlines()[2:]
    listed = [line.split()[0] for line in lines if not line.startswith("note:")]
    assert listed == list(manifest["models"])
    missed = [key for key, entry in manifest["models"].items()
              if entry.get("verification", {}).get("targets_missed")]
    noted = [line.split()[1] for line in lines if line.startswith("note:")]
    assert noted == missed  # a model shipped despite a missed target is never silent


def test_info_json_is_the_manifest(manifest: dict) -> None:
    result = run("info", "--json")
    assert_exit(result, 0)
    assert json.loads(result.stdout) == manifest


# --- folders -------------------------------------------------------------------------------


def test_folder_recursion_masks_and_other_files(classifier: Classifier, test_images: list[Path],
                                                tmp_path: Path) -> None:
    folder = tmp_path / "study"
    deeper = folder / "left" / "2024"
    deeper.mkdir(parents=True)
    images = [folder / "a.png", folder / "B.PNG", deeper / "c.png"]
    for source, target in zip(test_images, images):
        shutil.copy(source, target)
    shutil.copy(test_images[0], folder / "a_mask.png")
    shutil.copy(test_images[1], deeper / "c_mask_1.png")
    (folder / "notes.txt").write_text("not an image\n")
    (deeper / "report.csv").write_text("a,b\n")
    (deeper / "scan.dcm").write_bytes(b"\0" * 200)
    result = run("--json", folder)
    assert_exit(result, 0)
    lines = json_lines(result.stdout)
    assert [line["file"] for line in lines] == [str(p) for p in sorted(images)]
    for line, path in zip(lines, sorted(images)):
        assert_consistent(line)
        assert_matches_api(line, classifier.predict(path).to_dict())
    assert f"note: {folder}: skipped 2 BUSI mask file(s)" in result.stderr.splitlines()
    assert [line for line in result.stderr.splitlines() if "not images by extension" in line] \
        == [f"note: {folder}: skipped 3 file(s) that are not images by extension (e.g. "
            "report.csv); give a file by name to classify it whatever its extension"]
    assert error_lines(result.stderr) == []


def test_a_png_without_an_extension_is_skipped_in_a_folder_with_a_note(
        classifier: Classifier, scan: Path, tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(scan, folder / "scan.png")
    shutil.copy(scan, folder / "noext")
    (folder / ".DS_Store").write_bytes(b"\0" * 16)  # hidden: skipped without a word
    result = run("--json", folder)
    assert_exit(result, 0)
    assert [line["file"] for line in json_lines(result.stdout)] == [str(folder / "scan.png")]
    assert f"note: {folder}: skipped 1 file(s) that are not images by extension (e.g. noext)" \
        in result.stderr
    quiet = run("--json", "--quiet", folder)
    assert_exit(quiet, 0)
    assert quiet.stderr == ""
    by_name = run("--json", folder / "noext")  # named on the command line: classified
    assert_exit(by_name, 0)
    [line] = json_lines(by_name.stdout)
    assert_matches_api(line, classifier.predict(scan).to_dict())


def test_progress_bar_goes_to_stderr_only(manifest: dict, scans_folder: Path) -> None:
    result = run("--json", scans_folder)
    assert_exit(result, 0)
    assert len(json_lines(result.stdout)) == PROGRESS_MIN_IMAGES
    assert f"{PROGRESS_MIN_IMAGES}/{PROGRESS_MIN_IMAGES}" in result.stderr
    quiet = run("--json", "--quiet", scans_folder)
    assert_exit(quiet, 0)
    assert quiet.stdout == result.stdout
    assert quiet.stderr == ""


# --- inputs that cannot be read: one error line each, exit 3 -------------------------------


def missing_file(folder: Path, scan: Path) -> Path:
    return folder / "nowhere.png"


def folder_without_images(folder: Path, scan: Path) -> Path:
    empty = folder / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no scans here\n")
    return empty


def text_named_png(folder: Path, scan: Path) -> Path:
    path = folder / "letter.png"
    path.write_text("Dear colleague,\n")
    return path


def truncated_png(folder: Path, scan: Path) -> Path:
    path = folder / "half.png"
    data = scan.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_byte_file(folder: Path, scan: Path) -> Path:
    path = folder / "zero.png"
    path.touch()
    return path


def absurd_dimensions(folder: Path, scan: Path) -> Path:
    path = folder / "huge.png"
    path.write_bytes(png_header_only(50_000, 50_000))
    return path


def above_the_pixel_limit(folder: Path, scan: Path) -> Path:
    path = folder / "big.png"
    path.write_bytes(png_header_only(8_000, 8_000))  # under Pillow's bomb guard, over MAX_PIXELS
    return path


def two_frames(scan: Path, image_format: str, **params: object) -> bytes:
    """The scan and the scan upside down as one two-frame file, in memory."""
    with Image.open(scan) as source:
        grey = source.convert("L")
    out = io.BytesIO()
    grey.save(out, format=image_format, save_all=True, append_images=[grey.rotate(180)],
              **params)
    return out.getvalue()


def truncated_animated_webp(folder: Path, scan: Path) -> Path:
    path = folder / "cine.webp"
    data = two_frames(scan, "WEBP")
    path.write_bytes(data[: len(data) // 2])  # Pillow's WebP decoder refuses it at open
    return path


def truncated_multipage_tiff(folder: Path, scan: Path) -> Path:
    path = folder / "pages.tif"
    data = two_frames(scan, "TIFF")
    path.write_bytes(data[: len(data) * 2 // 5])  # counting pages fails, before any load
    return path


def gif_cut_in_a_frame_header(folder: Path, scan: Path) -> Path:
    path = folder / "cut.gif"
    data = two_frames(scan, "GIF", duration=100)
    path.write_bytes(data[: data.rfind(b"\x21\xf9\x04") + 1])  # just after frame 2's '!'
    return path


BAD_INPUTS: dict[str, BadInputMaker] = {
    "missing file": missing_file,
    "folder without images": folder_without_images,
    "text named .png": text_named_png,
    "truncated PNG": truncated_png,
    "zero bytes": zero_byte_file,
    "50000x50000 header": absurd_dimensions,
    "8000x8000 header": above_the_pixel_limit,
    "truncated animated WebP": truncated_animated_webp,
    "truncated multi-page TIFF": truncated_multipage_tiff,
    "GIF cut in a frame header": gif_cut_in_a_frame_header,
}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=list(BAD_INPUTS))
def test_an_unreadable_input_is_one_error_line_and_exit_3(make: BadInputMaker,
                                                          manifest: dict, scan: Path,
                                                          tmp_path: Path) -> None:
    bad = make(tmp_path, scan)
    result = run("--json", bad)
    assert_exit(result, 3)
    [row] = json_lines(result.stdout)  # one row per input, the unreadable one included
    assert row["file"] == str(bad) and set(row) == {"file", "error"}
    assert_one_error(result.stderr, f"error: {bad}: {row['error']}")


def test_bad_inputs_are_each_named_and_good_ones_still_classified(
        manifest: dict, test_images: list[Path], tmp_path: Path) -> None:
    bad = [make(tmp_path, test_images[0]) for make in BAD_INPUTS.values()]
    good = test_images[:2]
    result = run("--json", good[0], *bad, good[1])
    assert_exit(result, 3)
    rows = json_lines(result.stdout)
    assert [row["file"] for row in rows] == [str(p) for p in (good[0], *bad, good[1])]
    assert ["error" in row for row in rows] == [False, *[True] * len(bad), False]
    errors = error_lines(result.stderr)
    assert len(errors) == len(bad)
    for path in bad:
        assert sum(error.startswith(f"error: {path}: ") for error in errors) == 1, path


def test_a_file_that_cannot_be_opened_is_exit_3(manifest: dict, test_images: list[Path],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked.png"
    shutil.copy(test_images[0], locked)
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if os.fspath(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    result = run("--json", locked, test_images[1])
    assert_exit(result, 3)
    rows = json_lines(result.stdout)
    assert [row["file"] for row in rows] == [str(locked), str(test_images[1])]
    assert "Permission denied" in rows[0]["error"] and "error" not in rows[1]
    assert_one_error(result.stderr, f"error: {locked}: ", "Permission denied")


# --- odd but valid images: classified, exit 0 ----------------------------------------------


def animated_gif(grey: Image.Image, folder: Path) -> Path:
    path = folder / "cine.gif"
    grey.save(path, save_all=True, append_images=[grey.rotate(180)], duration=100, loop=0)
    return path


def sixteen_bit_png(grey: Image.Image, folder: Path) -> Path:
    path = folder / "deep.png"
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(path)
    return path


def cmyk_jpeg(grey: Image.Image, folder: Path) -> Path:
    path = folder / "print.jpg"
    grey.convert("CMYK").save(path, quality=95)
    return path


def palette_png(grey: Image.Image, folder: Path) -> Path:
    path = folder / "palette.png"
    grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path)
    return path


def rgba_png(grey: Image.Image, folder: Path) -> Path:
    path = folder / "alpha.png"
    rgba = grey.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(grey.size))
    rgba.save(path)
    return path


def exif_rotated_jpeg(grey: Image.Image, folder: Path) -> Path:
    path = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # display rotated 90 degrees clockwise
    grey.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    return path


def is_animated(image: Image.Image) -> bool:
    return getattr(image, "n_frames", 1) > 1


ODD_INPUTS: dict[str, tuple[ImageBuilder, Callable[[Image.Image], bool]]] = {
    "animated GIF": (animated_gif, is_animated),
    "16-bit PNG": (sixteen_bit_png, lambda image: image.mode in ("I;16", "I")),
    "CMYK JPEG": (cmyk_jpeg, lambda image: image.mode == "CMYK"),
    "palette PNG": (palette_png, lambda image: image.mode == "P"),
    "RGBA PNG": (rgba_png, lambda image: image.mode == "RGBA"),
    "EXIF-rotated JPEG": (exif_rotated_jpeg,
                          lambda image: image.getexif().get(ORIENTATION_TAG) == 6),
}


@pytest.mark.parametrize(("make", "is_as_built"), ODD_INPUTS.values(), ids=list(ODD_INPUTS))
def test_an_odd_but_valid_image_is_classified(make: ImageBuilder,
                                              is_as_built: Callable[[Image.Image], bool],
                                              classifier: Classifier, scan: Path,
                                              tmp_path: Path) -> None:
    with Image.open(scan) as source:
        path = make(source.convert("L"), tmp_path)
    with Image.open(path) as built:
        assert is_as_built(built), "the test image is not what it claims to be"
    result = run("--json", path)
    assert_exit(result, 0)
    [line] = json_lines(result.stdout)
    assert_consistent(line)
    assert_matches_api(line, classifier.predict(path).to_dict())
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    if make is animated_gif:
        assert notes == [f"note: {path}: multi-frame image (2 frames): used the first frame"]
    else:
        assert notes == []


# --- mode and threshold --------------------------------------------------------------------


def test_a_threshold_below_prob_malignant_forces_malignant(borderline: tuple[Path, dict]) -> None:
    path, api = borderline
    p = api["prob_malignant"]
    for args in (["--threshold", repr(p / 2)],
                 ["--mode", "high-sensitivity", "--threshold", repr(p / 2)],
                 ["--threshold", repr(p)]):  # the threshold itself counts as reached
        result = run("--json", *args, path)
        assert_exit(result, 0)
        [line] = json_lines(result.stdout)
        assert_consistent(line)
        assert line["threshold"] == float(args[-1])
        assert (line["mode"], line["prediction"], line["forced_malignant"]) == (
            "high-sensitivity", "malignant", True)
        assert line["argmax_prediction"] == api["argmax_prediction"]
        assert line["prob_malignant"] == pytest.approx(p, abs=PROB_TOLERANCE)


def test_a_threshold_above_prob_malignant_keeps_the_argmax(borderline: tuple[Path, dict]) -> None:
    path, api = borderline
    t_high = (1.0 + api["prob_malignant"]) / 2
    result = run("--json", "--threshold", repr(t_high), path)
    assert_exit(result, 0)
    [line] = json_lines(result.stdout)
    assert_consistent(line)
    assert (line["mode"], line["threshold"]) == ("high-sensitivity", t_high)
    assert line["prediction"] == line["argmax_prediction"] == api["argmax_prediction"]
    assert line["forced_malignant"] is False


def test_high_sensitivity_defaults_to_the_manifest_threshold(manifest: dict,
                                                             test_images: list[Path]) -> None:
    threshold = manifest["models"][model_key(manifest, "int8")]["threshold"]
    result = run("--json", "--mode", "high-sensitivity", *test_images[:4])
    assert_exit(result, 0)
    lines = json_lines(result.stdout)
    assert len(lines) == 4
    for line in lines:
        assert_consistent(line)
        assert (line["mode"], line["threshold"]) == ("high-sensitivity", threshold)


# --- the installed console script ----------------------------------------------------------


def test_console_script_json_for_one_image(classifier: Classifier, scan: Path) -> None:
    done = run_script("--json", scan)
    assert done.returncode == 0, done.stderr
    [line] = json_lines(done.stdout)
    assert line["file"] == str(scan)
    assert_consistent(line)
    assert_matches_api(line, classifier.predict(scan).to_dict())


def test_console_script_bad_file_is_exit_3(manifest: dict, tmp_path: Path, scan: Path) -> None:
    bad = text_named_png(tmp_path, scan)
    done = run_script("--json", bad)
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout) == {"file": str(bad), "error": "not an image Pillow can read"}
    assert "Traceback" not in done.stderr
    assert_one_error(done.stderr, f"error: {bad}: ")


def test_console_script_from_another_directory(manifest: dict, scans_folder: Path) -> None:
    """A relative folder from an unrelated cwd; a progress bar on stderr, pure JSON on stdout."""
    done = run_script("--json", scans_folder.name, cwd=scans_folder.parent)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    assert [line["file"] for line in lines] == [
        str(Path(scans_folder.name) / p.name) for p in sorted(scans_folder.iterdir())]
    for line in lines:
        assert_consistent(line)
    assert f"{PROGRESS_MIN_IMAGES}/{PROGRESS_MIN_IMAGES}" in done.stderr


def test_classifying_does_not_import_tensorflow(manifest: dict, scan: Path) -> None:
    code = ("import sys; from edge_infer.classifier import Classifier; "
            "Classifier('int8').predict(sys.argv[1])")
    assert modules_loaded_by(code, HEAVY_MODULES, scan) == "[]"


# --- evaluate: a model's figures on labelled images ----------------------------------------

EVALUATION_KEYS = {"schema_version", "model", "temperature", "profile", "source", "mode",
                   "threshold", "threshold_source",
                   "n_images", "class_counts", "metrics", "intervals_95", "bootstrap",
                   "roc_benign_vs_malignant", "errors", "notes", "predictions"}
INTERVAL_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "malignant_recall",
                 "malignant_specificity", "auc_benign_vs_malignant"}
FEW_RESAMPLES = "50"
LIGHT_MODULES = ("sklearn", "matplotlib", "scipy")


def copy_into(folder: Path, images: list[Path], names: Callable[[Path], str]) -> list[Path]:
    """Copy images into folder / names(image) (BUSI's layout gives each image's class as its
    parent folder's name); returns the copies."""
    copies = []
    for image in images:
        target = folder / names(image)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
        copies.append(target)
    return copies


def class_tree(folder: Path, images: list[Path]) -> list[Path]:
    """A folder-per-class tree of images (their BUSI class), one per original file."""
    return copy_into(folder, images, lambda image: f"{image.parent.name}/{image.name}")


def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A labels CSV: file (relative to the CSV), label, and a column evaluate must ignore."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "case_id"])
        writer.writerows([file, label, i] for i, (file, label) in enumerate(rows))
    return path


def evaluate_json(tmp_path: Path, *args: object) -> tuple[Result, dict | None]:
    """`edge-infer evaluate ARGS --json FILE`: the result and the JSON it wrote (if any)."""
    out = tmp_path / "evaluation.json"
    out.unlink(missing_ok=True)
    result = run("evaluate", *args, "--resamples", FEW_RESAMPLES, "--json", out)
    return result, json.loads(out.read_text()) if out.is_file() else None


def test_evaluate_predictions_are_the_classifiers_answer(classifier: Classifier,
                                                         test_images: list[Path],
                                                         tmp_path: Path) -> None:
    """evaluate's per-image predictions are Classifier.answer's records (labelled anyway: ood
    warn) less the model and calibration fields, which the report states once."""
    images = class_tree(tmp_path / "study", [test_images[0], test_images[3], test_images[-1]])
    result, report = evaluate_json(tmp_path, tmp_path / "study", "--threads", 1)
    assert_exit(result, 0)
    assert [p["file"] for p in report["predictions"]] == [str(path) for path in images]
    for prediction, path in zip(report["predictions"], images):
        record = classifier.predict(path, ood="warn").to_dict()
        assert {key: record[key] for key in PER_RUN_KEYS} == {
            "model": report["model"], "temperature": report["temperature"],
            "profile": report["profile"]}
        assert prediction == {"file": str(path), "label": path.parent.name,
                              **{k: v for k, v in record.items() if k not in PER_RUN_KEYS}}
        assert list(prediction) == ["file", "label",
                                    *(key for key in RECORD_KEYS if key not in PER_RUN_KEYS)]


def expected_figures(classifier: Classifier, images: list[Path], labels: list[str],
                     threshold: float | None) -> dict:
    """Figures computed directly with scikit-learn on the Python API's own predictions."""
    from sklearn import metrics

    y = np.array([CLASS_NAMES.index(label) for label in labels])
    probs = np.array([[classifier.predict(p).probs[c] for c in CLASS_NAMES] for p in images])
    y_pred = argmax_indices(probs)
    called = y_pred == 2 if threshold is None else (y_pred == 2) | (probs[:, 2] >= threshold)
    lesion = y != 0
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y, y_pred, labels=[0, 1, 2], zero_division=0)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": by design
        warnings.simplefilter("ignore", UserWarning)
        balanced = metrics.balanced_accuracy_score(y, y_pred)
    expected = {
        "accuracy": metrics.accuracy_score(y, y_pred),
        "balanced_accuracy": balanced,
        "confusion_matrix": metrics.confusion_matrix(y, y_pred, labels=[0, 1, 2]).tolist(),
        "precision": precision.tolist(), "recall": recall.tolist(), "n": support.tolist(),
        "malignant_recall": called[y == 2].mean(),
        "malignant_specificity": (~called[y != 2]).mean(),
        "auc_benign_vs_malignant": metrics.roc_auc_score(y[lesion] == 2, probs[lesion, 2]),
        "roc_auc_ovr": None,
    }
    if len(set(y)) == 3:
        expected["roc_auc_ovr"] = metrics.roc_auc_score(
            y, probs / probs.sum(axis=1, keepdims=True), multi_class="ovr")
    return expected


def assert_evaluation_schema(report: dict, n_images: int) -> None:
    assert set(report) >= EVALUATION_KEYS
    assert report["schema_version"] == 1 and set(report["model"]) == MODEL_KEYS
    assert report["n_images"] == n_images == len(report["predictions"])
    assert sum(report["class_counts"].values()) == n_images
    assert set(report["intervals_95"]) == INTERVAL_KEYS
    assert report["bootstrap"] == {"resamples": int(FEW_RESAMPLES), "seed": 0, "level": 0.95}
    for prediction in report["predictions"]:
        assert set(prediction) == {*DECISION_KEYS, "file", "label", *ood_fields(None, "warn"),
                                   "notes"}
        assert prediction["label"] in CLASS_NAMES
    for error in report["errors"]:
        assert set(error) == {"input", "reason", "kind"}
        assert error["kind"] in ("unreadable", "unknown_label")
    roc = report["roc_benign_vs_malignant"]
    assert set(roc) == {"fpr", "tpr", "thresholds"} and len(roc["fpr"]) == len(roc["tpr"])


def assert_figures(report: dict, expected: dict) -> None:
    """The report's figures equal scikit-learn's, and each interval holds its point value."""
    figures = report["metrics"]
    for key in ("accuracy", "balanced_accuracy", "malignant_recall", "malignant_specificity",
                "auc_benign_vs_malignant", "roc_auc_ovr"):
        assert figures[key] == pytest.approx(expected[key], abs=1e-9), key
    assert figures["confusion_matrix"] == expected["confusion_matrix"]
    for i, name in enumerate(CLASS_NAMES):
        per_class = figures["per_class"][name]
        assert per_class["precision"] == pytest.approx(expected["precision"][i], abs=1e-9)
        assert per_class["recall"] == pytest.approx(expected["recall"][i], abs=1e-9)
        assert per_class["n"] == expected["n"][i] == report["class_counts"][name]
    for key, (low, high) in report["intervals_95"].items():
        assert low - 1e-9 <= figures[key] <= high + 1e-9, key


def test_importing_the_cli_does_not_import_the_metrics_stack() -> None:
    code = "import edge_infer, edge_infer.cli, edge_infer.inputs"
    assert modules_loaded_by(code, LIGHT_MODULES) == "[]"


def test_evaluate_a_class_tree(classifier: Classifier, test_images: list[Path],
                               tmp_path: Path) -> None:
    tree = tmp_path / "study"
    images = class_tree(tree, test_images)
    shutil.copy(test_images[0], tree / "normal" / "scan_mask.png")
    (tree / "README.txt").write_text("outside the class folders: ignored\n")
    plots = tmp_path / "plots"
    result, report = evaluate_json(tmp_path, tree, "--plots", plots)
    assert_exit(result, 0)
    assert_evaluation_schema(report, len(images))
    assert report["source"] == {"kind": "folder", "path": str(tree)}
    assert (report["mode"], report["threshold"]) == ("argmax", None)
    assert [p["file"] for p in report["predictions"]] == [str(p) for p in images]
    labels = [p.parent.name for p in images]
    assert_figures(report, expected_figures(classifier, images, labels, None))
    assert error_lines(result.stderr) == [] and report["errors"] == []
    assert f"note: {tree}: skipped 1 BUSI mask file(s)" in result.stderr.splitlines()
    assert f"{len(images)}/{len(images)}" in result.stderr  # the progress bar
    accuracy_line = next(line for line in result.stdout.splitlines()
                         if line.startswith("accuracy "))
    low, high = report["intervals_95"]["accuracy"]
    assert accuracy_line.split()[1:4] == [f"{report['metrics']['accuracy']:.3f}",
                                          f"[{low:.3f},", f"{high:.3f}]"]
    for fragment in ("balanced accuracy", "malignant sensitivity", "malignant specificity",
                     "ROC-AUC benign vs malignant", "ROC-AUC one-vs-rest", "Confusion matrix"):
        assert fragment in result.stdout, fragment
    assert report["plots"] == {name: str(plots / file) for name, file in (
        ("confusion_matrix", "confusion_matrix.png"), ("roc_curve", "roc_curve.png"),
        ("reliability", "reliability.png"))}
    for file in report["plots"].values():
        data = Path(file).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000, file


@pytest.fixture(scope="session")
def tied_scan(classifier: Classifier, busi_root: Path) -> tuple[Path, dict]:
    """The first BUSI image whose two largest probabilities are equal (the int8 model's
    dequantized outputs tie), and its decision."""
    for row in split_files("val") + split_files("test") + split_files("train"):
        decision = classifier.predict(busi_root / row.file).to_dict()
        first, second = decision["top2"]
        if first["prob"] == second["prob"]:
            return busi_root / row.file, decision
    pytest.skip("the shipped model ties on no BUSI image")


def test_evaluate_counts_a_tie_as_the_class_it_prints(tied_scan: tuple[Path, dict],
                                                      tmp_path: Path) -> None:
    scan, decision = tied_scan
    tied = [entry["label"] for entry in decision["top2"]]
    assert decision["argmax_prediction"] == max(tied, key=CLASS_NAMES.index)  # the more severe
    tree = tmp_path / "ties"
    for label in tied:  # the scan once under each of its two tied classes
        (tree / label).mkdir(parents=True)
        shutil.copy(scan, tree / label / scan.name)
    result, report = evaluate_json(tmp_path, tree)
    assert_exit(result, 0)
    printed = [(CLASS_NAMES.index(p["label"]), CLASS_NAMES.index(p["prediction"]))
               for p in report["predictions"]]
    assert {p["prediction"] for p in report["predictions"]} == {decision["argmax_prediction"]}
    counted = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), int)
    for true, predicted in printed:
        counted[true, predicted] += 1
    assert report["metrics"]["confusion_matrix"] == counted.tolist()
    assert report["metrics"]["accuracy"] == 0.5  # right under the severe label only


def test_evaluate_a_labels_csv_in_high_sensitivity_mode(classifier: Classifier, manifest: dict,
                                                        test_images: list[Path],
                                                        tmp_path: Path) -> None:
    """Benign and malignant only (any subset of classes), files relative to the CSV."""
    lesions = [p for p in test_images if p.parent.name != "normal"]
    folder = tmp_path / "external"
    copies = copy_into(folder, lesions, lambda image: f"scans/case {image.stem}.png")
    labels = [p.parent.name for p in lesions]
    table = write_labels(folder / "labels.csv",
                         [(c.relative_to(folder).as_posix(), label.upper() if i == 0 else label)
                          for i, (c, label) in enumerate(zip(copies, labels))])
    result, report = evaluate_json(tmp_path, "--labels", table, "--mode", "high-sensitivity")
    assert_exit(result, 0)
    assert_evaluation_schema(report, len(copies))
    threshold = manifest["models"][model_key(manifest, "int8")]["threshold"]
    assert (report["mode"], report["threshold"]) == ("high-sensitivity", threshold)
    assert report["source"] == {"kind": "labels", "path": str(table)}
    assert report["class_counts"]["normal"] == 0
    assert_figures(report, expected_figures(classifier, copies, labels, threshold))
    assert report["metrics"]["roc_auc_ovr"] is None  # needs all three classes
    assert "ROC-AUC one-vs-rest" not in result.stdout
    assert f"T = {threshold:.3f}" in result.stdout and "at argmax instead" in result.stdout
    forced = [p for p in report["predictions"] if p["forced_malignant"]]
    assert all(p["prediction"] == "malignant" and p["prob_malignant"] >= threshold
               for p in forced)


def test_evaluate_a_given_threshold(classifier: Classifier, test_images: list[Path],
                                    tmp_path: Path) -> None:
    tree = tmp_path / "study"
    images = class_tree(tree, test_images[3:])
    result, report = evaluate_json(tmp_path, tree, "--threshold", "0.05")
    assert_exit(result, 0)
    assert (report["mode"], report["threshold"], report["threshold_source"]) == (
        "high-sensitivity", 0.05, "given")
    labels = [p.parent.name for p in images]
    assert_figures(report, expected_figures(classifier, images, labels, 0.05))


# Bad inputs in a labelled set: each makes (evaluate arguments, the input its error line names)
# from a tree of two benign and two malignant scans.
BadSetMaker = Callable[[Path], tuple[list[object], str]]


def lesions_labels(tree: Path, extra: list[tuple[str, str]]) -> Path:
    rows = [(p.relative_to(tree).as_posix(), p.parent.name)
            for p in sorted(tree.glob("*/*.png"))]
    return write_labels(tree / "labels.csv", rows + extra)


def unknown_class_folder(tree: Path) -> tuple[list[object], str]:
    shutil.copytree(tree / "benign", tree / "suspicious")
    return [tree], str(tree / "suspicious")


def not_an_image_in_a_class_folder(tree: Path) -> tuple[list[object], str]:
    (tree / "malignant" / "report.txt").write_text("BI-RADS 5\n")
    return [tree], str(tree / "malignant" / "report.txt")


def empty_class_folder(tree: Path) -> tuple[list[object], str]:
    (tree / "normal").mkdir()
    return [tree], str(tree / "normal")


def unknown_label_in_the_csv(tree: Path) -> tuple[list[object], str]:
    table = lesions_labels(tree, [("benign/" + next((tree / "benign").iterdir()).name,
                                   "probably benign")])
    return ["--labels", table], f"{table}:6"


def csv_row_for_a_missing_file(tree: Path) -> tuple[list[object], str]:
    table = lesions_labels(tree, [("benign/gone.png", "benign")])
    return ["--labels", table], f"{table}:6"


def csv_row_for_a_text_file(tree: Path) -> tuple[list[object], str]:
    (tree / "notes.png").write_text("not a scan\n")
    table = lesions_labels(tree, [("notes.png", "malignant")])
    return ["--labels", table], str(tree / "notes.png")


BAD_SETS: dict[str, tuple[BadSetMaker, int]] = {
    "unknown class folder": (unknown_class_folder, 4),
    "not an image in a class folder": (not_an_image_in_a_class_folder, 3),
    "empty class folder": (empty_class_folder, 3),
    "unknown label in the CSV": (unknown_label_in_the_csv, 4),
    "CSV row for a missing file": (csv_row_for_a_missing_file, 3),
    "CSV row for a text file": (csv_row_for_a_text_file, 3),
}


@pytest.fixture()
def lesion_tree(tmp_path: Path, test_images: list[Path]) -> Path:
    """benign/ and malignant/ with two BUSI test scans each."""
    chosen = ([p for p in test_images if p.parent.name == "benign"][:2]
              + [p for p in test_images if p.parent.name == "malignant"][:2])
    class_tree(tmp_path / "set", chosen)
    return tmp_path / "set"


@pytest.mark.parametrize(("make", "code"), BAD_SETS.values(), ids=list(BAD_SETS))
def test_a_bad_input_is_one_error_line_and_the_rest_is_evaluated(
        make: BadSetMaker, code: int, manifest: dict, lesion_tree: Path,
        tmp_path: Path) -> None:
    args, bad = make(lesion_tree)
    result, report = evaluate_json(tmp_path, *args)
    assert_exit(result, code)
    assert_one_error(result.stderr, f"error: {bad}: ")
    assert_evaluation_schema(report, 4)
    assert [e["input"] for e in report["errors"]] == [bad]
    assert report["errors"][0]["kind"] == ("unknown_label" if code == 4 else "unreadable")
    assert "Not evaluated: 1 input(s)" in result.stdout


def test_unknown_labels_take_precedence_over_unreadable_files(manifest: dict, lesion_tree: Path,
                                                              tmp_path: Path) -> None:
    not_an_image_in_a_class_folder(lesion_tree)
    unknown_class_folder(lesion_tree)
    result, report = evaluate_json(tmp_path, lesion_tree)
    assert_exit(result, 4)
    assert len(error_lines(result.stderr)) == 2 and len(report["errors"]) == 2


def test_nothing_to_evaluate_is_an_error(manifest: dict, tmp_path: Path) -> None:
    tree = tmp_path / "set"
    (tree / "benign").mkdir(parents=True)
    (tree / "benign" / "letter.png").write_text("Dear colleague,\n")
    result, report = evaluate_json(tmp_path, tree)
    assert_exit(result, 3)
    assert report is None and result.stdout == ""
    assert error_lines(result.stderr) == [
        f"error: {tree / 'benign' / 'letter.png'}: not an image Pillow can read",
        "error: no image could be evaluated"]


def test_a_labels_file_without_its_columns_is_exit_3(manifest: dict, tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("image,diagnosis\na.png,benign\n")
    result, report = evaluate_json(tmp_path, "--labels", table)
    assert_exit(result, 3)
    assert report is None
    assert error_lines(result.stderr)[0].startswith(f"error: {table}: expected a header row")


@pytest.mark.parametrize("make_args", [
    lambda tmp: ["evaluate"],
    lambda tmp: ["evaluate", tmp, "--labels", write_labels(tmp / "l.csv", [])],
    lambda tmp: ["evaluate", write_labels(tmp / "l.csv", [])],
    lambda tmp: ["evaluate", tmp / "nowhere"],
    lambda tmp: ["evaluate", "--labels", tmp / "nowhere.csv"],
    lambda tmp: ["evaluate", tmp],  # no class folders in it
    lambda tmp: ["evaluate", tmp, "--mode", "argmax", "--threshold", "0.3"],
    lambda tmp: ["evaluate", tmp, "--resamples", "1"],
], ids=["nothing", "dir-and-labels", "a-file-as-dir", "missing-dir", "missing-labels",
        "no-class-folders", "argmax-with-threshold", "one-resample"])
def test_evaluate_usage_errors_exit_2(make_args: Callable[[Path], list], tmp_path: Path) -> None:
    result = run(*make_args(tmp_path))
    assert_exit(result, 2)
    assert result.stdout == ""


def test_evaluate_without_scikit_learn_names_the_extra(manifest: dict, lesion_tree: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails
    result = run("evaluate", lesion_tree)
    assert_exit(result, 1)
    assert result.stdout == ""
    assert_one_error(result.stderr, "scikit-learn", 'pip install ".[evaluate]"')


def test_evaluate_help_lists_its_options() -> None:
    result = run("evaluate", "--help")
    assert_exit(result, 0)
    for option in ("--labels", "--model", "--mode", "--threshold", "--threads", "--json",
                   "--plots", "--resamples", "--quiet"):
        assert option in result.stdout
    assert "evaluate" in run("--help").stdout
