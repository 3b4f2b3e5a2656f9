"""The site table: each trained model x each test set, for Keras and its int8 conversion
(as `busi convert` converts by default: refined activation ranges, calibrated on the
validation images the run was validated on).

Test sets: the BUSI test split, BUS-BRA's test patients and BrEaST-Lesions_USG (another
hospital, a test set only). Each model and variant is calibrated as the shipped models are
(`edge_infer.calibration.fit_calibration`: temperature, then the high-sensitivity threshold, on
its own outputs for its own validation data), so the figures show how a model holds up where it
was not tuned. Also how often normals are still called normal,
since BUS-BRA has no normal class and "normal" must not become "looks like BUSI".

    python -m busi sites NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a `python -m busi train` output folder (model.keras, results.json).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import numpy as np

from benchmarks.external import load_external
from edge_infer.calibration import apply_temperature, fit_calibration
from edge_infer.decision import argmax_indices
from edge_infer.evaluation import malignant_figures
from edge_infer.spec import NORMAL_INDEX
from edge_infer.splits import bus_bra_split_files, load_images, split_files
from edge_infer.tflite_model import TFLiteModel
from train.datasets import resolve_bus_bra_dir, resolve_busi_dir, resolve_external_dir

REPORTS = Path(__file__).resolve().parent / "reports"
TEST_SETS: tuple[str, ...] = ("BUSI test", "BUS-BRA test", "BrEaST")


def load_sets(stride: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(uint8 images, labels) of BUSI validation (for int8 calibration and thresholds), and of
    each test set."""
    busi = resolve_busi_dir()
    external = load_external(resolve_external_dir(), stride)
    return {
        "BUSI val": load_images(split_files("val"), busi, desc="BUSI val"),
        "BUS-BRA val": load_images(bus_bra_split_files("val"), resolve_bus_bra_dir(),
                                   desc="BUS-BRA val"),
        "BUSI test": load_images(split_files("test"), busi, desc="BUSI test"),
        "BUS-BRA test": load_images(bus_bra_split_files("test"), resolve_bus_bra_dir(),
                                    desc="BUS-BRA test"),
        "BrEaST": (external["images"], external["labels"]),
    }


def _validation(results: dict, sets: dict) -> tuple[np.ndarray, np.ndarray]:
    """The validation images the run chose its threshold on: BUSI val, plus BUS-BRA val when
    it trained on BUS-BRA."""
    parts = [sets["BUSI val"]] + ([sets["BUS-BRA val"]] if results["config"]["bus_bra"] else [])
    return (np.concatenate([images for images, _ in parts]),
            np.concatenate([labels for _, labels in parts]))


def _normal_recall(labels: np.ndarray, probs: np.ndarray) -> dict:
    normal = labels == NORMAL_INDEX
    called = argmax_indices(probs) == NORMAL_INDEX
    return {"normals": int(normal.sum()),
            "normal_recall": float(called[normal].mean()) if normal.any() else None,
            "lesions_called_normal": float(called[~normal].mean())}


def model_rows(name: str, run_dir: Path, sets: dict, n_resamples: int) -> dict:
    """Keras and int8 figures of one trained model on every test set."""
    import keras

    from convert.int8_choices import DEFAULT_INT8_RANGES
    from convert.tflite import convert_model

    results = json.loads((run_dir / "results.json").read_text())
    model = keras.models.load_model(run_dir / "model.keras")
    val_images, val_labels = _validation(results, sets)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "int8.tflite"
        path.write_bytes(convert_model(model, "int8", val_images,
                                       int8_ranges=DEFAULT_INT8_RANGES))
        int8 = TFLiteModel(path, threads=2)
        predictors = {
            "keras": lambda x: model.predict(x.astype(np.float32), batch_size=32, verbose=0),
            "int8": int8.predict,
        }
        variants = {}
        for variant, predict in predictors.items():
            fit = fit_calibration(predict(val_images), val_labels)
            cells = {}
            for test_set in TEST_SETS:
                images, labels = sets[test_set]
                probs = apply_temperature(predict(images), fit.temperature)
                cells[test_set] = {**malignant_figures(labels, probs, fit.threshold, n_resamples),
                                   **_normal_recall(labels, probs)}
            variants[variant] = {"threshold": fit.threshold, "temperature": fit.temperature,
                                 "sets": cells}
    return {"name": name, "run": str(run_dir), "config": results["config"],
            "validation": ["BUSI val"] + (["BUS-BRA val"] if results["config"]["bus_bra"] else []),
            "selection_score": results.get("selection_score"),
            "bus_bra_val_auc": results.get("bus_bra_val", {}).get("auc_benign_vs_malignant"),
            "busi_val_macro_f1": results["val"]["macro_f1"], "variants": variants}


def _cell(figures: dict) -> str:
    auc = figures["auc_benign_vs_malignant"]
    low, high = auc["interval_95"]
    at_t = figures["high_sensitivity"]
    return (f"{auc['value']:.3f} [{low:.2f}, {high:.2f}] · "
            f"{at_t['sensitivity']:.2f} / {at_t['specificity']:.2f}")


def markdown(table: dict) -> str:
    """The site table for people: AUROC [95 % CI] · sensitivity / specificity at T."""
    lines = ["| model | variant | T | " + " | ".join(TEST_SETS) + " |",
             "|---|---|---|" + "---|" * len(TEST_SETS)]
    for row in table["models"]:
        for variant, figures in row["variants"].items():
            cells = " | ".join(_cell(figures["sets"][s]) for s in TEST_SETS)
            lines.append(f"| {row['name']} | {variant} | {figures['threshold']:.3f} | {cells} |")
    lines += ["", "Cells: benign-vs-malignant AUROC [95 % bootstrap CI] · malignant sensitivity "
              "/ specificity at the model's validated threshold T (on temperature-calibrated "
              "probabilities, both fitted on the model's validation data).", "",
              "| model | variant | BUSI normal recall | BrEaST normals called normal | "
              "lesions called normal (BUSI / BUS-BRA / BrEaST) |", "|---|---|---|---|---|"]
    for row in table["models"]:
        for variant, figures in row["variants"].items():
            sets = figures["sets"]
            lines.append(
                f"| {row['name']} | {variant} | {sets['BUSI test']['normal_recall']:.2f} | "
                f"{sets['BrEaST']['normal_recall']:.2f} (n={sets['BrEaST']['normals']}) | "
                + " / ".join(f"{sets[s]['lesions_called_normal']:.2f}" for s in TEST_SETS)
                + " |")
    return "\n".join(lines) + "\n"


SITES_HEADING = "## Across sites: each trained model on each hospital's test set"


def committed_table(folder: Path = REPORTS) -> dict | None:
    """The site table last written by `python -m busi sites` (it needs the training
    runs, so the benchmark report includes it rather than recomputing it)."""
    path = folder / "sites.json"
    return json.loads(path.read_text()) if path.is_file() else None


def sites_section(results: dict) -> list[str]:
    """The benchmark report's section: the committed site table, or why it is absent."""
    table = results.get("sites")
    lines = [SITES_HEADING, ""]
    if not table:
        return lines + ["Not available: run `python -m busi sites NAME=RUN_DIR ...`.", ""]
    counts = ", ".join(f"{name} {n}" for name, n in table["test_sets"].items())
    return lines + [f"Test images: {counts}. Written by `python -m busi sites` "
                    "(`benchmarks/reports/sites.json`).", "", markdown(table)]


@click.command(help=__doc__)
@click.argument("runs", nargs=-1, required=True, metavar="NAME=RUN_DIR...")
@click.option("--resamples", default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REPORTS,
              show_default=True, help="Writes sites.json and sites.md here.")
def main(runs: tuple[str, ...], resamples: int, out: Path) -> None:
    named = [run.split("=", 1) for run in runs]
    if any(len(pair) != 2 for pair in named):
        raise click.BadParameter("each run is NAME=RUN_DIR")
    table = tabulate(named, resamples)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sites.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "sites.md").write_text(markdown(table))
    click.echo(markdown(table))


def tabulate(named: list[tuple[str, str]], resamples: int) -> dict:
    """The site table of the named runs."""
    sets = load_sets()
    return {"test_sets": {name: int(len(sets[name][1])) for name in TEST_SETS},
            "models": [model_rows(name, Path(path), sets, resamples) for name, path in named]}


if __name__ == "__main__":
    main()
