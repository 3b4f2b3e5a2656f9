"""Shared fixtures: the real BUSI folder and the committed split manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_infer.datasets import read_split, resolve_busi_dir


@pytest.fixture(scope="session")
def busi_root() -> Path:
    try:
        return resolve_busi_dir()
    except FileNotFoundError as err:
        pytest.skip(f"BUSI dataset absent: {err}")


@pytest.fixture(scope="session")
def split_rows():
    return read_split()
