"""`python -m benchmarks.int8_precision`: how many bits does top-1 agreement with Keras need?

The simulated integer network of `benchmarks.int8_qat` (BN-folded weights, per-channel
symmetric weights, per-tensor activations with min / max ranges from the BUSI validation
images, as the converter calibrates) is run with weights and activations at several bit widths,
each side alone (the other in float) and together, and compared with the Keras model on every
non-test image (BUSI + BUS-BRA train and validation) and on the BUSI test split. Only the
activation ranges are fitted (on the 114 BUSI validation images, which are among the non-test
ones) and nothing is chosen here, so the non-test images measure the same thing as the test
split on ten times as many images (if anything optimistically: many are the Keras model's
training images, which it decides more firmly). The issue's target,
>= 99 % on the 114 test images, allows one flip; flips happen where Keras's own top-2 margin is
small, so the report counts those near-ties in both sets.
Writes benchmarks/reports/int8_precision-<arch>.{json,md}; ~7 minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import tensorflow as tf

from benchmarks.int8_qat import BATCH_SIZE, QuantSimulation
from benchmarks.int8_study import (
    agreement_interval,
    flipped_images,
    flipped_text,
    margin_counts,
    margins_text,
    model_label,
    non_test_images,
    study_inputs,
    study_options,
    tflite_probabilities,
    write_reports,
)
from benchmarks.metrics import agreement
from edge_infer.datasets import resolve_busi_dir
from edge_infer.decision import argmax_indices
from edge_infer.manifest import manifest_path, read_manifest, resolve_model

# (weight bits, activation bits); None = float. 8 / 8 is TFLite's int8, 8 / 16 close to its
# 16x8 mode (which has symmetric int16 activations).
SHIPPED_ROW = "TFLite int8 (shipped)"
PRECISIONS: tuple[tuple[int | None, int | None], ...] = (
    (8, 8), (8, 16), (8, None), (9, None), (10, None), (12, None),
    (None, 8), (None, 10), (None, 12), (10, 10), (12, 12), (12, 16), (None, None))


def bits_text(bits: int | None) -> str:
    return "float" if bits is None else f"{bits}-bit"


def measured(keras_probs: dict[str, np.ndarray], probs: dict[str, np.ndarray]) -> dict:
    """Agreement figures per image set; non-test with its flip count and bootstrap interval,
    test with the Keras margins of its flipped images."""
    row = {name: agreement(keras_probs[name], probs[name]) for name in probs}
    row["non_test"]["agreement_interval"] = agreement_interval(keras_probs["non_test"],
                                                               probs["non_test"])
    row["non_test"]["flips"] = int((argmax_indices(keras_probs["non_test"])
                                    != argmax_indices(probs["non_test"])).sum())
    row["test_flipped"] = flipped_images(keras_probs["test"], probs["test"])
    return row


def simulated_probabilities(simulation: QuantSimulation,
                            images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The simulated integer model's probabilities on each image set, in batches."""
    run = tf.function(lambda batch: simulation.probabilities(batch, "int8"))
    return {name: np.concatenate([run(tf.constant(batch[i:i + BATCH_SIZE], tf.float32)).numpy()
                                  for i in range(0, len(batch), BATCH_SIZE)])
            for name, batch in images.items()}


def write_markdown(results: dict, path: Path) -> None:
    counts = results["images"]
    lines = [f"# Precision needed for top-1 agreement: {results['model']}", "",
             "Simulated integer network (per-channel symmetric weights, per-tensor activations, "
             "min / max ranges from the BUSI validation images) at each precision, against the "
             f"Keras model. Non-test: all {counts['non_test']} BUSI + BUS-BRA train and "
             "validation images (many are the Keras model's training images, which it "
             "decides more firmly than test images: if anything, optimistic); test: the "
             f"{counts['test']} BUSI test images (>= 99 % allows one flip).", "",
             "| weights | activations | non-test agreement (95 % interval) | non-test flips "
             "| non-test mean abs Δp | test agreement | test mean abs Δp "
             "| test images flipped (Keras top-2 margin) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        low, high = row["non_test"]["agreement_interval"]
        lines.append(f"| {row['weights']} | {row['activations']} | "
                     f"{row['non_test']['agreement']:.4f} ({low:.3f}–{high:.3f}) | "
                     f"{row['non_test']['flips']} | {row['non_test']['mean_abs_dprob']:.4f} | "
                     f"{row['test']['agreement']:.3f} | {row['test']['mean_abs_dprob']:.4f} | "
                     f"{flipped_text(row['test_flipped'])} |")
    simulation_note = ("The simulation uses the converter's plain min / max ranges and tracks "
                       "TFLite only approximately (benchmarks/reports/int8_qat-*.md)")
    shipped = [row for row in results["rows"] if row["weights"] == SHIPPED_ROW]
    if shipped:
        simulated = next(row for row in results["rows"]
                         if (row["weights"], row["activations"]) == ("8-bit", "8-bit"))
        note = (f"Row '{SHIPPED_ROW}' is the shipped int8 file itself (refined ranges, real "
                f"integer kernels). {simulation_note}: at 8 / 8 it flips "
                f"{len(simulated['test_flipped'])} test images, the shipped file "
                f"{len(shipped[0]['test_flipped'])}.")
    else:
        note = f"No int8 of this model is shipped. {simulation_note}."
    lines += ["", f"{note} Images the Keras model barely decides (top-2 margin): test "
              f"{margins_text(results['margins']['test'])}; non-test "
              f"{margins_text(results['margins']['non_test'])}.", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@study_options("int8_precision")
def main(arch: str, busi_dir: str | None, out: Path) -> None:
    source, model, data, keras_test_val = study_inputs(arch, busi_dir)
    images = {"test": data["test"], "non_test": np.concatenate(list(
        non_test_images(resolve_busi_dir(busi_dir), data["val"]).values()))}
    keras_probs = {"test": keras_test_val["test"],
                   "non_test": model.predict(images["non_test"].astype(np.float32), verbose=0)}
    rows = []
    if f"{arch}/int8" in read_manifest(manifest_path())["models"]:
        shipped = resolve_model(f"{arch}/int8").path.read_bytes()
        rows.append({"weights": SHIPPED_ROW, "activations": "int8", **measured(
            keras_probs, {name: tflite_probabilities(shipped, batch)
                          for name, batch in images.items()})})
    for weight_bits, activation_bits in PRECISIONS:
        simulation = QuantSimulation(model, weight_bits, activation_bits)
        simulation.calibrate(data["val"])
        probs = simulated_probabilities(simulation, images)
        rows.append({"weights": bits_text(weight_bits),
                     "activations": bits_text(activation_bits), **measured(keras_probs, probs)})
        click.echo(f"{rows[-1]['weights']} weights, {rows[-1]['activations']} activations: "
                   f"non-test agreement {rows[-1]['non_test']['agreement']:.4f}, test "
                   f"{rows[-1]['test']['agreement']:.3f}", err=True)
    results = {"model": model_label(arch, source),
               "images": {name: len(batch) for name, batch in images.items()},
               "rows": rows,
               "margins": {name: margin_counts(probs) for name, probs in keras_probs.items()}}
    write_reports(results, out, f"int8_precision-{arch}", write_markdown)


if __name__ == "__main__":
    main()
