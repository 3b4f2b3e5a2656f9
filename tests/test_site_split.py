"""The second site (BUS-BRA): loader, committed patient-level split, and its regeneration."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, models_dir
from edge_infer.splits import read_split

pytest.importorskip("sklearn", reason="training extra ([train]) not installed")

from train.site_split import make_bus_bra_split  # noqa: E402


@pytest.fixture(scope="module")
def site_rows():
    return read_split(models_dir() / BUS_BRA_SPLIT_FILENAME)


def test_split_covers_every_bus_bra_image_once(bus_bra_root, site_rows):
    with open(bus_bra_root / "labels.csv", newline="") as handle:
        files = sorted(row["file"] for row in csv.DictReader(handle))
    assert len(files) == 532
    assert sorted(row.file for row in site_rows) == files
    assert all((bus_bra_root / row.file).is_file() for row in site_rows)
    assert Counter(row.label for row in site_rows) == {"benign": 361, "malignant": 171}


def test_no_patient_in_two_splits_and_parts_are_stratified(site_rows):
    splits_of: dict[int, set[str]] = {}
    for row in site_rows:
        splits_of.setdefault(row.group, set()).add(row.split)
    assert all(len(splits) == 1 for splits in splits_of.values())
    counts = Counter((row.split, row.label) for row in site_rows)
    assert counts == {("train", "benign"): 253, ("train", "malignant"): 117,
                      ("val", "benign"): 54, ("val", "malignant"): 27,
                      ("test", "benign"): 54, ("test", "malignant"): 27}


def test_committed_split_is_what_the_code_makes(bus_bra_root, site_rows):
    assert make_bus_bra_split(bus_bra_root) == site_rows
