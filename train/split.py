"""Leakage-free BUSI split: group exact and near-duplicate scans, then split by group.

Two images are joined (transitively) into one group when any of these holds:
- same pixels, or a 256-bit perceptual hash (imagehash.phash, hash_size=16) within 84 bits:
  copies of one scan (re-crops, resizes, with and without calipers);
- band-passed grey thumbnails correlate strongly at some small shift (the same scan with a
  cut corner or a moved caliper, which the hash misses);
- files of one class numbered at most 3 apart correlate clearly above unrelated pairs: BUSI's
  runs of one lesion imaged with small probe moves.
Joining too much only coarsens the groups; missing a join leaks a lesion across splits. A group
whose images carry different labels (e.g. `benign (433)` = `malignant (145)`) has no trustworthy
label: all of its images are excluded and listed in the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from edge_infer.splits import SplitRow
from train.datasets import list_busi_images

PHASH_SIZE = 16
NEAR_DUPLICATE_BITS = 84
THUMB_SIDE = 96
BAND_SIGMAS = (1.0, 4.0)
MAX_SHIFT = 12
SAME_SCAN_CORRELATION = 0.4
RUN_CORRELATION = 0.25
RUN_NUMBER_GAP = 3
SPLIT_PARTS = 20
TEST_PARTS = (0, 1, 2)
VAL_PARTS = (3, 4, 5)
CV_FOLDS = 5
FIELDS = ("file", "label", "group", "split", "fold", "note")


def band_passed_thumbnail(grey: Image.Image) -> np.ndarray:
    """A THUMB_SIDE square thumbnail with the finest noise and the coarse layout filtered out,
    zero mean and unit norm, so that a dot product is a correlation."""
    pixels = np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), dtype=np.float64)
    fine, coarse = BAND_SIGMAS
    band = gaussian_filter(pixels, fine) - gaussian_filter(pixels, coarse)
    band -= band.mean()
    return band / (np.linalg.norm(band) + 1e-12)


def image_hashes(root: Path, files: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Pixel sha256, perceptual-hash bits and band-passed thumbnail of every file's grey image."""
    pixel_hashes, bits, thumbnails = [], [], []
    for name in files:
        with Image.open(root / name) as image:
            grey = image.convert("L")
        pixel_hashes.append(hashlib.sha256(np.asarray(grey).tobytes()).hexdigest())
        bits.append(imagehash.phash(grey, hash_size=PHASH_SIZE).hash.flatten())
        thumbnails.append(band_passed_thumbnail(grey))
    return pixel_hashes, np.array(bits), np.stack(thumbnails)


def shifted_correlation(thumbnails: np.ndarray) -> np.ndarray:
    """Pairwise maximum correlation of the thumbnails over shifts of up to MAX_SHIFT pixels."""
    padded = THUMB_SIDE + MAX_SHIFT
    spectra = np.fft.rfft2(thumbnails, s=(padded, padded))
    shifts = np.r_[0:MAX_SHIFT + 1, padded - MAX_SHIFT:padded]
    best = np.empty((len(thumbnails), len(thumbnails)))
    for i, spectrum in enumerate(spectra):
        correlation = np.fft.irfft2(spectrum[None] * np.conj(spectra), s=(padded, padded))
        best[i] = correlation[:, shifts][:, :, shifts].reshape(len(thumbnails), -1).max(axis=1)
    return best


def same_run(files: list[str]) -> np.ndarray:
    """Pairs of files of one class whose numbers are at most RUN_NUMBER_GAP apart."""
    folder = np.array([name.split("/")[0] for name in files])
    number = np.array([int(re.search(r"\((\d+)\)", name).group(1)) for name in files])
    return (folder[:, None] == folder[None, :]) & (
        np.abs(number[:, None] - number[None, :]) <= RUN_NUMBER_GAP)


def duplicate_groups(files: list[str], pixel_hashes: list[str], bits: np.ndarray,
                     thumbnails: np.ndarray) -> np.ndarray:
    """Group id per image: connected components of the joins in the module docstring."""
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=-1)
    same_pixels = np.array(pixel_hashes)[:, None] == np.array(pixel_hashes)[None, :]
    correlation = shifted_correlation(thumbnails)
    joined = ((distance <= NEAR_DUPLICATE_BITS) | same_pixels
              | (correlation >= SAME_SCAN_CORRELATION)
              | (same_run(files) & (correlation >= RUN_CORRELATION)))
    _, groups = connected_components(joined)
    return groups


def conflicting_groups(groups: np.ndarray, labels: list[str]) -> set[int]:
    """Groups whose images carry more than one label."""
    seen: dict[int, set[str]] = {}
    for group, label in zip(groups, labels):
        seen.setdefault(int(group), set()).add(label)
    return {group for group, names in seen.items() if len(names) > 1}


def assign_splits(labels: list[str], groups: np.ndarray, seed: int) -> tuple[list[str], list[int]]:
    """Stratified grouped 70/15/15 train/val/test, plus 5 stratified grouped CV folds."""
    indices = np.arange(len(labels))
    splits = ["train"] * len(labels)
    parts = StratifiedGroupKFold(n_splits=SPLIT_PARTS, shuffle=True, random_state=seed)
    for part, (_, held) in enumerate(parts.split(indices, labels, groups)):
        name = "test" if part in TEST_PARTS else "val" if part in VAL_PARTS else "train"
        for i in held:
            splits[i] = name
    folds = [0] * len(labels)
    cv = StratifiedGroupKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(cv.split(indices, labels, groups)):
        for i in held:
            folds[i] = fold
    return splits, folds


def make_split(root: Path, seed: int = 0) -> list[SplitRow]:
    """Build the split manifest rows for the BUSI folder at root."""
    items = list_busi_images(root)
    files = [name for name, _ in items]
    labels = [label for _, label in items]
    groups = duplicate_groups(files, *image_hashes(root, files))
    conflicts = conflicting_groups(groups, labels)
    keep = [i for i, g in enumerate(groups) if int(g) not in conflicts]
    splits, folds = assign_splits([labels[i] for i in keep], groups[keep], seed)
    rows = [
        SplitRow(files[i], labels[i], int(groups[i]), "excluded", -1, "label conflict in group")
        for i in range(len(files))
        if int(groups[i]) in conflicts
    ]
    rows += [
        SplitRow(files[i], labels[i], int(groups[i]), split, fold)
        for i, split, fold in zip(keep, splits, folds)
    ]
    return sorted(rows, key=lambda row: row.file)


def write_split(rows: list[SplitRow], path: Path) -> None:
    """Write the manifest as CSV (one row per image, stable order)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([getattr(row, name) for name in FIELDS])


def summary(rows: list[SplitRow]) -> str:
    """Counts per split and label, for a person to read."""
    counts = Counter((row.split, row.label) for row in rows)
    lines = []
    for split in ("train", "val", "test", "excluded"):
        per_label = {label: n for (s, label), n in counts.items() if s == split}
        lines.append(f"{split:9s} {sum(per_label.values()):4d}  {dict(sorted(per_label.items()))}")
    return "\n".join(lines)
