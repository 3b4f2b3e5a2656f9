"""The BUSI loader and the committed, leakage-free split manifest."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import split_files
from train.datasets import list_busi_images


def test_loader_finds_every_busi_image_and_no_mask(busi_root):
    items = list_busi_images(busi_root)
    assert len(items) == 780
    assert Counter(label for _, label in items) == {"normal": 133, "benign": 437,
                                                    "malignant": 210}
    assert not [name for name, _ in items if "mask" in name]
    assert all(name.startswith(f"{label}/") for name, label in items)


def test_manifest_covers_every_image_once(busi_root, split_rows):
    files = sorted(name for name, _ in list_busi_images(busi_root))
    assert sorted(row.file for row in split_rows) == files
    assert {row.split for row in split_rows} == {"train", "val", "test", "excluded"}


def test_split_sizes_are_70_15_15_and_stratified(split_rows):
    usable = [row for row in split_rows if row.split != "excluded"]
    overall = Counter(row.label for row in usable)
    for split, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        rows = split_files(split)
        assert abs(len(rows) / len(usable) - share) < 0.02, split
        counts = Counter(row.label for row in rows)
        for label in CLASS_NAMES:
            assert abs(counts[label] / len(rows) - overall[label] / len(usable)) < 0.03


@pytest.mark.parametrize("column", ["split", "fold"])
def test_no_duplicate_group_straddles_a_split_or_fold(split_rows, column):
    values = defaultdict(set)
    for row in split_rows:
        if row.split != "excluded":
            values[row.group].add(getattr(row, column))
    assert all(len(v) == 1 for v in values.values())


@pytest.mark.parametrize("first, second", [
    ("benign/benign (1).png", "benign/benign (318).png"),  # phash
    ("benign/benign (131).png", "malignant/malignant (51).png"),  # phash, conflicting labels
    ("benign/benign (140).png", "benign/benign (62).png"),  # same scan, a corner cut off
    ("malignant/malignant (128).png", "malignant/malignant (129).png"),  # moved calipers
    ("malignant/malignant (3).png", "malignant/malignant (6).png"),  # one lesion, probe moved
    ("benign/benign (9).png", "benign/benign (10).png"),  # one cyst, a dark panel beside it
])
def test_known_same_lesion_pairs_share_a_group(split_rows, first, second):
    group = {row.file: row.group for row in split_rows}
    assert group[first] == group[second]


@pytest.fixture(scope="module")
def busi_correlation(busi_root):
    from train.split import image_hashes, same_run, shifted_correlation

    files = [name for name, _ in list_busi_images(busi_root)]
    _, _, thumbnails = image_hashes(busi_root, files)
    return files, shifted_correlation(thumbnails), same_run(files)


def test_no_correlated_pair_straddles_splits(split_rows, busi_correlation):
    from train.split import RUN_CORRELATION, SAME_SCAN_CORRELATION

    files, correlation, run = busi_correlation
    split = {row.file: row.split for row in split_rows}
    linked = (correlation >= SAME_SCAN_CORRELATION) | (run & (correlation >= RUN_CORRELATION))
    first, second = np.nonzero(np.triu(linked, 1))
    straddling = [(files[i], files[j]) for i, j in zip(first, second)
                  if split[files[i]] != split[files[j]]
                  and "excluded" not in (split[files[i]], split[files[j]])]
    assert straddling == []
    unrelated = correlation[~run & ~linked]
    assert np.quantile(unrelated, 0.999) < RUN_CORRELATION + 0.1  # the thresholds sit in the tail


def test_images_with_conflicting_labels_are_excluded(split_rows):
    excluded = {row.file for row in split_rows if row.split == "excluded"}
    assert {"benign/benign (433).png", "malignant/malignant (145).png",
            "benign/benign (131).png", "malignant/malignant (51).png"} <= excluded
    labels_by_group = defaultdict(set)
    for row in split_rows:
        labels_by_group[row.group].add(row.label)
    for row in split_rows:
        assert (row.split == "excluded") == (len(labels_by_group[row.group]) > 1)


def test_cv_folds_are_five_and_balanced(split_rows):
    folds = Counter(row.fold for row in split_rows if row.split != "excluded")
    assert sorted(folds) == [0, 1, 2, 3, 4]
    assert max(folds.values()) - min(folds.values()) <= 10


def test_committed_manifest_is_what_the_split_code_makes(busi_root, split_rows):
    from train.split import make_split

    assert make_split(busi_root, seed=0) == split_rows
