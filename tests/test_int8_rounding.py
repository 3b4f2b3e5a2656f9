"""benchmarks.int8_rounding: learned up / down rounding of the int8 weights (its numbers:
benchmarks/reports/int8_rounding-<arch>.md)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import tiny_classifier

from benchmarks.int8_qat import QuantSimulation, _fake_quant_weights
from benchmarks.int8_rounding import LearnedRounding, rounding_step


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (32, 16, 16, 3)).astype(np.uint8)


def _is_depthwise(simulation: QuantSimulation, name: str) -> bool:
    return isinstance(simulation.backbone.get_layer(name), keras.layers.DepthwiseConv2D)


def test_hardening_before_training_is_nearest_rounding() -> None:
    model = tiny_classifier()
    rounding, nearest = LearnedRounding(model), QuantSimulation(model)
    rounding.harden()
    for name, kernel in rounding.kernels.items():
        expected = _fake_quant_weights(nearest.kernels[name], _is_depthwise(nearest, name))
        np.testing.assert_allclose(kernel.numpy(), expected.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("direction", [-10.0, 10.0], ids=["all-down", "all-up"])
def test_each_channel_keeps_its_largest_level_whatever_the_rounding(direction: float) -> None:
    """The converter derives a channel's step from its largest weight, so that weight keeps
    its nearest level (127) even when every other weight rounds one way."""
    rounding = LearnedRounding(tiny_classifier())
    for variable in rounding.rounding.values():
        variable.assign(np.full(variable.shape, direction, np.float32))
    rounding.harden()
    for name, kernel in rounding.kernels.items():
        levels = kernel.numpy() / rounding.steps[name].numpy()
        channel_axes = (0, 1, 3) if _is_depthwise(rounding, name) else (0, 1, 2)
        np.testing.assert_allclose(np.abs(levels).max(axis=channel_axes), 127, rtol=1e-5)


def test_learned_rounding_stays_on_the_int8_grid_the_converter_derives(images) -> None:
    """After training, some weights round the other way, yet every kernel written back is on
    the per-channel int8 grid that TFLite computes from it (each channel's largest weight kept),
    so the converter stores exactly the learned levels."""
    model = tiny_classifier()
    student, teacher = LearnedRounding(model), QuantSimulation(model)
    student.calibrate(images)
    step = rounding_step(student, teacher, keras.optimizers.Adam(0.1), weight=0.1)
    batch = tf.constant(images, tf.float32)
    for _ in range(40):
        step(batch, tf.constant(2.0), tf.constant(1.0))
    student.harden()
    nearest = QuantSimulation(model)
    changed = 0
    for name, kernel in student.kernels.items():
        depthwise = _is_depthwise(student, name)
        learned = kernel.numpy()
        np.testing.assert_allclose(_fake_quant_weights(kernel, depthwise).numpy(), learned,
                                   rtol=1e-6, atol=1e-9)
        levels = learned / student.steps[name].numpy()
        channel_axes = (0, 1, 3) if depthwise else (0, 1, 2)
        np.testing.assert_allclose(np.abs(levels).max(axis=channel_axes), 127, rtol=1e-5)
        rounded = _fake_quant_weights(nearest.kernels[name], depthwise).numpy()
        changed += int((np.abs(learned - rounded) > 1e-9).sum())
    assert changed > 0
    copy = tiny_classifier(seed=1)
    student.write_to(copy)
    written = QuantSimulation(copy)
    for name, kernel in written.kernels.items():
        np.testing.assert_allclose(kernel.numpy(), student.kernels[name].numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_the_regulariser_drives_rounding_to_zero_or_one(images) -> None:
    model = tiny_classifier()
    student, teacher = LearnedRounding(model), QuantSimulation(model)
    student.calibrate(images)
    assert student.undecided() > 0.9  # starts at each weight's fractional part
    assert float(student.regulariser(tf.constant(2.0))) > 0.1
    step = rounding_step(student, teacher, keras.optimizers.Adam(0.1), weight=1.0)
    batch = tf.constant(images, tf.float32)
    for _ in range(60):
        step(batch, tf.constant(2.0), tf.constant(1.0))
    assert student.undecided() < 0.2
    for variable in student.rounding.values():
        variable.assign(np.where(variable.numpy() > 0, 10.0, -10.0))
    assert student.undecided() == 0.0
    assert float(student.regulariser(tf.constant(2.0))) == pytest.approx(0.0, abs=1e-6)
