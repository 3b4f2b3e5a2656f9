"""`python -m busi ood-fit`: fit each shipped TFLite model's input check (edge_infer/ood.py)
into models/<arch>-<variant>-ood.npz and the "ood" field of its manifest entry.

The feature density is fitted on the pooled features of the BUSI training split (plus BUS-BRA's
training patients for a model trained across sites), each variant from its own outputs (int8
features differ slightly from float ones); the warning threshold is then chosen on the matching
validation images so that at most --false-alarm of them are flagged (the colour check
included). The refuse boundary is chosen by leaving a site out: a density fitted on one
hospital's training scans (its warning threshold on that hospital's validation scans) scores the
other hospital's train and validation scans; the largest distance as a multiple of that warning
threshold, times 1.05, times the shipped warning threshold, is the boundary, so neither
hospital's real scans would have been refused by a check that never saw them. No test image
(and nothing of BrEaST) is read. `python -m busi convert` does this for the models it writes;
this command refits alone, from the model files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from convert.validation import split_sha256s, trained_on_bus_bra
from edge_infer.manifest import (
    MANIFEST_FILENAME,
    SPLIT_FILENAME,
    ModelError,
    checked_sidecar,
    file_facts,
    read_manifest,
    update_manifest,
)
from edge_infer.manifest import models_dir as shipped_models_dir
from edge_infer.ood import (
    COLOUR_METHOD,
    COLOUR_THRESHOLD,
    DEFAULT_COMPONENTS,
    FEATURE_METHOD,
    REFUSE_MARGIN,
    TARGET_FALSE_ALARM,
    choose_threshold,
    colour_score,
    fit_feature_density,
)
from edge_infer.preprocess import decode_image, to_model_input
from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import SplitRow, bus_bra_split_files, split_files
from edge_infer.tflite_model import TFLiteModel
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir

SPLITS: tuple[str, ...] = ("train", "val")


@dataclass
class SplitImages:
    """One split's model inputs, labels and the colour scores of the decoded images."""

    images: np.ndarray
    labels: np.ndarray
    colour: np.ndarray


def load_rows(rows: list[SplitRow], root: Path, desc: str) -> SplitImages:
    """Decode every image of some split rows once: model input and colour score."""
    images, colour = [], []
    for row in tqdm(rows, desc=desc, leave=False):
        decoded = decode_image(root / row.file).image
        images.append(to_model_input(decoded))
        colour.append(colour_score(decoded))
    return SplitImages(np.stack(images),
                       np.array([CLASS_NAMES.index(row.label) for row in rows], np.int64),
                       np.array(colour))


def load_sites(root: Path, split_file: Path, site_root: Path) -> dict[str, dict[str, SplitImages]]:
    """BUSI's and BUS-BRA's train and val images, by site and split (never their test ones)."""
    return {"BUSI": {split: load_rows(split_files(split, split_file), root, f"BUSI {split}")
                     for split in SPLITS},
            "BUS-BRA": {split: load_rows(bus_bra_split_files(split, split_file.parent),
                                         site_root, f"BUS-BRA {split}") for split in SPLITS}}


def joined(parts: list[SplitImages]) -> SplitImages:
    """Several splits' images as one."""
    return SplitImages(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("images", "labels", "colour")))


def pooled_features(model: TFLiteModel, images: np.ndarray, desc: str) -> np.ndarray:
    """The model's pooled features (N, C) of preprocessed images."""
    return np.stack([model.run(image).pooled_features
                     for image in tqdm(images, desc=desc, leave=False)])


def refuse_ratio(features: dict[str, dict[str, np.ndarray]],
                 data: dict[str, dict[str, SplitImages]], components: int,
                 false_alarm: float) -> dict[str, float]:
    """Leaving a site out: fitted on one site's train scans (warning threshold on its val
    scans), the largest distance of the other site's train and val scans as a multiple of
    that threshold, for each way round."""
    found = {}
    for fitted, held in (("BUSI", "BUS-BRA"), ("BUS-BRA", "BUSI")):
        density = fit_feature_density(features[fitted]["train"], data[fitted]["train"].labels,
                                      components)
        threshold = choose_threshold(density.score(features[fitted]["val"]), false_alarm)
        others = np.concatenate([features[held][split] for split in SPLITS])
        found[f"fitted on {fitted}, {held} held out"] = float(
            density.score(others).max() / threshold)
    return found


def input_check_entries(entries: dict[str, dict], folder: Path, busi_dir: str | None,
                        threads: int, components: int = DEFAULT_COMPONENTS,
                        false_alarm: float = TARGET_FALSE_ALARM,
                        say=click.echo) -> dict[str, dict]:
    """The TFLite entries (files in folder) with their input check fitted: the .npz written
    beside them, its facts under "ood". ValueError when the colour check alone flags more
    validation images than the false-alarm budget."""
    manifest_file = folder / MANIFEST_FILENAME
    data = load_sites(resolve_busi_dir(busi_dir), folder / SPLIT_FILENAME,
                      resolve_bus_bra_dir())
    fitted = {}
    for key, info in entries.items():
        path = checked_sidecar(folder, info, key)
        both_sites = trained_on_bus_bra(manifest_file, info["arch"])
        own = ("BUSI", "BUS-BRA") if both_sites else ("BUSI",)
        model = TFLiteModel(path, threads)
        features = {site: {split: pooled_features(model, data[site][split].images,
                                                  f"{key} {site} {split}")
                           for split in SPLITS} for site in data}
        train = joined([data[site]["train"] for site in own])
        val = joined([data[site]["val"] for site in own])
        colour_flagged = val.colour > COLOUR_THRESHOLD
        sites = " + ".join(own)
        density = fit_feature_density(np.concatenate([features[s]["train"] for s in own]),
                                      train.labels, components)
        val_scores = density.score(np.concatenate([features[s]["val"] for s in own]))
        threshold = choose_threshold(val_scores[~colour_flagged], false_alarm,
                                     int(colour_flagged.sum()))
        flagged = (val_scores > threshold) | colour_flagged
        held_out = refuse_ratio(features, data, components, false_alarm)
        ratio = max(held_out.values()) * REFUSE_MARGIN
        out = folder / f"{info['arch']}-{info['variant']}-ood.npz"
        density.save(out)
        fitted[key] = {**info, "ood": {
            **file_facts(out), "method": FEATURE_METHOD, "components": components,
            "threshold": threshold, "refuse_threshold": threshold * ratio,
            "refuse_rule": {"ratio": ratio, "margin": REFUSE_MARGIN,
                            "leave_a_site_out_max_ratio": held_out,
                            "how": "largest leave-a-site-out distance of a held-out "
                                   "hospital's train+val scans over that fit's warning "
                                   "threshold, times the margin, times this threshold"},
            "colour_method": COLOUR_METHOD,
            "colour_threshold": COLOUR_THRESHOLD, "target_false_alarm": false_alarm,
            "val_false_alarm": float(flagged.mean()), "val_flagged": int(flagged.sum()),
            "val_images": len(val_scores), "train_images": len(train.labels),
            "fitted_on": f"pooled features of this model file on the {sites} train split",
            "threshold_chosen_on": f"{sites} val split",
            "split_sha256s": split_sha256s(folder, both_sites),
            "model_sha256": info["sha256"], "made_by": "python -m busi convert / ood-fit",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }}
        say(f"{key:28s} warning threshold {threshold:.3f}, refuse boundary "
            f"{threshold * ratio:.3f} ({ratio:.2f} x; leave-a-site-out "
            + ", ".join(f"{name} {value:.2f}" for name, value in held_out.items())
            + f")  val flagged {int(flagged.sum())}/{len(val_scores)} -> {out.name}")
    return fitted


@click.command(help=__doc__)
@click.option("--arch", default=None,
              help="Fit this architecture's models only (default: every architecture).")
@click.option("--variants", default=None,
              help="Comma-separated TFLite variants (default: every one with a feature-map "
                   "output).")
@click.option("--components", type=click.IntRange(1, 400), default=DEFAULT_COMPONENTS,
              show_default=True, help="Principal directions of the feature covariance.")
@click.option("--false-alarm", type=click.FloatRange(0.0, 0.5), default=TARGET_FALSE_ALARM,
              show_default=True,
              help="Largest fraction of validation images the check may flag.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--threads", default=2, show_default=True, help="Interpreter threads.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with manifest.json, the split and the models (default: models/).")
def main(arch: str | None, variants: str | None, components: int, false_alarm: float,
         busi_dir: str | None, threads: int, models_dir: Path | None) -> None:
    folder = models_dir or shipped_models_dir()
    manifest_file = folder / MANIFEST_FILENAME
    try:
        manifest = read_manifest(manifest_file)
    except ModelError as err:
        raise click.ClickException(str(err)) from None
    fittable = {key: info for key, info in manifest["models"].items()
                if info["format"] == "tflite" and "feature_map" in info
                and (arch is None or info["arch"] == arch)}
    wanted = [v.strip() for v in variants.split(",")] if variants else None
    keys = [key for key, info in fittable.items() if wanted is None or info["variant"] in wanted]
    missing = sorted(set(wanted or []) - {fittable[key]["variant"] for key in keys})
    if missing or not keys:
        raise click.UsageError(
            f"no TFLite model with a feature-map output for {arch or 'any architecture'} "
            f"{'named ' + ', '.join(missing) + ' ' if missing else ''}in {manifest_file} "
            f"(there are: {', '.join(fittable) or 'none'}; python -m busi convert makes them)")
    try:
        entries = input_check_entries({key: fittable[key] for key in keys}, folder, busi_dir,
                                      threads, components, false_alarm)
    except (ModelError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    update_manifest(entries, path=manifest_file)
    click.echo(f"manifest updated: {', '.join(entries)}")


if __name__ == "__main__":
    main()
