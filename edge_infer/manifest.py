"""Read `models/manifest.json` and resolve a model name or path to its checked entry.

Entries are keyed '<arch>/<variant>' (e.g. 'efficientnet-lite0/int8'); a bare variant name
('int8') means the manifest's default architecture. A model file is only used when its
sha256 matches its entry, so a swapped or damaged file is refused, never run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edge_infer.jsonfile import JsonFileError, read_json
from edge_infer.spec import CLASS_NAMES, INPUT_SHAPE, PREPROCESSING_ID

MANIFEST_FILENAME = "manifest.json"
SPLIT_FILENAME = "busi_split.csv"
BUS_BRA_SPLIT_FILENAME = "bus_bra_split.csv"
MODELS_ENV = "EDGE_INFER_MODELS"
SCHEMA_VERSION = 1


class ModelError(ValueError):
    """A model that is unknown, missing, or does not match the manifest."""


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry and the file it describes."""

    key: str
    path: Path
    info: dict

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def models_dir() -> Path:
    """The folder holding the models and manifest: $EDGE_INFER_MODELS if set, else the shipped
    one (installed as `edge_infer.models`, or the project's `models/` in a source tree)."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV])
    try:
        return Path(str(resources.files("edge_infer.models")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "models"


def manifest_path() -> Path:
    """The shipped manifest."""
    return models_dir() / MANIFEST_FILENAME


def read_manifest(path: str | os.PathLike | None = None) -> dict:
    """The manifest as a dict (the shipped one unless a path is given)."""
    path = Path(path) if path else manifest_path()
    if not path.is_file():
        raise ModelError(f"model manifest not found: {path}")
    try:
        manifest = read_json(path)
    except JsonFileError as err:
        raise ModelError(f"model manifest {path} {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ModelError(f"model manifest {path} has no 'models' table")
    return manifest


def _entry(manifest: dict, key: str, folder: Path) -> ModelEntry:
    info = manifest["models"][key]
    return ModelEntry(key=key, path=folder / info["file"], info=info)


def _number(info: dict, field: str, key: str, low: float = -math.inf,
            high: float = math.inf, optional: bool = False) -> None:
    """ModelError (one line) unless info[field] is a finite number in [low, high] (or absent /
    null when `optional`)."""
    value = info.get(field)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and low <= value <= high):
        raise ModelError(f"model manifest: {key}: {field} must be a finite number in "
                         f"[{low}, {high}], got {value!r}")


def check_entry_values(key: str, info: dict) -> None:
    """Refuse an entry whose temperature, threshold or input-check thresholds are not finite
    numbers in range: every decision the runtime makes is a comparison with them."""
    _number(info, "threshold", key, 0.0, 1.0)
    _number(info, "temperature", key, low=1e-6, optional=True)
    ood = info.get("ood")
    if ood is not None:
        if not isinstance(ood, dict):
            raise ModelError(f"model manifest: {key}: ood must be a table, got {ood!r}")
        _number(ood, "threshold", f"{key} ood", optional=False)
        _number(ood, "colour_threshold", f"{key} ood", 0.0, 1.0)


def _refuse_unless_tflite(manifest: dict, key: str) -> None:
    """ModelError naming the TFLite variants to use instead, when `key` is another format (a
    Keras entry: the light runtime has no TensorFlow to run it, and does not ship its file)."""
    info, models = manifest["models"][key], manifest["models"]
    if info.get("format") == "tflite":
        return
    usable = [other["variant"] if other["arch"] == manifest.get("default_arch") else name
              for name, other in models.items()
              if other["arch"] == info["arch"] and other.get("format") == "tflite"]
    kind = {"keras": "Keras"}.get(info.get("format"), info.get("format"))
    raise ModelError(f"{key} is a {kind} model: the light runtime runs TFLite "
                     f"models only; use a TFLite variant: {', '.join(usable) or 'none shipped'}")


def resolve_model(name: str, manifest_file: str | os.PathLike | None = None,
                  tflite_only: bool = False) -> ModelEntry:
    """A variant name, '<arch>/<variant>' key, or a model file path -> its verified entry;
    `tflite_only` refuses any other format before its file is looked for."""
    manifest_file = Path(manifest_file) if manifest_file else manifest_path()
    manifest = read_manifest(manifest_file)
    folder = manifest_file.parent
    models = manifest["models"]
    default_arch = manifest.get("default_arch")  # absent until a model is published --default
    key = name if name in models or not default_arch else f"{default_arch}/{name}"
    if key in models:
        if tflite_only:
            _refuse_unless_tflite(manifest, key)
        entry = _entry(manifest, key, folder)
        if not entry.path.is_file():
            raise ModelError(f"model file missing: {entry.path}" + (
                " (pip install . ships the int8 and float16 models only; set "
                f"{MODELS_ENV} to a checkout's models/ folder for the others)"
                if "site-packages" in entry.path.parts else ""))
    elif Path(name).is_file():
        digest = sha256_of(name)
        matches = [k for k, info in models.items() if info["sha256"] == digest]
        if not matches:
            raise ModelError(f"{name} is not a model the manifest knows (sha256 {digest[:12]}…)")
        if tflite_only:
            _refuse_unless_tflite(manifest, matches[0])
        check_entry_values(matches[0], models[matches[0]])
        return ModelEntry(key=matches[0], path=Path(name), info=models[matches[0]])
    else:
        known = ", ".join(sorted(models))
        raise ModelError(f"unknown model {name!r}: not a file, nor one of {known}")
    digest = sha256_of(entry.path)
    if digest != entry.info["sha256"]:
        raise ModelError(
            f"{entry.path} does not match the manifest (sha256 {digest[:12]}… != "
            f"{entry.info['sha256'][:12]}…): refusing a damaged or replaced model"
        )
    check_entry_values(entry.key, entry.info)
    return entry


def checked_sidecar(folder: str | os.PathLike, facts: dict, owner: str) -> Path:
    """A file an entry lists beside its model ({file, sha256}, e.g. the CAM head), refused
    when missing or not the bytes the manifest vouches for."""
    path = Path(folder) / facts["file"]
    if not path.is_file():
        raise ModelError(f"{owner}: file missing: {path}")
    digest = sha256_of(path)
    if digest != facts["sha256"]:
        raise ModelError(f"{path} does not match the manifest (sha256 {digest[:12]}… != "
                         f"{facts['sha256'][:12]}…): refusing a damaged or replaced file")
    return path


def update_manifest(entries: dict[str, dict], default_arch: str | None = None,
                    path: str | os.PathLike | None = None) -> Path:
    """Add or replace entries (by key) in the manifest, creating it if needed."""
    path = Path(path) if path else manifest_path()
    manifest = read_manifest(path) if path.is_file() else {"models": {}}
    split_file = path.parent / SPLIT_FILENAME
    manifest.update(
        schema_version=SCHEMA_VERSION,
        class_names=list(CLASS_NAMES),
        input_shape=list(INPUT_SHAPE),
        preprocessing=PREPROCESSING_ID,
        split={"file": SPLIT_FILENAME, "sha256": sha256_of(split_file)},
    )
    if default_arch:
        manifest["default_arch"] = default_arch
    manifest["models"].update(entries)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def drop_derived_models(arch: str, path: str | os.PathLike | None = None) -> list[str]:
    """Remove an architecture's converted models (files and entries): they were made from a
    Keras model that is being replaced. Returns the keys removed."""
    path = Path(path) if path else manifest_path()
    if not path.is_file():
        return []
    manifest = read_manifest(path)
    removed = [key for key, info in manifest["models"].items()
               if info["arch"] == arch and info["format"] != "keras"]
    for key in removed:
        info = manifest["models"].pop(key)
        for facts in (info, info.get("cam_head")):
            if facts:
                (path.parent / facts["file"]).unlink(missing_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return removed


def file_facts(path: str | os.PathLike) -> dict:
    """The file name (relative to models/), sha256 and size recorded for every model file."""
    return {"file": Path(path).name, "sha256": sha256_of(path), "bytes": Path(path).stat().st_size}
