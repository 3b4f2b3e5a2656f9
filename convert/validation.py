"""The validation images a shipped model's thresholds and temperature are fitted on.

A model trained on BUSI alone is validated on BUSI's validation split; a model trained across
sites (`busi train --bus-bra`) on BUSI's and BUS-BRA's validation patients together, the same
set its early stopping and threshold used, so its operating point serves both sites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_infer.manifest import BUS_BRA_SPLIT_FILENAME, SPLIT_FILENAME, read_manifest, sha256_of
from edge_infer.splits import bus_bra_split_files, load_images, split_files
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir


def trained_on_bus_bra(manifest_file: Path, arch: str) -> bool:
    """Whether the architecture's Keras model was trained with BUS-BRA (from its manifest)."""
    keras_entry = read_manifest(manifest_file)["models"].get(f"{arch}/keras", {})
    return bool(keras_entry.get("training", {}).get("config", {}).get("bus_bra"))


def split_sha256s(folder: Path, both_sites: bool) -> dict[str, str]:
    """sha256 of each split file a fit reads: BUSI's, and BUS-BRA's for a model trained on
    both sites."""
    names = [SPLIT_FILENAME] + ([BUS_BRA_SPLIT_FILENAME] if both_sites else [])
    return {name: sha256_of(folder / name) for name in names}


def validation_set(manifest_file: Path, arch: str, busi_dir: str | None = None,
                   bus_bra_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(uint8 images, labels, description with split files and sha256s) of the model's
    validation data."""
    folder = manifest_file.parent
    busi_split = folder / SPLIT_FILENAME
    images, labels = load_images(split_files("val", busi_split), resolve_busi_dir(busi_dir),
                                 desc="BUSI val")
    both_sites = trained_on_bus_bra(manifest_file, arch)
    described = {"sets": ["BUSI val"], "splits": split_sha256s(folder, both_sites)}
    if both_sites:
        site_images, site_labels = load_images(bus_bra_split_files("val", folder),
                                               resolve_bus_bra_dir(bus_bra_dir),
                                               desc="BUS-BRA val")
        images = np.concatenate([images, site_images])
        labels = np.concatenate([labels, site_labels])
        described["sets"].append("BUS-BRA val")
    described["images"] = int(len(labels))
    return images, labels, described
