"""Untrusted images: the pixel and decoded-size caps, crafted chunks that made Pillow raise
ValueError, a seeded fuzz corpus, and the colour refusal, through the runtime, the app and the
batch commands (issue 25). Every failure is the one-line ImageError, 415/422 in the app and
exit 3 in the batch commands with every other image still processed."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_images import crafted_files, png_header_only
from fastapi.testclient import TestClient
from fuzz_corpus import fuzz_corpus
from PIL import Image

from edge_infer import preprocess
from edge_infer.classifier import Classifier
from edge_infer.cli import main
from edge_infer.preprocess import ImageError, NotAnImage, decode_image
from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import split_files
from edge_infer.web.app import create_app

APP_STATUSES = {200, 415, 422}


@pytest.fixture(scope="module")
def app_client(manifest: dict) -> Iterator[TestClient]:
    """The app; a server exception fails the test (TestClient re-raises it)."""
    with TestClient(create_app("int8", threads=1, workers=2)) as client:
        yield client


@pytest.fixture(scope="module")
def scans(busi_root: Path) -> dict[str, list[Path]]:
    """The first six BUSI test-split images of each class."""
    rows = split_files("test")
    return {label: [busi_root / r.file for r in rows if r.label == label][:6]
            for label in CLASS_NAMES}


def assert_cannot_read(err: ImageError) -> None:
    assert str(err).startswith("cannot read image: "), err
    assert "\n" not in str(err)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- the caps --------------------------------------------------------------------------------


def test_the_pixel_cap_is_16_megapixels() -> None:
    assert preprocess.MAX_PIXELS == 16_000_000
    assert decode_image(png_bytes(Image.new("L", (4000, 4000)))).image.size == (4000, 4000)
    with pytest.raises(ImageError, match="too large: 4001x4000 pixels"):
        decode_image(png_header_only(4001, 4000))


def test_the_issue_s_16_bit_png_is_refused_before_decoding() -> None:
    """6320x6320 at 16 bits: tens of KB on the wire, 80 MB decoded; refused from its header."""
    with pytest.raises(ImageError, match="too large: 6320x6320 pixels"):
        decode_image(png_header_only(6320, 6320, bit_depth=16))


@pytest.mark.parametrize(("colour_type", "bit_depth", "side", "refused"), [
    (0, 16, 4000, False),  # 16-bit grey at the pixel cap: 32 MB
    (2, 8, 4000, False),   # 8-bit RGB at the pixel cap: 48 MB, the decoded-bytes cap itself
    (6, 8, 4000, True),    # RGBA: 64 MB
    (6, 8, 3400, False),   # RGBA under the cap: 46 MB
], ids=["grey16", "rgb", "rgba", "rgba-smaller"])
def test_the_decoded_bytes_cap(colour_type: int, bit_depth: int, side: int,
                               refused: bool) -> None:
    """Headers only: a refused one fails on its decoded size, an accepted one when its
    (missing) pixel data is read."""
    with pytest.raises(ImageError) as info:
        decode_image(png_header_only(side, side, bit_depth, colour_type))
    assert ("MiB decoded" in str(info.value)) == refused, info.value


def test_16_bit_scaling_rounds_like_dividing_by_257() -> None:
    values = np.array([[0, 128, 129, 385, 386, 32767, 65407, 65408, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    grey = decode_image(image).image.convert("L")
    np.testing.assert_array_equal(np.asarray(grey)[0],
                                  np.rint(values[0] / 257.0).astype(np.uint8))


# --- crafted files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(crafted_files()))
def test_crafted_files_are_one_cannot_read_error(name: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(crafted_files()[name])
    assert_cannot_read(info.value)


@pytest.mark.parametrize("name", sorted(crafted_files()))
def test_crafted_files_are_422_in_the_app(app_client: TestClient, name: str) -> None:
    response = app_client.post("/predict", files={"file": (name, crafted_files()[name])})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("cannot read image: ")


def _with_crafted(folder: Path) -> list[Path]:
    paths = []
    for name, data in crafted_files().items():
        paths.append(folder / name)
        paths[-1].write_bytes(data)
    return paths


def test_classify_reads_every_other_image_and_exits_3(tmp_path: Path,
                                                      scans: dict[str, list[Path]]) -> None:
    crafted = _with_crafted(tmp_path)
    good = scans["benign"][:2]
    result = CliRunner().invoke(main, ["classify", "--json", "--quiet", "--threads", "1",
                                       *map(str, [good[0], *crafted, good[1]])])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stdout + result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # one per input, in order
    assert [row["file"] for row in rows] == list(map(str, [good[0], *crafted, good[1]]))
    assert ["error" in row for row in rows] == [False, *[True] * len(crafted), False]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert sorted(errors) == sorted(f"error: {p}: cannot read image: " + _reason(p)
                                    for p in crafted)


def _reason(path: Path) -> str:
    try:
        decode_image(path)
    except ImageError as err:
        return str(err).removeprefix("cannot read image: ")
    raise AssertionError(f"{path} decoded")


def _labelled_tree(root: Path, scans: dict[str, list[Path]]) -> list[Path]:
    """Class folders of real scans (6 per class) plus the crafted files in malignant/."""
    for label, paths in scans.items():
        (root / label).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, root / label / path.name)
    return _with_crafted(root / "malignant")


def test_evaluate_writes_its_report_and_exits_3(tmp_path: Path,
                                                scans: dict[str, list[Path]]) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (the [evaluate] extra) not installed")
    crafted = _labelled_tree(tmp_path / "set", scans)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "set"), "--json", str(report),
                                       "--quiet", "--threads", "1", "--resamples", "10"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stdout + result.stderr
    written = json.loads(report.read_text())
    assert sorted(e["input"] for e in written["errors"]) == sorted(map(str, crafted))
    assert all(e["reason"].startswith("cannot read image: ") for e in written["errors"])
    assert len(written["predictions"]) == sum(map(len, scans.values()))


def test_calibrate_writes_its_profile_and_exits_3(tmp_path: Path,
                                                  scans: dict[str, list[Path]]) -> None:
    crafted = _labelled_tree(tmp_path / "set", scans)
    profile = tmp_path / "site.json"
    result = CliRunner().invoke(main, ["calibrate", str(tmp_path / "set"), "--out", str(profile),
                                       "--quiet", "--threads", "1", "--resamples", "10"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads(profile.read_text())["counts"]["total"] == sum(map(len, scans.values()))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(crafted) and all("cannot read image: " in e for e in errors)


# --- fuzz ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(scans: dict[str, list[Path]]) -> list[tuple[str, bytes]]:
    return fuzz_corpus(scans["benign"][0])


def test_fuzz_runtime_only_ever_raises_the_one_error(corpus: list[tuple[str, bytes]]) -> None:
    outcomes = {"decoded": 0, "refused": 0}
    for _, data in corpus:
        try:
            decode_image(data)
            outcomes["decoded"] += 1
        except NotAnImage as err:
            assert str(err) == "not an image Pillow can read"
            outcomes["refused"] += 1
        except ImageError as err:
            assert "\n" not in str(err) and str(err), err
            outcomes["refused"] += 1
    assert min(outcomes.values()) > 0, outcomes  # the corpus reaches both outcomes


def test_fuzz_app_never_answers_500(app_client: TestClient,
                                    corpus: list[tuple[str, bytes]]) -> None:
    statuses = {}
    for name, data in corpus:
        response = app_client.post("/predict", files={"file": (name, data)})
        assert response.status_code in APP_STATUSES, (name, response.text)
        assert isinstance(response.json().get("detail", ""), str), response.text
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(200) and statuses.get(422), statuses


def test_fuzz_cli_gives_one_row_or_one_error_per_file(tmp_path: Path,
                                                      corpus: list[tuple[str, bytes]]) -> None:
    for name, data in corpus:
        (tmp_path / name).write_bytes(data)
    result = CliRunner().invoke(main, ["classify", "--csv", "--quiet", "--threads", "1",
                                       "--ood", "warn", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stdout + result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))  # one row per file, errors included
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(rows) == len(corpus)
    assert len(errors) == sum(bool(row["error"]) for row in rows) > 0
    assert any(not row["error"] for row in rows)


# --- the colour refusal ---------------------------------------------------------------------


def recoloured(scan: Path) -> Image.Image:
    """The scan with 8x8 blocks tinted red or green at unchanged luma: the model's input (luma)
    is the same, so only the colour branch of the input check can tell."""
    grey = np.asarray(decode_image(scan).image.convert("L"), dtype=np.float64)
    height, width = grey.shape
    blocks = np.random.default_rng(25).choice([-60.0, 60.0], (height // 8 + 1, width // 8 + 1))
    shift = np.kron(blocks, np.ones((8, 8)))[:height, :width]
    rgb = np.stack([grey + shift, grey - shift * 0.299 / 0.587, grey], axis=-1)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def test_colour_alone_refuses_a_scan(classifier: Classifier, app_client: TestClient,
                                     scans: dict[str, list[Path]]) -> None:
    scan = scans["benign"][0]
    grey = classifier.predict(scan).to_dict()
    assert grey["in_distribution"] is True and grey["prediction"] is not None
    record = classifier.predict(recoloured(scan)).to_dict()
    assert record["in_distribution"] is False and record["refused"] is True
    assert record["prediction"] is None
    assert record["ood_score"] <= record["ood_threshold"]  # the features alone would pass it
    assert len(record["ood_reasons"]) == 1 and "coloured" in record["ood_reasons"][0]
    response = app_client.post("/predict", files={"file": ("tinted.png",
                                                           png_bytes(recoloured(scan)))})
    assert response.status_code == 200 and response.json()["refused"] is True
