"""`python -m busi calibrate`: refit each shipped model's temperature on its validation data
(BUSI's split; with BUS-BRA's validation patients too for a model trained across sites, see
convert.validation) and re-choose its high-sensitivity threshold on the calibrated
probabilities, into the manifest.

`python -m busi convert` does this for the models it writes; this command refits alone. Each
variant is fitted from its own outputs: a TFLite model through the runtime's interpreter (int8:
its dequantized uint8 probabilities), the Keras model through `predict`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from convert.validation import validation_set
from edge_infer.calibration import TEMPERATURE_BOUNDS, fit_calibration, fit_temperature
from edge_infer.manifest import (
    MANIFEST_FILENAME,
    ModelError,
    checked_sidecar,
    read_manifest,
    update_manifest,
)
from edge_infer.manifest import models_dir as shipped_models_dir
from edge_infer.rates import bootstrap_interval
from edge_infer.tflite_model import TFLiteModel

THRESHOLD_RULE = ("highest T with malignant recall >= 0.95 on the validation split, on the "
                  "temperature-calibrated probabilities")
OBJECTIVE = (f"mean negative log-likelihood of softmax(log p / T) on the validation split, "
             f"golden-section search over log T in [{TEMPERATURE_BOUNDS[0]}, "
             f"{TEMPERATURE_BOUNDS[1]}]")


def raw_probabilities(key: str, info: dict, folder: Path, images: np.ndarray,
                      threads: int) -> np.ndarray:
    """A model's own, uncalibrated probabilities (N, 3) on preprocessed uint8 images: TFLite
    through the runtime's interpreter wrapper, Keras through `predict`."""
    path = checked_sidecar(folder, info, key)  # the file the entry vouches for
    if info["format"] == "tflite":
        return TFLiteModel(path, threads).predict(images)
    import keras

    model = keras.models.load_model(path)
    return model.predict(images.astype(np.float32), batch_size=32, verbose=0)


def calibration_fields(probs: np.ndarray, labels: np.ndarray, validation: dict,
                       source: str) -> dict:
    """The manifest fields of one model's fit: temperature, threshold and how they came about."""
    fit = fit_calibration(probs, labels)
    low, high = bootstrap_interval(lambda idx: fit_temperature(probs[idx], labels[idx]),
                                   len(labels))
    return {
        "temperature": fit.temperature,
        "threshold": fit.threshold,
        "threshold_rule": THRESHOLD_RULE,
        "temperature_fit": {
            "split": "val", "sets": validation["sets"], "images": fit.n,
            "malignant": fit.n_malignant, "split_sha256s": validation["splits"],
            "outputs": source, "objective": OBJECTIVE,
            "nll_before": fit.nll_before, "nll_after": fit.nll_after,
            "temperature_interval_95": [low, high],
            "interval_method": "percentile bootstrap over the validation images (refit each "
                               "resample; 1000 resamples, seed 0)",
            "made_by": "python -m busi convert / calibrate",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


SOURCES = {"tflite": "the TFLite file's own probabilities (dequantized when uint8), "
                     "edge_infer.tflite_model",
           "keras": "the Keras model's predict()"}


def calibrated_entries(entries: dict[str, dict], folder: Path, busi_dir: str | None,
                       threads: int, say=click.echo) -> dict[str, dict]:
    """The entries (one architecture's, files in folder) with temperature and threshold refitted
    on the architecture's validation data; ImportError when a Keras entry needs keras."""
    arch = next(iter(entries.values()))["arch"]
    images, labels, validation = validation_set(folder / MANIFEST_FILENAME, arch, busi_dir)
    fitted = {}
    for key, info in entries.items():
        probs = raw_probabilities(key, info, folder, images, threads)
        fields = calibration_fields(probs, labels, validation, SOURCES[info["format"]])
        fit = fields["temperature_fit"]
        low, high = fit["temperature_interval_95"]
        say(f"{key:28s} T = {fields['temperature']:.3f} [{low:.3f}, {high:.3f}]  "
            f"val NLL {fit['nll_before']:.3f} -> {fit['nll_after']:.3f}  threshold "
            f"{info['threshold']:.3f} -> {fields['threshold']:.3f} (calibrated)")
        fitted[key] = {**info, **fields}
    return fitted


@click.command(help=__doc__)
@click.option("--arch", default=None, help="Architecture in the manifest (default: its default).")
@click.option("--variants", default=None,
              help="Comma-separated variants to fit (default: every one the manifest lists for "
                   "the architecture: keras, float32, float16, int8).")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--threads", default=2, show_default=True, help="Interpreter threads.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with manifest.json, the split and the models (default: models/).")
def main(arch: str | None, variants: str | None, busi_dir: str | None, threads: int,
         models_dir: Path | None) -> None:
    folder = models_dir or shipped_models_dir()
    manifest_file = folder / MANIFEST_FILENAME
    try:
        manifest = read_manifest(manifest_file)
        arch = arch or manifest.get("default_arch")
        if not arch:
            raise ModelError(f"{manifest_file} names no default architecture: pass --arch")
    except (ModelError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    listed = [info["variant"] for info in manifest["models"].values() if info["arch"] == arch]
    wanted = variants.split(",") if variants else listed
    unknown = sorted(set(wanted) - set(listed))
    if unknown:
        raise click.UsageError(f"{arch} has no {', '.join(unknown)} in {manifest_file} "
                               f"(it has {', '.join(listed) or 'nothing'})")
    try:
        entries = calibrated_entries({f"{arch}/{v}": manifest["models"][f"{arch}/{v}"]
                                      for v in wanted}, folder, busi_dir, threads)
    except ImportError as err:
        raise click.ClickException(f"{err.name} is not installed (pip install \".[dev]\")"
                                   ) from None
    except (ModelError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    update_manifest(entries, path=manifest_file)
    click.echo(f"manifest updated: {', '.join(entries)}")
