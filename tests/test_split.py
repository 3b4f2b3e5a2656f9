"""The BUSI loader and the committed, leakage-free split manifest."""

from __future__ import annotations

from collections import Counter, defaultdict

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


def test_known_near_duplicates_share_a_group(split_rows):
    group = {row.file: row.group for row in split_rows}
    assert group["benign/benign (1).png"] == group["benign/benign (318).png"]
    assert group["benign/benign (131).png"] == group["malignant/malignant (51).png"]


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
