"""`python -m busi convert`: the shipped Keras model -> verified TFLite variants in models/, and
what depends on them refitted in the same pass (one manifest write).

Each variant is run through the TFLite interpreter on the validation and test images and
compared with Keras on the same arrays; a variant that misses its target is not entered in
the manifest and the command exits with status 1. Every variant also outputs the last
convolutional feature map (for heat-maps); a single-output conversion of the same variant
checks that this extra output leaves the probabilities unchanged. The classifier head's
weights go to models/<arch>-head.npz, listed in each entry as cam_head. Then, unless
--no-refit, the temperature and threshold of the Keras model and every variant written are fitted
on the validation data (convert.calibrate) and each variant's input check (convert.ood_fit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from convert.int8_choices import DEFAULT_INT8_RANGES, INT8_RANGES, RANGE_NOTES
from convert.validation import validation_set
from edge_infer.manifest import (
    MANIFEST_FILENAME,
    SPLIT_FILENAME,
    ModelError,
    file_facts,
    read_manifest,
    resolve_model,
    update_manifest,
)
from edge_infer.manifest import models_dir as shipped_models_dir
from edge_infer.spec import CLASS_NAMES, PREPROCESSING_ID
from edge_infer.splits import load_images, split_files
from edge_infer.tflite_model import TFLiteModel
from train.datasets import resolve_busi_dir

DEFAULT_VARIANTS = "float32,float16,int8"
CALIBRATION = "all {} images of the split manifests (preprocess_image, uint8)"
VERIFICATION_NOTE = ("the conversion check against Keras, on uncalibrated probabilities with a "
                     "threshold chosen on them (BUSI validation split); the refit then sets "
                     "the entry's temperature and threshold, which the runtime applies")


def _predict(model: TFLiteModel, images: np.ndarray, desc: str) -> np.ndarray:
    return np.stack([model.run(image).probs
                     for image in tqdm(images, desc=desc, leave=False)])


def _single_output_probs(model, variant: str, data: dict, calibration: np.ndarray,
                         threads: int, scratch: Path,
                         int8_ranges: str) -> dict[str, np.ndarray]:
    """Probabilities of the variant converted without the feature-map output (the check that
    the extra output changes nothing)."""
    from convert.tflite import convert_model

    scratch.write_bytes(convert_model(model, variant, calibration, feature_map=False,
                                      int8_ranges=int8_ranges))
    try:
        single = TFLiteModel(scratch, threads)
        return {split: _predict(single, data[split][0], f"{variant} 1-output {split}")
                for split in data}
    finally:
        scratch.unlink()


def _line(name: str, report: dict) -> str:
    test = report["test"]
    return (f"{name:9s} test acc {test['accuracy']:.3f}  macro-F1 {test['macro_f1']:.3f}  "
            f"mal. recall@T {test['malignant_recall_at_threshold']:.3f} "
            f"(T={report['threshold']:.3f})"
            f"  agreement {test['agreement']:.3f}  max|dp| {test['max_abs_dprob']:.3f}")


@click.command(help=__doc__)
@click.option("--arch", default=None, help="Architecture in the manifest (default: its default).")
@click.option("--variants", default=DEFAULT_VARIANTS, show_default=True,
              help="Comma-separated: float32, float16, dynamic, int8.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--threads", default=2, show_default=True, help="Interpreter threads.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with manifest.json, the split and the Keras model (default: models/).")
@click.option("--int8-ranges", type=click.Choice(INT8_RANGES), default=DEFAULT_INT8_RANGES,
              show_default=True,
              help="int8 activation ranges: refined (the shipped int8): each intermediate range "
                   "shrunk (factor 0.2-1) to its least quantization error on the validation "
                   "images and the input rescaling made exact, or minmax: the converter's "
                   "calibration min / max (benchmarks/reports/int8_ranges-<arch>.md). Only "
                   "affects int8.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="Refit temperatures, thresholds and input checks of what is written (off: "
                   "entries stay uncalibrated, with no input check, until `calibrate` and "
                   "`ood-fit` run).")
@click.option("--accept-missed-targets", "accepted", default="", metavar="VARIANTS",
              help="Comma-separated variants to keep even if they miss a target: each miss is "
                   "printed and recorded in the manifest (verification.targets_missed). For a "
                   "deliberate, documented trade-off only.")
def main(arch: str | None, variants: str, busi_dir: str | None, threads: int,
         models_dir: Path | None, int8_ranges: str, refit: bool, accepted: str) -> None:
    import keras

    from convert.feature_output import write_head
    from convert.tflite import VARIANTS, convert_model, float32_weight_bytes
    from convert.verify import (
        check_feature_output,
        check_targets,
        evaluate_variant,
        feature_output_report,
        targets_for,
    )

    wanted = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    not_variants = sorted(set(filter(None, accepted.split(","))) - set(VARIANTS))
    if not_variants:
        raise click.BadParameter(f"--accept-missed-targets: unknown variant(s) {not_variants}")
    folder = models_dir or shipped_models_dir()
    manifest_file = folder / MANIFEST_FILENAME
    split_file = folder / SPLIT_FILENAME
    try:
        arch = arch or read_manifest(manifest_file).get("default_arch")
        if not arch:
            raise ModelError(f"{manifest_file} names no default architecture: pass --arch")
        source = resolve_model(f"{arch}/keras", manifest_file)
        root = resolve_busi_dir(busi_dir)
    except (ModelError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    model = keras.models.load_model(source.path)
    data = {split: load_images(split_files(split, split_file), root, desc=split)
            for split in ("val", "test")}
    calibration, _, calibration_sets = validation_set(manifest_file, arch, busi_dir)
    labels = {split: data[split][1] for split in data}
    keras_probs = {split: model.predict(data[split][0].astype(np.float32), batch_size=32,
                                        verbose=0) for split in data}
    keras_report = evaluate_variant(labels, keras_probs, keras_probs)
    click.echo(_line("keras", keras_report))
    baseline_bytes = float32_weight_bytes(model)
    head_file = folder / f"{arch}-head.npz"
    head_candidate = head_file.with_name(head_file.name + ".tmp")
    write_head(model, head_candidate)
    head_facts = file_facts(head_candidate) | {"file": head_file.name}

    entries, failed = {}, {}
    for variant in wanted:
        click.echo(f"converting {arch} -> {variant} ...", err=True)
        path = folder / f"{arch}-{variant}.tflite"
        # Verify under a temporary name: a variant that misses its target must not replace
        # the file an existing manifest entry vouches for.
        candidate = path.with_name(path.name + ".tmp")
        try:
            converted = convert_model(model, variant, calibration, int8_ranges=int8_ranges)
        except ValueError as err:  # e.g. refined ranges on a model without an input Rescaling
            raise click.ClickException(f"{arch} -> {variant}: {err} (--int8-ranges minmax "
                                       "converts without it)") from None
        candidate.write_bytes(converted)
        tflite = TFLiteModel(candidate, threads)
        probs = {split: _predict(tflite, data[split][0], f"{variant} {split}") for split in data}
        io_spec = tflite.io_spec()
        del tflite  # release the mapped file before it is moved or removed
        report = evaluate_variant(labels, probs, keras_probs)
        extra_output = feature_output_report(
            _single_output_probs(model, variant, data, calibration, threads,
                                 path.with_name(path.name + ".1out.tmp"), int8_ranges), probs)
        size = candidate.stat().st_size
        size_ratio = baseline_bytes / size
        targets = targets_for(variant)
        failures = (check_targets(targets, report, keras_report, size_ratio)
                    + check_feature_output(variant, extra_output))
        click.echo(_line(variant, report) + f"  size {size / 1e6:.1f} MB "
                   f"({size_ratio:.2f}x smaller)  feature output: max|dp| "
                   f"{extra_output['test']['max_abs_dprob']:.2g} vs 1 output"
                   + (f"  FAILED: {failures}" if failures else ""))
        if failures and variant not in accepted.split(","):
            candidate.unlink()
            failed[variant] = failures
            continue
        if failures:
            click.echo(f"WARNING: keeping {variant} although it misses {failures} "
                       "(--accept-missed-targets); recorded in the manifest", err=True)
        candidate.replace(path)
        entries[f"{arch}/{variant}"] = {
            "format": "tflite", "arch": arch, "variant": variant, **file_facts(path),
            **io_spec, "class_names": list(CLASS_NAMES),
            "preprocessing": PREPROCESSING_ID, "cam_head": head_facts,
            "threshold": report["threshold"],
            "threshold_rule": "highest T with malignant recall >= 0.95 on the validation split",
            "source_model": {"file": source.info["file"], "sha256": source.info["sha256"]},
            "calibration": (f"{CALIBRATION.format(' + '.join(calibration_sets['sets']))}; "
                            f"{RANGE_NOTES[int8_ranges]}" if variant == "int8" else None),
            "made_by": f"python -m busi convert (tensorflow {_tf_version()}, keras "
                       f"{keras.__version__})",
            "verification": {"note": VERIFICATION_NOTE, **report, "targets": targets,
                             "targets_missed": failures,
                             "size_ratio_vs_float32_weights": size_ratio,
                             "feature_output_vs_single_output": extra_output,
                             "keras_test": {k: keras_report["test"][k] for k in
                                            ("accuracy", "macro_f1",
                                             "malignant_recall_at_threshold")}},
        }
    if entries:
        head_candidate.replace(head_file)
        if refit:
            entries = _refitted(entries, arch, folder, busi_dir, threads)
        update_manifest(entries, path=manifest_file)
        click.echo(f"manifest updated: {', '.join(entries)}")
    else:
        head_candidate.unlink()
    if failed:
        click.echo(f"variants that missed their targets (not in the manifest): {failed}", err=True)
        sys.exit(1)


def _refitted(entries: dict[str, dict], arch: str, folder: Path, busi_dir: str | None,
              threads: int) -> dict[str, dict]:
    """The written entries and the Keras one with temperature and threshold refitted, and the
    written ones with their input check: what the runtime applies to their outputs."""
    from convert.calibrate import calibrated_entries
    from convert.ood_fit import input_check_entries

    keras_key = f"{arch}/keras"
    keras_info = read_manifest(folder / MANIFEST_FILENAME)["models"][keras_key]
    calibrated = calibrated_entries({keras_key: keras_info, **entries}, folder, busi_dir,
                                    threads)
    try:
        checked = input_check_entries({key: calibrated[key] for key in entries}, folder,
                                      busi_dir, threads)
    except (ValueError, FileNotFoundError) as err:  # also: a site's split or images missing
        raise click.ClickException(f"input check: {err}") from None
    return {**calibrated, **checked}


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


if __name__ == "__main__":
    main()
