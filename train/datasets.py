"""Where the three datasets are: BUSI and BUS-BRA (training and validation) and BrEaST-Lesions_USG
(a test set only). Each is found from a given folder, else an environment variable, else
`../shared/datasets/...` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import is_mask_file

BUSI_ENV = "BUSI_DIR"
BUSI_DEFAULT = Path("..") / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
EXTERNAL_ENV = "BREAST_LESIONS_DIR"
EXTERNAL_DEFAULT = Path("..") / "shared" / "datasets" / "breast_lesions_usg"
BUS_BRA_ENV = "BUS_BRA_DIR"
BUS_BRA_DEFAULT = Path("..") / "shared" / "datasets" / "bus_bra"
LABELS_FILENAME = "labels.csv"
CHECKOUT = Path(__file__).resolve().parent.parent


def _candidate_dirs(path: str | os.PathLike | None, env: str, default: Path) -> list[Path]:
    """Where to look for a data folder: the given path, else $env, else `default` below the
    checkout and below the working directory."""
    if path:
        return [Path(path)]
    if os.environ.get(env):
        return [Path(os.environ[env])]
    return [CHECKOUT / default, Path.cwd() / default]


def resolve_busi_dir(path: str | os.PathLike | None = None) -> Path:
    """The BUSI folder: the given path, else $BUSI_DIR, else ../shared/... from the checkout."""
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
    """BrEaST-Lesions_USG (a folder with labels.csv): a test set only; never train, calibrate or
    choose thresholds or models on it."""
    return _labelled_dir(path, EXTERNAL_ENV, EXTERNAL_DEFAULT, "external test set")


def resolve_bus_bra_dir(path: str | os.PathLike | None = None) -> Path:
    """The BUS-BRA folder (a second site for training and validation, split by patient)."""
    return _labelled_dir(path, BUS_BRA_ENV, BUS_BRA_DEFAULT, "BUS-BRA")


def list_busi_images(root: str | os.PathLike) -> list[tuple[str, str]]:
    """(relative path, label) of every BUSI image under root, masks skipped, in a stable order."""
    root = Path(root)
    items = []
    for label in CLASS_NAMES:
        for path in sorted((root / label).glob("*.png")):
            if not is_mask_file(path.name):
                items.append((f"{label}/{path.name}", label))
    return items
