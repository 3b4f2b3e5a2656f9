"""benchmarks.int8_qat: the simulated int8 network that quantization-aware distillation
trains (its numbers: benchmarks/reports/int8_qat-<arch>.md)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import tiny_classifier, tiny_se_classifier

from benchmarks.int8_qat import QuantSimulation, distillation_step
from benchmarks.int8_study import tflite_probabilities
from convert.tflite import convert_model


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
        "se_reduce", "se_expand_linear", "se_excite", "avg_pool", "logits"]


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
    """Ranges from half of the images; compared on the other half. (These small networks
    have no input rescaling TFLite keeps as a separate op; on Lite0 it does, and the
    simulation there tracks TFLite less closely: benchmarks/reports/int8_qat-*.md.)"""
    model = build()
    calibration, held_out = images[:16], images[16:]
    simulation = QuantSimulation(model)
    simulation.calibrate(calibration)
    tflite = tflite_probabilities(convert_model(model, "int8", calibration, feature_map=False,
                                              int8_ranges="minmax"),
                                  held_out)
    assert np.abs(softmax_of(simulation, held_out, "float") - tflite).mean() > 1e-4  # int8 differs
    np.testing.assert_allclose(softmax_of(simulation, held_out, "int8"), tflite, atol=1e-6)


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
