"""Turn the command line's files and folders into the list of images to classify, or, for
`edge-infer evaluate`, a labelled set (a folder per class, or a CSV of files and labels)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import is_mask_file

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass
class Inputs:
    """What the command line names, in order: an image file (path, None) or an argument that
    yielded nothing (argument, reason); and notes for the user."""

    items: list[tuple[str, Path | None, str | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [path for _, path, _ in self.items if path is not None]


def expand_inputs(arguments: list[str]) -> Inputs:
    """Files as given; folders searched recursively for image files, BUSI masks and files
    without an image extension skipped with a note (hidden ones, such as .DS_Store, silently)."""
    found = Inputs()
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            others = [p for p in files
                      if p.suffix.lower() not in IMAGE_EXTENSIONS and not _hidden(p, path)]
            masks = [p for p in images if is_mask_file(p.name)]
            images = [p for p in images if not is_mask_file(p.name)]
            if masks:
                found.notes.append(f"{argument}: skipped {len(masks)} BUSI mask file(s)")
            if others:
                found.notes.append(f"{argument}: skipped {len(others)} file(s) that are not "
                                   f"images by extension (e.g. {others[0].name}); give a file "
                                   "by name to classify it whatever its extension")
            if not images:
                found.items.append((argument, None, "folder holds no image files"))
            found.items.extend((str(image), image, None) for image in images)
        elif path.exists():
            found.items.append((argument, path, None))
        else:
            found.items.append((argument, None, "no such file or folder"))
    return found


# --- labelled sets (`edge-infer evaluate`) --------------------------------------------------


@dataclass
class LabelledInputs:
    """Images with their true class, notes, and what could not be used: `unreadable` (a
    missing file, an empty class folder, an unreadable label file) and `unlabelled` (a label
    that is not a class name), each as (input, reason)."""

    items: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unlabelled: list[tuple[str, str]] = field(default_factory=list)


def class_name(text: str) -> str | None:
    """The class a folder name or label means (case and surrounding spaces ignored), or None."""
    name = text.strip().lower()
    return name if name in CLASS_NAMES else None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX"
               for part in path.relative_to(root).parts)


def labelled_folder(root: str | os.PathLike) -> LabelledInputs:
    """A folder-per-class tree (any subset of normal/ benign/ malignant/, searched
    recursively). Every file in a class folder is an image to evaluate, except BUSI masks
    (skipped, with a note) and hidden files; one that is not an image fails when decoded.
    A folder that is not a class is reported in `unlabelled`, an empty class folder in
    `unreadable`; image files outside the class folders are skipped with a note."""
    root = Path(root)
    found = LabelledInputs()
    masks = loose = 0
    for child in sorted(root.iterdir()):
        if _hidden(child, root):
            continue
        if child.is_file():
            loose += child.suffix.lower() in IMAGE_EXTENSIONS
            continue
        label = class_name(child.name)
        if label is None:
            found.unlabelled.append((str(child), f"folder name {child.name!r} is not a class "
                                                 f"({', '.join(CLASS_NAMES)})"))
            continue
        files = sorted(p for p in child.rglob("*") if p.is_file() and not _hidden(p, root))
        images = [p for p in files if not is_mask_file(p.name)]
        masks += len(files) - len(images)
        if not images:
            found.unreadable.append((str(child), "class folder holds no images"))
        found.items.extend((path, label) for path in images)
    if masks:
        found.notes.append(f"{root}: skipped {masks} BUSI mask file(s)")
    if loose:
        found.notes.append(f"{root}: skipped {loose} image file(s) outside the class folders "
                           "(no label)")
    found.items.sort(key=lambda item: (CLASS_NAMES.index(item[1]), item[0]))
    return found


def labelled_csv(labels: str | os.PathLike) -> LabelledInputs:
    """A CSV with `file` and `label` columns (other columns ignored); files relative to the
    CSV's folder. Each row naming a missing file lands in `unreadable`, each label that is not
    a class in `unlabelled`, both as ('<csv>:<line>', reason); BUSI masks are skipped."""
    labels = Path(labels)
    found = LabelledInputs()
    try:
        with open(labels, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            if not {"file", "label"} <= set(columns):
                found.unreadable.append((str(labels), "expected a header row with 'file' and "
                                         f"'label' columns, found {reader.fieldnames or []}"))
                return found
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        found.unreadable.append((str(labels), f"cannot read the label file: {err}"))
        return found
    masks = 0
    for line, row in rows:
        where = f"{labels}:{line}"
        name = (row.get(columns["file"]) or "").strip()
        text = (row.get(columns["label"]) or "").strip()
        if not name:
            found.unreadable.append((where, "no file named"))
            continue
        path = labels.parent / name
        if is_mask_file(name):
            masks += 1
        elif class_name(text) is None:
            found.unlabelled.append((where, f"{name}: label {text!r} is not a class "
                                            f"({', '.join(CLASS_NAMES)})"))
        elif not path.is_file():
            problem = "a folder, not an image" if path.is_dir() else "no such file"
            found.unreadable.append((where, f"{name}: {problem} ({path})"))
        else:
            found.items.append((path, class_name(text)))
    if masks:
        found.notes.append(f"{labels}: skipped {masks} BUSI mask file(s)")
    if not rows:
        found.unreadable.append((str(labels), "the label file has no rows"))
    return found
