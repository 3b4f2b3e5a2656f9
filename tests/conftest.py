"""Shared fixtures: the real BUSI folder, the committed split manifest, the shipped models'
manifest and the shipped int8 classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
from required import missing

from edge_infer.classifier import Classifier
from edge_infer.manifest import ModelError, read_manifest
from edge_infer.splits import read_split
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir


@pytest.fixture(scope="session")
def busi_root() -> Path:
    try:
        return resolve_busi_dir()
    except FileNotFoundError as err:
        missing(f"BUSI dataset absent: {err}")


@pytest.fixture(scope="session")
def split_rows():
    return read_split()


@pytest.fixture(scope="session")
def manifest() -> dict:
    try:
        return read_manifest()
    except ModelError as err:
        missing(f"no models shipped: {err}")


@pytest.fixture(scope="session")
def classifier(manifest: dict) -> Classifier:
    """The shipped int8 model on one interpreter thread (used from one thread at a time)."""
    return Classifier("int8", threads=1)


@pytest.fixture(scope="session")
def bus_bra_root() -> Path:
    try:
        return resolve_bus_bra_dir()
    except FileNotFoundError as err:
        missing(f"BUS-BRA absent: {err}")


@pytest.fixture(scope="session")
def not_ultrasound(tmp_path_factory: pytest.TempPathFactory, classifier: Classifier) -> Path:
    """A text or screenshot-like image (synthetic, no download) that the shipped int8 model's
    check refuses as not breast ultrasound: the CLI, API and page tests need one (the detection
    rates are tested apart, against the report)."""
    from benchmarks.ood_sets import synthetic_images

    if classifier.input_check is None:
        pytest.fail(f"{classifier.entry.key} has no input check in the manifest: run "
                    "python -m busi convert")
    folder = tmp_path_factory.mktemp("ood")
    for named in synthetic_images():
        if "text" in named.name or "screenshot" in named.name:
            path = folder / f"{named.name.split('/')[-1]}.png"
            named.image.save(path)
            if classifier.predict(path).refused:
                return path
    raise AssertionError("the shipped check refuses no synthetic text or screenshot image")
