"""`python -m benchmarks.int8_qat`: does quantization-aware distillation buy int8 agreement?

TensorFlow Model Optimization's QAT does not support Keras 3, so this is a small hand-built
one: the backbone's convolutions with their BatchNorms folded (as the TFLite converter folds
them) become trainable variables, and a forward pass simulates the int8 model (per-channel
symmetric int8 weights, per-tensor int8 activations with min/max ranges from the training
images; the converter calibrates on validation images). The simulated int8 network is trained
to reproduce the float model's logits on augmented BUSI + BUS-BRA *training* images
(distillation; labels are not used). After every epoch the fine-tuned weights are converted by
`busi-convert`'s int8 converter with calibration min / max ranges and compared with the
original Keras model on validation and test.
Writes benchmarks/reports/int8_qat-<arch>.{json,md}; ~3 minutes an epoch on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import keras
import numpy as np
import tensorflow as tf

from benchmarks.int8_study import (
    _conv_bn_pairs,
    distillation_images,
    flipped_images,
    flipped_text,
    folding_scale,
    margin_counts,
    margins_text,
    model_label,
    study_inputs,
    study_options,
    tflite_probabilities,
    write_reports,
)
from benchmarks.metrics import agreement
from convert.tflite import convert_model
from edge_infer.datasets import resolve_busi_dir
from train.data import dataset

CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
BATCH_SIZE = 16


def _backbone(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def fake_quant_weights(kernel: tf.Tensor, depthwise: bool, bits: int = 8) -> tf.Tensor:
    """TFLite's per-channel symmetric weights: scale max|w| / 127 per output channel for int8
    (max|w| / (2^(bits-1) - 1) for other widths)."""
    if depthwise:  # (kh, kw, channels, 1): the channel axis is 2
        return fake_quant_weights(kernel[..., 0], False, bits)[..., None]
    bound = tf.reduce_max(tf.abs(kernel), axis=tf.range(tf.rank(kernel) - 1))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        kernel, -bound, bound, num_bits=bits, narrow_range=True)


def _on_fixed_grid(probs: tf.Tensor, bits: int) -> tf.Tensor:
    """A [0, 1) output on TFLite's fixed grid of 1 / 2^bits steps (LOGISTIC, SOFTMAX)."""
    return tf.quantization.fake_quant_with_min_max_vars(probs, 0.0, 1 - 2.0 ** -bits,
                                                        num_bits=bits)


def _activation(function, tensor: tf.Tensor, bits: int | None) -> tf.Tensor:
    """TFLite runs sigmoid as LOGISTIC, whose output has fixed 1 / 2^bits steps (int8: 1/256),
    and swish as LOGISTIC then MUL; bits None runs it in float."""
    if function is keras.activations.sigmoid:
        return _sigmoid(tensor, bits)
    if function is keras.activations.silu:
        return tensor * _sigmoid(tensor, bits)
    return function(tensor)


def _ends_in_sigmoid(layer: keras.layers.Layer) -> bool:
    return getattr(layer, "activation", None) is keras.activations.sigmoid


def _sigmoid(tensor: tf.Tensor, bits: int | None) -> tf.Tensor:
    result = tf.sigmoid(tensor)
    return result if bits is None else _on_fixed_grid(result, bits)


class QuantSimulation:
    """A classifier (backbone -> GAP -> Dense) with BN-folded weights as variables, run in
    float, as a simulated integer model (mode "int8"), or recording each quantized tensor's
    min / max.

    The simulated integer model has `weight_bits`-bit weights and `activation_bits`-bit
    activations (8 and 8, the default: TFLite's int8); None keeps that side in float.
    """

    def __init__(self, model: keras.Model, weight_bits: int | None = 8,
                 activation_bits: int | None = 8):
        self.weight_bits, self.activation_bits = weight_bits, activation_bits
        self.backbone = _backbone(model)
        self.dense = model.layers[-1]
        self.norm_of = {conv.name: norm for conv, norm in _conv_bn_pairs(self.backbone)}
        self.kernels, self.biases = {}, {}
        for conv in (layer for layer in self.backbone.layers if isinstance(layer, CONV_LAYERS)):
            kernel, bias = self._folded(conv, self.norm_of[conv.name])
            self.kernels[conv.name] = tf.Variable(kernel, name=f"{conv.name}_kernel")
            self.biases[conv.name] = tf.Variable(bias, name=f"{conv.name}_bias")
        self.dense_kernel = tf.Variable(np.asarray(self.dense.kernel), name="dense_kernel")
        self.dense_bias = tf.Variable(np.asarray(self.dense.bias), name="dense_bias")
        self.quantized = self._quantized_outputs() + ["avg_pool", "logits"]
        self.low = {name: tf.Variable(0.0, trainable=False) for name in self.quantized}
        self.high = {name: tf.Variable(0.0, trainable=False) for name in self.quantized}

    @staticmethod
    def _folded(conv: keras.layers.Layer, norm: keras.layers.Layer | None):
        kernel = np.asarray(conv.kernel, np.float64)
        if norm is None:
            bias = np.asarray(conv.bias) if conv.use_bias else np.zeros(kernel.shape[-1])
            return kernel.astype(np.float32), bias.astype(np.float32)
        scale = folding_scale(norm)
        shape = [1, 1, -1, 1] if isinstance(conv, keras.layers.DepthwiseConv2D) else [1, 1, 1, -1]
        bias = np.asarray(norm.beta, np.float64) - np.asarray(norm.moving_mean, np.float64) * scale
        return (kernel * scale.reshape(shape)).astype(np.float32), bias.astype(np.float32)

    def _quantized_outputs(self) -> list[str]:
        """Layers whose output is an int8 tensor with a calibrated range in TFLite: all but a
        convolution followed by its BatchNorm and a BatchNorm followed by a ReLU (the converter
        fuses those), and a sigmoid convolution's (LOGISTIC's fixed 1/256 grid is its output)."""
        names = []
        layers = self.backbone.layers
        for layer, after in zip(layers, [*layers[1:], None]):
            fused = ((isinstance(layer, CONV_LAYERS) and self.norm_of[layer.name] is not None)
                     or (isinstance(layer, keras.layers.BatchNormalization)
                         and isinstance(after, keras.layers.ReLU)
                         and after.input is layer.output))
            if isinstance(layer, CONV_LAYERS) and layer.activation is not keras.activations.linear:
                names.append(f"{layer.name}_linear")
            if not (fused or isinstance(layer, keras.layers.InputLayer) or _ends_in_sigmoid(layer)):
                names.append(layer.name)
        return names

    def trainable_variables(self) -> list[tf.Variable]:
        return [*self.kernels.values(), *self.biases.values(), self.dense_kernel, self.dense_bias]

    def logits(self, images: tf.Tensor, mode: str = "float") -> tuple[tf.Tensor, dict]:
        """Logits, and {tensor: (min, max)} when mode is "record"; mode "int8" simulates the
        integer model (at this simulation's bits) with the ranges of the last `calibrate`."""
        ranges = {}
        bits = self.activation_bits if mode == "int8" else None

        def output(name: str, tensor: tf.Tensor) -> tf.Tensor:
            if mode == "record":
                ranges[name] = (tf.reduce_min(tensor), tf.reduce_max(tensor))
            if bits is not None:
                tensor = tf.quantization.fake_quant_with_min_max_vars(
                    tensor, tf.minimum(self.low[name], 0.0), tf.maximum(self.high[name], 0.0),
                    num_bits=bits)
            return tensor

        def replacement(layer: keras.layers.Layer):
            if isinstance(layer, CONV_LAYERS):
                return lambda tensor, **_: self._conv(layer, tensor, mode, output, bits)
            quantized = layer.name in self.quantized
            if isinstance(layer, keras.layers.Activation):
                return lambda tensor, **_: output(
                    layer.name, _activation(layer.activation, tensor, bits))
            if isinstance(layer, keras.layers.BatchNormalization):  # folded into its conv
                return lambda tensor, **_: output(layer.name, tensor) if quantized else tensor

            def run(*args, **kwargs):
                kwargs.pop("mask", None)
                result = layer(*args, **kwargs)
                return output(layer.name, result) if quantized else result
            return run

        features = self.backbone._run_through_graph(images, operation_fn=replacement)
        pooled = output("avg_pool", tf.reduce_mean(features, axis=[1, 2]))
        kernel = self.dense_kernel
        if mode == "int8" and self.weight_bits is not None:
            kernel = fake_quant_weights(kernel, False, self.weight_bits)
        return output("logits", pooled @ kernel + self.dense_bias), ranges

    def probabilities(self, images: tf.Tensor, mode: str = "float") -> tf.Tensor:
        """Softmax of `logits`; in int8 mode rounded to the integer output's 1 / 2^bits steps
        (uint8: 1/256)."""
        probs = tf.nn.softmax(self.logits(images, mode)[0])
        if mode == "int8" and self.activation_bits is not None:
            probs = _on_fixed_grid(probs, self.activation_bits)
        return probs

    def int8_kernel(self, name: str, depthwise: bool) -> tf.Tensor:
        """The kernel as the integer model holds it: rounded to the nearest weight_bits-bit
        step (int8 by default; the float kernel when weight_bits is None)."""
        if self.weight_bits is None:
            return self.kernels[name]
        return fake_quant_weights(self.kernels[name], depthwise, self.weight_bits)

    def _conv(self, conv: keras.layers.Layer, tensor: tf.Tensor, mode: str,
              output: Callable[[str, tf.Tensor], tf.Tensor], bits: int | None) -> tf.Tensor:
        depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
        if mode == "int8":
            kernel = self.int8_kernel(conv.name, depthwise)
        else:
            kernel = self.kernels[conv.name]
        stride, padding = conv.strides[0], conv.padding.upper()
        if depthwise:
            result = tf.nn.depthwise_conv2d(tensor, kernel, [1, stride, stride, 1], padding)
        else:
            result = tf.nn.conv2d(tensor, kernel, stride, padding)
        result = result + self.biases[conv.name]
        if conv.activation is not keras.activations.linear:
            result = _activation(conv.activation, output(f"{conv.name}_linear", result), bits)
        if self.norm_of[conv.name] is not None or _ends_in_sigmoid(conv):
            return result
        return output(conv.name, result)

    def calibrate(self, images: np.ndarray) -> None:
        """Set each quantized tensor's range to its float min / max over `images`, as the
        TFLite converter calibrates on its representative set."""
        record = tf.function(lambda batch: self.logits(batch, "record")[1])
        low = dict.fromkeys(self.quantized, np.inf)
        high = dict.fromkeys(self.quantized, -np.inf)
        for start in range(0, len(images), BATCH_SIZE):
            for name, (lo, hi) in record(tf.constant(images[start:start + BATCH_SIZE],
                                                     tf.float32)).items():
                low[name], high[name] = min(low[name], float(lo)), max(high[name], float(hi))
        for name in self.quantized:
            self.low[name].assign(low[name])
            self.high[name].assign(high[name])

    def write_to(self, model: keras.Model) -> None:
        """Put the (fine-tuned) folded weights into a copy of the source model: each BatchNorm
        becomes the identity plus the folded bias, so the converter folds back exactly these."""
        backbone = _backbone(model)
        for conv in (layer for layer in backbone.layers if isinstance(layer, CONV_LAYERS)):
            conv.kernel.assign(self.kernels[conv.name])
            norm = self.norm_of[conv.name]
            if norm is None:
                if conv.use_bias:
                    conv.bias.assign(self.biases[conv.name])
                continue
            norm = backbone.get_layer(norm.name)
            channels = norm.gamma.shape
            norm.gamma.assign(np.ones(channels, np.float32))
            norm.beta.assign(self.biases[conv.name])
            norm.moving_mean.assign(np.zeros(channels, np.float32))
            norm.moving_variance.assign(np.full(channels, 1 - norm.epsilon, np.float32))
        model.layers[-1].kernel.assign(self.dense_kernel)
        model.layers[-1].bias.assign(self.dense_bias)


def centred(logits: tf.Tensor) -> tf.Tensor:
    return logits - tf.reduce_mean(logits, axis=1, keepdims=True)


def distillation_step(student: QuantSimulation, teacher: QuantSimulation,
                      optimizer: keras.optimizers.Optimizer) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled step: mean squared error between the simulated int8 logits and the float
    teacher's (both centred: softmax ignores a shared offset)."""
    variables = student.trainable_variables()

    @tf.function
    def step(images: tf.Tensor) -> tf.Tensor:
        target = centred(teacher.logits(images)[0])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(centred(student.logits(images, "int8")[0]) - target))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss
    return step


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# Quantization-aware distillation: {results['model']}", "",
             f"Distilled on {results['distillation_images']} augmented training images "
             f"(BUSI + BUS-BRA train, no labels), Adam {results['learning_rate']:g}, batch "
             f"{BATCH_SIZE}; the simulation's int8 ranges come from the (unaugmented) training "
             "images, the converter's from the BUSI validation images as in `busi-convert`. "
             "Each row: the converter's full int8 of the weights after that epoch, against the "
             "ORIGINAL Keras model.", "",
             "| epoch | train loss (simulated) | test mean abs Δp: simulated int8 vs Keras "
             "(vs TFLite int8) "
             "| TFLite int8 val agreement | test agreement | test mean abs Δp "
             "| test images flipped (Keras top-2 margin) |",
             "|---|---|---|---|---|---|---|"]
    source = results["source_int8"]
    lines.append(f"| int8 of the source model (calibration min / max) | — | — | "
                 f"{source['val']['agreement']:.3f} | {source['test']['agreement']:.3f} | "
                 f"{source['test']['mean_abs_dprob']:.4f} | "
                 + flipped_text(source["test_flipped"]) + " |")
    for row in results["epochs"]:
        flipped = flipped_text(row["test_flipped"])
        loss = "—" if np.isnan(row["train_loss"]) else f"{row['train_loss']:.4f}"
        lines.append(f"| {row['epoch']} | {loss} | "
                     f"{row['simulated_test']['mean_abs_dprob']:.4f} "
                     f"({row['simulated_vs_tflite_test']['mean_abs_dprob']:.4f}) | "
                     f"{row['val']['agreement']:.3f} | {row['test']['agreement']:.3f} | "
                     f"{row['test']['mean_abs_dprob']:.4f} | {flipped} |")
    margins = margins_text(results["test_margins"])
    lines += ["", "Epoch 0 is the source model before distillation, written with its BatchNorms "
              "folded (float probabilities within 2e-6 of the original), which the converter "
              f"rounds differently. Test images the Keras model barely decides: {margins}.", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@study_options("int8_qat")
@click.option("--epochs", default=3, show_default=True)
@click.option("--learning-rate", default=4e-6, show_default=True)
def main(arch: str, epochs: int, learning_rate: float, busi_dir: str | None,
         out: Path) -> None:
    source, model, data, keras_probs = study_inputs(arch, busi_dir)
    train_images = distillation_images(resolve_busi_dir(busi_dir))
    baseline = convert_model(model, "int8", data["val"], int8_ranges="minmax")
    source_row = {split: agreement(keras_probs[split], tflite_probabilities(baseline, images))
                  for split, images in data.items()}
    student, teacher = QuantSimulation(model), QuantSimulation(model)
    step = distillation_step(student, teacher, keras.optimizers.Adam(learning_rate))
    simulate = tf.function(lambda batch: student.probabilities(batch, "int8"))
    rows, loss = [], float("nan")
    for epoch in range(epochs + 1):
        if epoch:
            batches = dataset(train_images, np.zeros(len(train_images), np.int64), BATCH_SIZE,
                              augment=True, seed=epoch, site_levers=True)
            loss = float(np.mean([float(step(images)) for images, _ in batches]))
        student.calibrate(train_images)  # training ranges: validation stays held out
        copy = keras.models.load_model(source.path)
        student.write_to(copy)
        int8 = convert_model(copy, "int8", data["val"], int8_ranges="minmax")
        probs = {split: tflite_probabilities(int8, images) for split, images in data.items()}
        simulated = np.concatenate([simulate(tf.constant(data["test"][i:i + 32], tf.float32))
                                    for i in range(0, len(data["test"]), 32)])
        rows.append({"epoch": epoch, "train_loss": loss,
                     "simulated_test": agreement(keras_probs["test"], simulated),
                     "simulated_vs_tflite_test": agreement(probs["test"], simulated),
                     **{split: agreement(keras_probs[split], probs[split]) for split in data},
                     "test_flipped": flipped_images(keras_probs["test"], probs["test"])})
        click.echo(f"epoch {epoch}: loss {loss:.4f}, TFLite int8 test agreement "
                   f"{rows[-1]['test']['agreement']:.3f}", err=True)
    results = {"model": model_label(arch, source),
               "learning_rate": learning_rate, "distillation_images": len(train_images),
               "source_int8": source_row | {"test_flipped": flipped_images(
                   keras_probs["test"], tflite_probabilities(baseline, data["test"]))},
               "epochs": rows, "test_margins": margin_counts(keras_probs["test"])}
    write_reports(results, out, f"int8_qat-{arch}", write_markdown)


if __name__ == "__main__":
    main()
