"""`python -m benchmarks.int8_rounding`: does learned weight rounding buy int8 agreement?

AdaRound (Nagel et al., 2020) chooses, for each weight, whether it rounds down or up to its int8
step, instead of rounding to the nearest. Here the choice is learned end to end: the simulated
int8 network of `benchmarks.int8_qat` (BN-folded weights, per-channel int8 kernels, int8
activations) holds each kernel as step * (floor(w / step) + h), h a rectified sigmoid in [0, 1]
per weight, and h is trained so the simulated logits reproduce the float model's on augmented
BUSI + BUS-BRA *training* images (no labels), with AdaRound's regulariser pushing every h to
0 or 1 (the dense head keeps nearest rounding). Weights whose nearest level is +-127, among them
each channel's largest, keep that level, so the int8 step the converter derives from the rounded
kernel is the same step. After every epoch the hard-rounded weights go through `busi-convert`'s
int8 conversion (its default ranges, on the validation images) and are compared with the
original Keras model on every non-test image, in two parts: held out (BUSI + BUS-BRA
validation, which neither the Keras model nor the rounding saw) and trained on (BUSI + BUS-BRA
train), and on the BUSI test split.
Writes benchmarks/reports/int8_rounding-<arch>.{json,md}; ~10 minutes for 4 epochs on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import keras
import numpy as np
import tensorflow as tf

from benchmarks.int8_qat import (
    BATCH_SIZE,
    QuantSimulation,
    centred,
)
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
from convert.int8_choices import DEFAULT_INT8_RANGES
from convert.tflite import convert_model
from edge_infer.datasets import resolve_busi_dir
from train.data import dataset

ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch
WARMUP = 0.2  # share of the steps before the regulariser starts
BETA_START, BETA_END = 20.0, 2.0


def _rectified_sigmoid(rounding: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.sigmoid(rounding) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


class LearnedRounding(QuantSimulation):
    """The int8 simulation with a learned up / down rounding per kernel weight (int8 weights
    only: its levels run to +-127)."""

    def __init__(self, model: keras.Model):
        super().__init__(model, weight_bits=8)
        self.steps: dict[str, tf.Tensor] = {}
        self.base_levels: dict[str, tf.Tensor] = {}
        self.free: dict[str, tf.Tensor] = {}
        self.rounding: dict[str, tf.Variable] = {}
        self.free_count = 0.0
        for name, variable in self.kernels.items():
            kernel = variable.numpy().astype(np.float64)
            depthwise = isinstance(self.backbone.get_layer(name), keras.layers.DepthwiseConv2D)
            channel_axis = 2 if depthwise else 3
            step = np.abs(kernel).max(axis=tuple(a for a in range(4) if a != channel_axis),
                                      keepdims=True) / 127
            scaled = kernel / np.where(step == 0, 1.0, step)
            # weights at level +-127 (each channel's largest among them: the step depends on
            # it) and all-zero channels keep their nearest level
            free = (np.abs(np.round(scaled)) < 127) & (step != 0)
            self.steps[name] = tf.constant(np.where(step == 0, 1.0, step), tf.float32)
            self.base_levels[name] = tf.constant(
                np.where(free, np.floor(scaled), np.round(scaled)), tf.float32)
            self.free[name] = tf.constant(free, tf.float32)
            self.free_count += float(free.sum())
            share = np.clip((scaled - np.floor(scaled) - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
            self.rounding[name] = tf.Variable(np.log(share / (1 - share)).astype(np.float32),
                                              name=f"{name}_rounding")

    def trainable_variables(self) -> list[tf.Variable]:
        return list(self.rounding.values())

    def _up(self, name: str) -> tf.Tensor:
        """h of the free weights; 0 for the weights whose level is fixed."""
        return self.free[name] * _rectified_sigmoid(self.rounding[name])

    def int8_kernel(self, name: str, depthwise: bool) -> tf.Tensor:
        levels = tf.clip_by_value(self.base_levels[name] + self._up(name), -127.0, 127.0)
        return self.steps[name] * levels

    def regulariser(self, beta: tf.Tensor) -> tf.Tensor:
        """AdaRound's 1 - |2h - 1|^beta, averaged over the free weights: 0 when all h are 0 / 1."""
        total = sum(tf.reduce_sum(self.free[name] * (1 - tf.abs(2 * _rectified_sigmoid(v) - 1)
                                                     ** beta))
                    for name, v in self.rounding.items())
        return total / self.free_count

    def undecided(self) -> float:
        """Share of the free weights whose h is not yet 0 or 1 (within 0.01)."""
        open_weights = sum(float(tf.reduce_sum(self.free[name] * tf.cast(
            tf.abs(_rectified_sigmoid(v) - 0.5) < 0.49, tf.float32)))
            for name, v in self.rounding.items())
        return open_weights / self.free_count

    def harden(self) -> None:
        """Write the rounded kernels (h > 0.5 rounds up) into the kernel variables."""
        for name in self.kernels:
            levels = self.base_levels[name] + tf.round(self._up(name))
            self.kernels[name].assign(self.steps[name] * tf.clip_by_value(levels, -127.0, 127.0))


def rounding_step(student: LearnedRounding, teacher: QuantSimulation,
                  optimizer: keras.optimizers.Optimizer,
                  weight: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A compiled step: the centred-logit error of the simulated int8 against the float teacher,
    plus `weight` times the rounding regulariser at the given beta (0 weight while warming up)."""
    variables = student.trainable_variables()

    @tf.function
    def step(images: tf.Tensor, beta: tf.Tensor, on: tf.Tensor) -> tf.Tensor:
        target = centred(teacher.logits(images)[0])
        with tf.GradientTape() as tape:
            error = tf.reduce_mean(tf.square(centred(student.logits(images, "int8")[0])
                                             - target))
            loss = error + on * weight * student.regulariser(beta)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return error
    return step


def _beta(progress: float) -> float:
    """AdaRound's annealing: beta falls from 20 to 2 over the steps after the warm-up."""
    after = max(0.0, (progress - WARMUP) / (1 - WARMUP))
    return BETA_END + (BETA_START - BETA_END) * (1 - after)


def write_markdown(results: dict, path: Path) -> None:
    counts = results["non_test_images"]
    lines = [f"# Learned weight rounding (AdaRound-style): {results['model']}", "",
             f"Rounding learned on the {counts['trained_on']} trained-on images, augmented "
             f"(BUSI + BUS-BRA train, no labels), Adam {results['learning_rate']:g}, batch "
             f"{BATCH_SIZE}, {results['epochs_trained']} epochs, regulariser weight "
             f"{results['regulariser_weight']:g}. Each row: the hard-rounded weights after that "
             f"epoch through busi-convert's int8 ({results['int8_ranges']} ranges), against the "
             f"ORIGINAL Keras model. Held out: the {counts['held_out']} BUSI + BUS-BRA "
             f"validation images; non-test: those and the {counts['trained_on']} trained-on "
             "images (the Keras model was trained on them too).", "",
             "| epoch | train error (simulated) | weights undecided | held-out agreement "
             "| non-test agreement | non-test mean abs Δp | test agreement | test mean abs Δp "
             "| test max abs Δp | test images flipped (Keras top-2 margin) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in [results["source_int8"], *results["epochs"]]:
        error = "—" if np.isnan(row["train_error"]) else f"{row['train_error']:.4f}"
        lines.append(f"| {row['epoch']} | {error} | {row['undecided']} | "
                     f"{row['held_out']['agreement']:.4f} | "
                     f"{row['non_test']['agreement']:.4f} | "
                     f"{row['non_test']['mean_abs_dprob']:.4f} | "
                     f"{row['test']['agreement']:.3f} | {row['test']['mean_abs_dprob']:.4f} | "
                     f"{row['test']['max_abs_dprob']:.3f} | {flipped_text(row['test_flipped'])} |")
    source = results["source_int8"]
    low, high = source["non_test"]["agreement_interval"]
    held_low, held_high = source["held_out"]["agreement_interval"]
    lines += ["", "Row 'source' is busi-convert's int8 of the shipped model (95 % bootstrap "
              f"interval of its agreement: non-test {low:.3f}–{high:.3f}, held out "
              f"{held_low:.3f}–{held_high:.3f}); epoch 0 is nearest rounding written with "
              "BatchNorms folded (what the learned rounding starts from). Test images the Keras "
              f"model barely decides: {margins_text(results['test_margins'])}.", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@study_options("int8_rounding")
@click.option("--epochs", default=4, show_default=True)
@click.option("--learning-rate", default=1e-2, show_default=True)
@click.option("--regulariser-weight", default=0.01, show_default=True)
def main(arch: str, epochs: int, learning_rate: float, regulariser_weight: float,
         busi_dir: str | None, out: Path) -> None:
    source, model, data, keras_probs = study_inputs(arch, busi_dir)
    parts = non_test_images(resolve_busi_dir(busi_dir), data["val"])
    keras_parts = {part: model.predict(images.astype(np.float32), verbose=0)
                   for part, images in parts.items()}
    train_images = parts["trained_on"]

    def measured(int8: bytes, epoch: int | str, error: float, undecided: str) -> dict:
        probs = {split: tflite_probabilities(int8, images) for split, images in data.items()}
        probs |= {part: tflite_probabilities(int8, images) for part, images in parts.items()}
        keras_all = {**keras_probs, **keras_parts}
        probs["non_test"] = np.concatenate([probs[part] for part in parts])
        keras_all["non_test"] = np.concatenate([keras_parts[part] for part in parts])
        return {"epoch": epoch, "train_error": error, "undecided": undecided,
                **{name: agreement(keras_all[name], probs[name]) | {
                    "agreement_interval": agreement_interval(keras_all[name], probs[name])}
                   for name in probs},
                "test_flipped": flipped_images(keras_probs["test"], probs["test"])}

    source_row = measured(convert_model(model, "int8", data["val"]), "source", float("nan"), "—")
    student, teacher = LearnedRounding(model), QuantSimulation(model)
    student.calibrate(train_images)  # training ranges: validation stays held out
    step = rounding_step(student, teacher, keras.optimizers.Adam(learning_rate),
                         regulariser_weight)
    batches_per_epoch = -(-len(train_images) // BATCH_SIZE)
    rows, error, done = [], float("nan"), 0
    for epoch in range(epochs + 1):
        if epoch:
            errors = []
            for images, _ in dataset(train_images, np.zeros(len(train_images), np.int64),
                                     BATCH_SIZE, augment=True, seed=epoch, site_levers=True):
                progress = done / (epochs * batches_per_epoch)
                errors.append(float(step(images, tf.constant(_beta(progress)),
                                         tf.constant(float(progress >= WARMUP)))))
                done += 1
            error = float(np.mean(errors))
        undecided = f"{student.undecided():.1%}"
        student.harden()  # its float kernels are not used again: ranges were set above
        copy = keras.models.load_model(source.path)
        student.write_to(copy)
        rows.append(measured(convert_model(copy, "int8", data["val"]), epoch, error, undecided))
        click.echo(f"epoch {epoch}: error {error:.4f}, undecided {undecided}, non-test "
                   f"agreement {rows[-1]['non_test']['agreement']:.4f}, test agreement "
                   f"{rows[-1]['test']['agreement']:.3f}", err=True)
    results = {"model": model_label(arch, source), "learning_rate": learning_rate,
               "regulariser_weight": regulariser_weight, "int8_ranges": DEFAULT_INT8_RANGES,
               "epochs_trained": epochs,
               "non_test_images": {part: len(images) for part, images in parts.items()},
               "source_int8": source_row,
               "epochs": rows, "test_margins": margin_counts(keras_probs["test"])}
    write_reports(results, out, f"int8_rounding-{arch}", write_markdown)


if __name__ == "__main__":
    main()
