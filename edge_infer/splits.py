"""The split manifests shipped beside the models (`busi_split.csv`, `bus_bra_split.csv`): which
images each model was trained, validated and tested on. The pipeline reads them to train and fit;
`edge-infer evaluate` reads them to warn when it is given images a model has already seen."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, SPLIT_FILENAME, models_dir
from edge_infer.preprocess import preprocess_image
from edge_infer.spec import CLASS_NAMES, INPUT_SIZE

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRow:
    """One image in a split manifest; split is train/val/test or 'excluded'."""

    file: str
    label: str
    group: int
    split: str
    fold: int
    note: str = ""


def is_mask_file(name: str) -> bool:
    """BUSI lesion masks are named '... (N)_mask.png' / '_mask_1.png': never images to classify."""
    return "_mask" in Path(name).stem


def read_split(path: str | os.PathLike | None = None) -> list[SplitRow]:
    """Read a split manifest (default: the shipped `busi_split.csv`)."""
    path = Path(path) if path else models_dir() / SPLIT_FILENAME
    with open(path, newline="") as handle:
        return [
            SplitRow(
                file=row["file"],
                label=row["label"],
                group=int(row["group"]),
                split=row["split"],
                fold=int(row["fold"]),
                note=row.get("note", ""),
            )
            for row in csv.DictReader(handle)
        ]


def split_files(split: str, path: str | os.PathLike | None = None) -> list[SplitRow]:
    """The rows of one split ('train', 'val' or 'test')."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [row for row in read_split(path) if row.split == split]


def bus_bra_split_files(split: str, folder: str | os.PathLike | None = None) -> list[SplitRow]:
    """The BUS-BRA patients of one split, from the split manifest in folder (default: the
    shipped models folder)."""
    return split_files(split, Path(folder or models_dir()) / BUS_BRA_SPLIT_FILENAME)


def load_images(rows: list[SplitRow], root: str | os.PathLike, desc: str = "images",
                size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 model inputs (N, size, size, 3), int labels (N,)) of manifest rows, via the one
    shared preprocessing; a progress bar on stderr."""
    root = Path(root)
    images = np.stack(
        [preprocess_image(root / row.file, size) for row in tqdm(rows, desc=desc, leave=False)]
    )
    labels = np.array([CLASS_NAMES.index(row.label) for row in rows], dtype=np.int64)
    return images, labels
