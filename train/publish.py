"""`busi publish RUN_DIR`: ship a trained run's Keras model in models/ with its manifest entry."""

from __future__ import annotations

import json
from pathlib import Path

import click
import keras

from edge_infer.manifest import (
    BUS_BRA_SPLIT_FILENAME,
    drop_derived_models,
    file_facts,
    models_dir,
    sha256_of,
    update_manifest,
)
from edge_infer.spec import CLASS_NAMES, INPUT_SHAPE, INPUT_SIZE


def keras_entry(run_dir: Path, model_file: Path) -> dict:
    """The manifest entry of a Keras model, from the run's results.json."""
    results = json.loads((run_dir / "results.json").read_text())
    config = results["config"]
    return {
        "format": "keras", "arch": config["arch"], "variant": "keras", **file_facts(model_file),
        "input": {"dtype": "float32", "shape": [None, *INPUT_SHAPE], "range": [0, 255]},
        "output": {"dtype": "float32", "shape": [None, len(CLASS_NAMES)]},
        "class_names": list(CLASS_NAMES), "preprocessing": results["preprocessing"],
        "initialisation": results["initialisation"], "threshold": results["threshold"],
        "threshold_rule": results.get(
            "threshold_rule", "highest T with malignant recall >= 0.95 on the validation split"),
        "training": {"config": config, "counts": results["counts"],
                     **({"trained_on": results["trained_on"]} if "trained_on" in results else {}),
                     "train_seconds": results["train_seconds"], **_site_split(config)},
        "metrics": {name: value for name, value in results.items()
                    if name in ("val", "test", "selection_score") or name.startswith("bus_bra_")},
    }


def _site_split(config: dict) -> dict:
    """The BUS-BRA split file a model trained on (name and sha256), if it used BUS-BRA."""
    if not config.get("bus_bra"):
        return {}
    split = models_dir() / BUS_BRA_SPLIT_FILENAME
    return {"bus_bra_split": {"file": split.name, "sha256": sha256_of(split)}}


@click.command(help="Save RUN_DIR/model.keras (without optimizer state) as models/<arch>.keras "
               "and record it in the manifest, replacing the previous copy: one current model "
               "per architecture.")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--default", "make_default", is_flag=True,
              help="Make this architecture the runtime's default.")
def main(run_dir: Path, make_default: bool) -> None:
    config = json.loads((run_dir / "results.json").read_text())["config"]
    if config.get("image_size", INPUT_SIZE) != INPUT_SIZE:
        raise click.ClickException(
            f"{run_dir} was trained at {config['image_size']} px; the runtime serves "
            f"{INPUT_SIZE} px models only (--image-size is a training lever to screen)")
    arch = config["arch"]
    target = models_dir() / f"{arch}.keras"
    stale = drop_derived_models(arch)
    keras.models.load_model(run_dir / "model.keras", compile=False).save(target)
    update_manifest({f"{arch}/keras": keras_entry(run_dir, target)},
                    default_arch=arch if make_default else None)
    stale_note = f"; removed stale {', '.join(stale)}: run python -m busi convert"
    click.echo(f"published {target}" + (stale_note if stale else ""))


if __name__ == "__main__":
    main()
