"""benchmarks.int8_qat: the simulated int8 network that quantization-aware distillation
trains (its numbers: benchmarks/reports/int8_qat-<arch>.md)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks.int8_qat import QuantSimulation, distillation_step
from benchmarks.int8_study import tflite_probabilities
from convert.tflite import convert_model


def tiny_classifier(seed: int = 0) -> keras.Model:
    """Outer model -> nested backbone with the Lite0 block shapes (conv+BN+ReLU6, depthwise
    +BN+ReLU6, projection conv+BN, residual Add, a conv with its own bias) -> GAP -> Dense."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(image)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    block_input = keras.layers.ReLU(6, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(block_input)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6, name="dw_relu")(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Add(name="add")([x, block_input])
    x = keras.layers.Conv2D(4, 1, name="biased_conv")(x)
    backbone = keras.Model(image, x, name="backbone")
    rng = np.random.default_rng(seed)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.2, 3, n), rng.normal(0, 1, n),
                               rng.normal(0, 1, n), rng.uniform(0.01, 4, n)])
    outer_input = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(outer_input))
    return keras.Model(outer_input, keras.layers.Dense(3, activation="softmax")(pooled))


def tiny_se_classifier(seed: int = 0) -> keras.Model:
    """The EfficientNetB0 shapes: conv+BN+swish, a squeeze-and-excitation block (GAP, convs
    with swish and sigmoid, multiply), outer GAP -> Dense."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(image)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("swish", name="stem_activation")(x)
    squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    squeeze = keras.layers.Conv2D(2, 1, activation="swish", name="se_reduce")(squeeze)
    squeeze = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(squeeze)
    x = keras.layers.Multiply(name="se_excite")([x, squeeze])
    backbone = keras.Model(image, x, name="backbone")
    outer_input = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(outer_input))
    return keras.Model(outer_input, keras.layers.Dense(3, activation="softmax")(pooled))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (32, 16, 16, 3)).astype(np.uint8)


def softmax_of(simulation: QuantSimulation, images: np.ndarray, mode: str) -> np.ndarray:
    return simulation.probabilities(tf.constant(images, tf.float32), mode).numpy()


def test_quantized_tensors_are_the_ones_tflite_keeps_in_int8() -> None:
    assert QuantSimulation(tiny_classifier()).quantized == [
        "rescaling", "stem_relu", "dw_relu", "project_bn", "add", "biased_conv",
        "avg_pool", "logits"]
    assert QuantSimulation(tiny_se_classifier()).quantized == [
        "rescaling", "stem_bn", "stem_activation", "se_squeeze", "se_reduce_linear",
        "se_reduce", "se_expand_linear", "se_expand", "se_excite", "avg_pool", "logits"]


def test_float_mode_and_written_back_weights_reproduce_the_keras_model(images) -> None:
    model = tiny_classifier()
    expected = model.predict(images.astype(np.float32), verbose=0)
    simulation = QuantSimulation(model)
    np.testing.assert_allclose(softmax_of(simulation, images, "float"), expected, atol=1e-5)
    copy = tiny_classifier(seed=1)  # other weights: write_to must replace every one
    simulation.write_to(copy)
    np.testing.assert_allclose(copy.predict(images.astype(np.float32), verbose=0), expected,
                               atol=1e-5)


@pytest.mark.parametrize("build", [tiny_classifier, tiny_se_classifier])
def test_int8_mode_tracks_the_converted_int8_model(images, build) -> None:
    model = build()
    simulation = QuantSimulation(model)
    simulation.calibrate(images)
    tflite = tflite_probabilities(convert_model(model, "int8", images, feature_map=False),
                                  images)
    float_error = np.abs(softmax_of(simulation, images, "float") - tflite).mean()
    simulated_error = np.abs(softmax_of(simulation, images, "int8") - tflite).mean()
    assert float_error > 0.001  # the tiny model does lose something to int8
    assert simulated_error < float_error / 3


def test_distillation_moves_the_simulated_int8_student_towards_the_teacher(images) -> None:
    teacher = QuantSimulation(tiny_classifier(seed=0))
    student = QuantSimulation(tiny_classifier(seed=1))  # starts far from the teacher
    student.calibrate(images)
    teacher_kernel = np.asarray(teacher.kernels["stem_conv"]).copy()
    step = distillation_step(student, teacher, keras.optimizers.Adam(1e-2))
    batch = tf.constant(images, tf.float32)
    losses = [float(step(batch)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]  # gradients pass the fake-quant ops
    np.testing.assert_array_equal(np.asarray(teacher.kernels["stem_conv"]), teacher_kernel)
