"""Patient-level split of BUS-BRA (a second site: benign and malignant only, no normal class).

BUS-BRA's copy here holds one image per patient, so the patient number is the group; the same
stratified grouped splitter as BUSI gives 70/15/15 train/val/test by patient, written with the
BUSI manifest's columns so every loader reads both alike.
"""

from __future__ import annotations

import csv
from pathlib import Path

from edge_infer.splits import SplitRow
from train.datasets import LABELS_FILENAME
from train.split import assign_splits


def make_bus_bra_split(root: Path, seed: int = 0) -> list[SplitRow]:
    """Split rows (group = patient) for the BUS-BRA folder at root, from its labels.csv."""
    with open(root / LABELS_FILENAME, newline="") as handle:
        records = list(csv.DictReader(handle))
    labels = [record["label"] for record in records]
    patients = [int(record["patient"]) for record in records]
    splits, folds = assign_splits(labels, patients, seed)
    rows = [SplitRow(record["file"], label, patient, split, fold)
            for record, label, patient, split, fold
            in zip(records, labels, patients, splits, folds)]
    return sorted(rows, key=lambda row: row.file)
