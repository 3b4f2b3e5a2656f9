"""Turn the command line's files and folders into the list of images to classify."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_infer.datasets import is_mask_file

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass
class Inputs:
    """Images found, notes for the user, and (input, reason) pairs that yielded nothing."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(arguments: list[str]) -> Inputs:
    """Files as given; folders searched recursively for image files, BUSI masks skipped."""
    found = Inputs()
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            masks = [p for p in images if is_mask_file(p.name)]
            images = [p for p in images if not is_mask_file(p.name)]
            if masks:
                found.notes.append(f"{argument}: skipped {len(masks)} BUSI mask file(s)")
            if not images:
                found.errors.append((argument, "folder holds no image files"))
            found.files.extend(images)
        elif path.exists():
            found.files.append(path)
        else:
            found.errors.append((argument, "no such file or folder"))
    return found
