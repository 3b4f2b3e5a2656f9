"""Lesion masks: BUSI's `<stem>_mask*.png` beside each image, BUS-BRA's `masks/<name>`."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image

from edge_infer.spec import INPUT_SIZE
from edge_infer.splits import SplitRow

MASK_LEVEL = 128


def mask_files(image: Path) -> list[Path]:
    """The masks of an image: BUSI's '<stem>_mask.png', '<stem>_mask_1.png', ..., or BUS-BRA's
    '<root>/masks/<name>'; empty when it has none."""
    pattern = glob.escape(str(image.with_suffix(""))) + "_mask*.png"
    busi = sorted(Path(p) for p in glob.glob(pattern))
    if busi:
        return busi
    bus_bra = image.parent.parent / "masks" / image.name
    return [bus_bra] if bus_bra.is_file() else []


def lesion_mask(image: Path, size: tuple[int, int]) -> np.ndarray:
    """The union of the image's masks as a bool array (height, width); size = (width, height)
    of the decoded image, which every mask must match."""
    files = mask_files(image)
    if not files:
        raise FileNotFoundError(f"no lesion mask for {image}")
    union = np.zeros((size[1], size[0]), dtype=bool)
    for file in files:
        with Image.open(file) as mask:
            if mask.size != size:
                raise ValueError(f"{file}: mask {mask.size} is not the image's size {size}")
            union |= np.asarray(mask.convert("L")) >= MASK_LEVEL
    return union


def model_input_masks(rows: list[SplitRow], root: Path, size: int = INPUT_SIZE) -> np.ndarray:
    """(N, size, size) float32 lesion masks resized like the model input (a plain resize);
    normal images, which have no lesion, get an empty mask."""
    masks = np.zeros((len(rows), size, size), dtype=np.float32)
    for index, row in enumerate(rows):
        if row.label == "normal":
            continue
        image = root / row.file
        with Image.open(image) as decoded:
            decoded_size = decoded.size
        union = Image.fromarray(lesion_mask(image, decoded_size).astype(np.uint8) * 255)
        masks[index] = np.asarray(union.resize((size, size), Image.BILINEAR)) / 255.0
    return masks
