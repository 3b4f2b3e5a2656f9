"""The arm64 check's comparison step (tools/arm64/compare.py) and its committed last result:
result files that agree pass, files that differ in any way fail, tolerance edges are exact.
The emulated run itself (tools/arm64/run.sh) is too slow for CI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from required import missing

from edge_infer.decision import decide
from edge_infer.spec import CLASS_NAMES
from tools.arm64.compare import (
    EXIT_DIFFER,
    EXIT_UNREADABLE,
    ResultFileError,
    compare_files,
    main,
    read_results,
)
from tools.arm64.cpuinfo import cpuinfo_text, features
from tools.arm64.report import load_alignment, peak_rss_mib, render_markdown

REPO = Path(__file__).resolve().parent.parent
COMMITTED_REPORT = REPO / "docs" / "arm64.json"
MODEL = {"key": "efficientnet-lite0/int8", "variant": "int8", "sha256": "ab" * 32}
INT8_STEP = 1 / 256  # the int8 model's output scale
PROBS = {  # quantized like the int8 model's outputs
    "benign/benign (1).png": (13 / 256, 230 / 256, 13 / 256),
    "malignant/malignant (2).png": (3 / 256, 100 / 256, 153 / 256),
    "normal/normal (3).png": (200 / 256, 50 / 256, 6 / 256),
}


def record(file: str, probs: tuple[float, ...], model: dict = MODEL) -> dict:
    """One `edge-infer --json` line, built by the runtime's own decision rule."""
    return {"file": file, **decide(probs).to_dict(), "model": model}


def write_results(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def reference(tmp_path: Path) -> Path:
    return write_results(tmp_path / "x86_64.jsonl",
                         [record(name, probs) for name, probs in PROBS.items()])


def candidate(tmp_path: Path, changes: dict[str, tuple[float, ...]] | None = None,
              model: dict = MODEL) -> Path:
    """The reference's images, with some images' probabilities replaced."""
    probs = {**PROBS, **(changes or {})}
    return write_results(tmp_path / "arm64.jsonl",
                         [record(name, p, model) for name, p in probs.items()])


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def shifted(probs: tuple[float, ...], delta: float) -> tuple[float, ...]:
    """Move `delta` of probability from the last class to the first."""
    return (probs[0] + delta, probs[1], probs[2] - delta)


# --- agree / differ ---------------------------------------------------------------------------


def test_identical_files_agree(tmp_path: Path) -> None:
    result = run(reference(tmp_path), candidate(tmp_path))
    assert result.exit_code == 0, result.output
    comparison = compare_files(tmp_path / "x86_64.jsonl", tmp_path / "arm64.jsonl")
    assert (comparison.images, comparison.max_abs_diff, comparison.worst_image) == (3, 0.0, None)
    assert comparison.agrees and comparison.identical_predictions


def test_one_rounding_step_agrees_and_is_reported(tmp_path: Path) -> None:
    name = "benign/benign (1).png"
    arm = candidate(tmp_path, {name: shifted(PROBS[name], INT8_STEP)})
    result = run(reference(tmp_path), arm, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["max_abs_diff"] == INT8_STEP
    assert (summary["worst_image"], summary["images_with_any_diff"]) == (name, 1)


def test_a_different_prediction_fails(tmp_path: Path) -> None:
    name = "malignant/malignant (2).png"
    arm = candidate(tmp_path, {name: (3 / 256, 128 / 256, 125 / 256)})  # benign now wins
    result = run(reference(tmp_path), arm, "--tolerance", "0.5")
    assert result.exit_code == EXIT_DIFFER
    assert f"prediction differs: {name}" in result.stderr
    assert "identical predictions: no" in result.stdout


def test_same_prediction_beyond_tolerance_fails(tmp_path: Path) -> None:
    name = "normal/normal (3).png"
    arm = candidate(tmp_path, {name: shifted(PROBS[name], -0.05)})
    result = run(reference(tmp_path), arm)
    assert result.exit_code == EXIT_DIFFER
    assert "identical predictions: yes" in result.stdout
    assert "> tolerance 0.01" in result.stderr and name in result.stderr


def test_nan_probability_fails(tmp_path: Path) -> None:
    lines = [record(name, probs) for name, probs in PROBS.items()]
    lines[0]["probs"]["normal"] = math.nan
    arm = write_results(tmp_path / "arm64.jsonl", lines)
    assert run(reference(tmp_path), arm, "--tolerance", "0.9").exit_code == EXIT_DIFFER


def test_missing_and_extra_images_fail(tmp_path: Path) -> None:
    ref = reference(tmp_path)
    lines = [record(name, probs) for name, probs in list(PROBS.items())[1:]]
    lines.append(record("benign/benign (99).png", PROBS["benign/benign (1).png"]))
    result = run(ref, write_results(tmp_path / "arm64.jsonl", lines))
    assert result.exit_code == EXIT_DIFFER
    assert "only in the reference: benign/benign (1).png" in result.stderr
    assert "only in the candidate: benign/benign (99).png" in result.stderr


def test_a_different_model_file_fails(tmp_path: Path) -> None:
    result = run(reference(tmp_path), candidate(tmp_path, model={**MODEL, "sha256": "cd" * 32}))
    assert result.exit_code == EXIT_DIFFER
    assert "different model files" in result.stderr


# --- tolerance edges --------------------------------------------------------------------------


@pytest.mark.parametrize(("delta", "tolerance", "agrees"), [
    (0.01, 0.01, True),          # exactly the tolerance (0.01 is not exact in binary)
    (0.0101, 0.01, False),       # just over
    (INT8_STEP, INT8_STEP, True),
    (2 * INT8_STEP, INT8_STEP, False),
    (0.0, 0.0, True),            # zero tolerance: bit-identical passes
    (INT8_STEP, 0.0, False),     # zero tolerance: any difference fails
])
def test_tolerance_edges(tmp_path: Path, delta: float, tolerance: float, agrees: bool) -> None:
    name = "benign/benign (1).png"
    arm = candidate(tmp_path, {name: shifted(PROBS[name], delta)})
    result = run(reference(tmp_path), arm, "--tolerance", tolerance)
    assert result.exit_code == (0 if agrees else EXIT_DIFFER), result.output


@pytest.mark.parametrize("tolerance", ["-0.01", "1", "nan", "abc"])
def test_a_bad_tolerance_is_a_usage_error(tmp_path: Path, tolerance: str) -> None:
    result = run(reference(tmp_path), candidate(tmp_path), "--tolerance", tolerance)
    assert result.exit_code == 2 and "tolerance" in result.output.lower()


# --- unreadable input -------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("", "holds no results"),
    ("{not json\n", "not JSON"),
    ('{"file": "a.png", "prediction": "benign"}\n', "not an edge-infer --json result"),
])
def test_unreadable_result_files_exit_2(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    result = run(reference(tmp_path), bad)
    assert result.exit_code == EXIT_UNREADABLE
    assert message in result.stderr


def test_a_repeated_image_is_refused(tmp_path: Path) -> None:
    name, probs = next(iter(PROBS.items()))
    path = write_results(tmp_path / "twice.jsonl", [record(name, probs)] * 2)
    with pytest.raises(ResultFileError, match="appears twice"):
        read_results(path)


def test_module_entry_point_exit_codes(tmp_path: Path) -> None:
    """`python -m tools.arm64.compare`, as run.sh and people call it."""
    ref, name = reference(tmp_path), "normal/normal (3).png"
    command = [sys.executable, "-m", "tools.arm64.compare", str(ref)]
    agree = subprocess.run([*command, str(candidate(tmp_path))], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert agree.returncode == 0, agree.stderr
    differ = subprocess.run([*command, str(candidate(tmp_path, {name: (0.1, 0.8, 0.1)}))],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert differ.returncode == EXIT_DIFFER and name in differ.stderr


# --- real edge-infer output -------------------------------------------------------------------


def test_real_edge_infer_output_compares(tmp_path: Path, busi_root: Path, manifest: dict) -> None:
    """The comparison reads what `edge-infer --json` really prints, and a flipped class fails."""
    pytest.importorskip("ai_edge_litert", reason="the TFLite interpreter is not installed")
    from edge_infer.cli import main as edge_infer

    images = [busi_root / "benign" / "benign (1).png",
              busi_root / "malignant" / "malignant (1).png"]
    output = CliRunner().invoke(edge_infer, ["--json", "--quiet", "--threads", "1",
                                             *map(str, images)])
    assert output.exit_code == 0, output.output
    ref = tmp_path / "x86_64.jsonl"
    ref.write_text(output.stdout)
    assert run(ref, ref, "--tolerance", "0").exit_code == 0
    lines = [json.loads(line) for line in output.stdout.splitlines()]
    other = next(c for c in CLASS_NAMES if c != lines[0]["prediction"])
    lines[0]["prediction"] = lines[0]["argmax_prediction"] = other
    assert run(ref, write_results(tmp_path / "arm64.jsonl", lines)).exit_code == EXIT_DIFFER


# --- the committed last result ----------------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> dict:
    if not COMMITTED_REPORT.is_file():
        missing(f"no committed arm64 result at {COMMITTED_REPORT}")
    return json.loads(COMMITTED_REPORT.read_text())


def test_committed_result_recompares_to_its_verdict(tmp_path: Path, committed: dict) -> None:
    """Rebuild each compared pair of result files from the committed per-image results: the
    comparison step gives the committed verdict and the committed max |dprob|."""
    for comparison in committed["comparisons"]:
        model = {"key": comparison["model_key"], "variant": comparison["model"],
                 "sha256": comparison["model_sha256"][0]}
        sides = {"x86_64": [], "arm64": []}
        for image in committed["per_image"]:
            sides["x86_64"].append(record(image["file"],
                                          image["x86_64"][comparison["model"]]["probs"], model))
            arm = image["arm64"][comparison["cpu"]][comparison["model"]]
            sides["arm64"].append(record(image["file"], arm["probs"], model))
            # "None": the out-of-distribution check refused the image (no label, same probs)
            assert arm["prediction"] in (sides["arm64"][-1]["prediction"], "None")
        paths = {side: write_results(tmp_path / f"{side}.jsonl", lines)
                 for side, lines in sides.items()}
        rebuilt = compare_files(paths["x86_64"], paths["arm64"], committed["tolerance"])
        assert rebuilt.agrees == comparison["agrees"]
        assert rebuilt.max_abs_diff == comparison["max_abs_diff"]
        assert rebuilt.images == comparison["images"] == committed["images"]
    labels = {image["label"] for image in committed["per_image"]}
    assert labels == set(CLASS_NAMES)


def test_committed_markdown_matches_its_json(committed: dict) -> None:
    markdown = COMMITTED_REPORT.with_suffix(".md").read_text()
    assert markdown == render_markdown(committed)


def test_peak_rss_is_read_from_gnu_time(tmp_path: Path) -> None:
    time_file = tmp_path / "python.time"
    time_file.write_text("\tCommand being timed: \"python3 -c pass\"\n"
                         "\tMaximum resident set size (kbytes): 10240\n")
    assert peak_rss_mib(time_file) == 10.0
    assert peak_rss_mib(tmp_path / "absent.time") is None


# --- the emulated Pi's /proc/cpuinfo and the Pi 5 page-size check -------------------------------

PI4_FEATURES = ["fp", "asimd", "evtstrm", "crc32", "cpuid"]  # a Pi 4's /proc/cpuinfo
PI5_FEATURES = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
                "fphp", "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp"]


def hwcap_of(names: list[str]) -> int:
    bits = {"fp": 0, "asimd": 1, "evtstrm": 2, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6,
            "crc32": 7, "atomics": 8, "fphp": 9, "asimdhp": 10, "cpuid": 11, "asimdrdm": 12,
            "lrcpc": 15, "dcpop": 16, "asimddp": 20}  # Linux arm64 uapi hwcap.h
    return sum(1 << bits[name] for name in names)


@pytest.mark.parametrize("names", [PI4_FEATURES, PI5_FEATURES])
def test_hwcap_bits_decode_to_the_kernels_feature_names(names: list[str]) -> None:
    assert features(hwcap_of(names), 0) == names
    assert features(0, 1 << 13) == ["i8mm"]


def test_cpuinfo_text_reads_like_a_pi_4() -> None:
    text = cpuinfo_text("cortex-a72", hwcap_of(PI4_FEATURES), 0, 4)
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 4 and blocks[3].startswith("processor\t: 3\n")
    fields = dict(line.split(":", 1) for line in blocks[0].splitlines())
    assert {key.strip(): value.strip() for key, value in fields.items()} == {
        "processor": "0", "BogoMIPS": "108.00", "Features": " ".join(PI4_FEATURES),
        "CPU implementer": "0x41", "CPU architecture": "8", "CPU variant": "0x0",
        "CPU part": "0xd08", "CPU revision": "3"}
    with pytest.raises(ValueError, match="unknown CPU"):
        cpuinfo_text("cortex-x4", 0, 0, 4)


def test_load_alignment_of_real_elf_files(tmp_path: Path) -> None:
    """The page-size check reads real ELF program headers: CPython's own extension modules
    are aligned to at least a 4 KiB page; a text file is not ELF."""
    extension = Path(json.__file__).parent.parent / "lib-dynload"
    libraries = sorted(extension.glob("*.so"))
    if not libraries:
        pytest.skip(f"no extension modules in {extension}")
    align = load_alignment(libraries[0])
    assert align is not None and align >= 4096 and align & (align - 1) == 0
    text = tmp_path / "notes.so"
    text.write_text("not an ELF file")
    assert load_alignment(text) is None
