"""Where the data and the shipped files are: the BUSI folder, its split manifest, `models/`."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_infer.preprocess import preprocess_image
from edge_infer.spec import CLASS_NAMES

BUSI_ENV = "BUSI_DIR"
MODELS_ENV = "EDGE_INFER_MODELS"
BUSI_DEFAULT = Path("..") / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
EXTERNAL_ENV = "BREAST_LESIONS_DIR"
EXTERNAL_DEFAULT = Path("..") / "shared" / "datasets" / "breast_lesions_usg"
LABELS_FILENAME = "labels.csv"
EXTERNAL_LABELS = LABELS_FILENAME
SPLIT_FILENAME = "busi_split.csv"
BUS_BRA_ENV = "BUS_BRA_DIR"
BUS_BRA_DEFAULT = Path("..") / "shared" / "datasets" / "bus_bra"
BUS_BRA_LABELS = LABELS_FILENAME
BUS_BRA_SPLIT_FILENAME = "bus_bra_split.csv"
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRow:
    """One BUSI image in the split manifest; split is train/val/test or 'excluded'."""

    file: str
    label: str
    group: int
    split: str
    fold: int
    note: str = ""


def models_dir() -> Path:
    """The folder holding the models and manifest: $EDGE_INFER_MODELS if set, else the shipped
    one (installed as `edge_infer.models`, or the project's `models/` in a source tree)."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV])
    try:
        return Path(str(resources.files("edge_infer.models")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "models"


def _candidate_dirs(path: str | os.PathLike | None, env: str, default: Path) -> list[Path]:
    """Where to look for a data folder: the given path, else $env, else `default` below the
    project root and below the working directory."""
    if path:
        return [Path(path)]
    if os.environ.get(env):
        return [Path(os.environ[env])]
    project_root = Path(__file__).resolve().parent.parent
    return [project_root / default, Path.cwd() / default]


def resolve_busi_dir(path: str | os.PathLike | None = None) -> Path:
    """The BUSI folder: the given path, else $BUSI_DIR, else ../shared/... from the project root."""
    candidates = _candidate_dirs(path, BUSI_ENV, BUSI_DEFAULT)
    for candidate in candidates:
        if all((candidate / name).is_dir() for name in CLASS_NAMES):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"BUSI dataset not found (tried {tried}); pass its folder or set {BUSI_ENV}"
    )


def _labelled_dir(path: str | os.PathLike | None, env: str, default: Path, name: str) -> Path:
    """The first candidate folder (see _candidate_dirs) holding a labels.csv."""
    candidates = _candidate_dirs(path, env, default)
    for candidate in candidates:
        if (candidate / LABELS_FILENAME).is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{name} not found (no {LABELS_FILENAME} in {tried}); "
                            f"pass its folder or set {env}")


def resolve_external_dir(path: str | os.PathLike | None = None) -> Path:
    """The external test set (BrEaST-Lesions_USG, a folder with labels.csv): the given path,
    else $BREAST_LESIONS_DIR, else ../shared/... from the project root. A test set only: never
    train, calibrate or choose thresholds or models on it."""
    return _labelled_dir(path, EXTERNAL_ENV, EXTERNAL_DEFAULT, "external test set")


def resolve_bus_bra_dir(path: str | os.PathLike | None = None) -> Path:
    """The BUS-BRA folder (a second site for training and validation, split by patient): the
    given path, else $BUS_BRA_DIR, else ../shared/... from the project root."""
    return _labelled_dir(path, BUS_BRA_ENV, BUS_BRA_DEFAULT, "BUS-BRA")


def is_mask_file(name: str) -> bool:
    """BUSI lesion masks are named '... (N)_mask.png' / '_mask_1.png': never images to classify."""
    return "_mask" in Path(name).stem


def list_busi_images(root: str | os.PathLike) -> list[tuple[str, str]]:
    """(relative path, label) of every BUSI image under root, masks skipped, in a stable order."""
    root = Path(root)
    items = []
    for label in CLASS_NAMES:
        for path in sorted((root / label).glob("*.png")):
            if not is_mask_file(path.name):
                items.append((f"{label}/{path.name}", label))
    return items


def read_split(path: str | os.PathLike | None = None) -> list[SplitRow]:
    """Read the committed split manifest (defaults to the shipped `busi_split.csv`)."""
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


def load_images(rows: list[SplitRow], root: str | os.PathLike,
                desc: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 model inputs (N, 224, 224, 3), int labels (N,)) of manifest rows, via the one
    shared preprocessing; a progress bar on stderr."""
    root = Path(root)
    images = np.stack(
        [preprocess_image(root / row.file) for row in tqdm(rows, desc=desc, leave=False)]
    )
    labels = np.array([CLASS_NAMES.index(row.label) for row in rows], dtype=np.int64)
    return images, labels
