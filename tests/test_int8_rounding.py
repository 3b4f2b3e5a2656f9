"""benchmarks.int8_rounding: learned up / down rounding of the int8 weights (its numbers:
benchmarks/reports/int8_rounding-<arch>.md)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils
from tiny_models import tiny_classifier

from benchmarks.int8_qat import QuantSimulation, fake_quant_weights
from benchmarks.int8_rounding import LearnedRounding, rounding_step
from convert.tflite import convert_model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (32, 16, 16, 3)).astype(np.uint8)


def _is_depthwise(simulation: QuantSimulation, name: str) -> bool:
    return isinstance(simulation.backbone.get_layer(name), keras.layers.DepthwiseConv2D)


def _tflite_int8_kernels(model_bytes: bytes) -> list[np.ndarray]:
    """The 4-D int8 weight tensors stored in a TFLite model (out, kh, kw, in) / (1, kh, kw, ch)."""
    model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
    int8 = flatbuffer_utils.schema_fb.TensorType.INT8
    return [np.frombuffer(bytes(model.buffers[t.buffer].data), np.int8).reshape(t.shape)
            for t in model.subgraphs[0].tensors
            if t.type == int8 and len(t.shape) == 4 and model.buffers[t.buffer].data is not None]


def _trained(images: np.ndarray, steps: int, weight: float) -> LearnedRounding:
    model = tiny_classifier()
    student, teacher = LearnedRounding(model), QuantSimulation(model)
    student.calibrate(images)
    step = rounding_step(student, teacher, keras.optimizers.Adam(0.1), weight=weight)
    batch = tf.constant(images, tf.float32)
    for _ in range(steps):
        step(batch, tf.constant(2.0), tf.constant(1.0))
    return student


def test_hardening_before_training_is_nearest_rounding() -> None:
    model = tiny_classifier()
    rounding, nearest = LearnedRounding(model), QuantSimulation(model)
    rounding.harden()
    for name, kernel in rounding.kernels.items():
        expected = fake_quant_weights(nearest.kernels[name], _is_depthwise(nearest, name))
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


def test_all_zero_channels_stay_zero() -> None:
    model = tiny_classifier()
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    kernel = np.asarray(backbone.get_layer("project").kernel).copy()
    kernel[..., 0] = 0.0
    backbone.get_layer("project").kernel.assign(kernel)
    rounding = LearnedRounding(model)
    for variable in rounding.rounding.values():
        variable.assign(np.full(variable.shape, 10.0, np.float32))
    rounding.harden()
    assert not np.any(rounding.kernels["project"].numpy()[..., 0])


def test_the_converter_stores_exactly_the_learned_levels(images) -> None:
    """After training, some weights round the other way than nearest; written back into the
    Keras model and converted by busi-convert's int8 converter, every kernel holds exactly the
    learned int8 levels (the converter derives the same per-channel step)."""
    student = _trained(images, steps=40, weight=0.1)
    student.harden()
    nearest = QuantSimulation(tiny_classifier())
    changed = 0
    for name, kernel in student.kernels.items():
        rounded = fake_quant_weights(nearest.kernels[name], _is_depthwise(nearest, name))
        changed += int((np.abs(kernel.numpy() - rounded.numpy()) > 1e-9).sum())
    assert changed > 0
    copy = tiny_classifier(seed=1)
    student.write_to(copy)
    stored = _tflite_int8_kernels(convert_model(copy, "int8", images, feature_map=False,
                                                int8_ranges="minmax"))
    assert len(stored) == len(student.kernels)
    for name, kernel in student.kernels.items():
        levels = np.round(kernel.numpy() / student.steps[name].numpy()).astype(np.int8)
        expected = levels.transpose(3, 0, 1, 2)  # TFLite's (out, kh, kw, in) / (1, kh, kw, ch)
        assert any(t.shape == expected.shape and np.array_equal(t, expected) for t in stored), name


def test_the_regulariser_drives_rounding_to_zero_or_one(images) -> None:
    untrained = LearnedRounding(tiny_classifier())
    assert untrained.undecided() > 0.9  # starts at each weight's fractional part
    assert float(untrained.regulariser(tf.constant(2.0))) > 0.1
    student = _trained(images, steps=60, weight=1.0)
    assert student.undecided() < 0.2
    for variable in student.rounding.values():
        variable.assign(np.where(variable.numpy() > 0, 10.0, -10.0))
    assert student.undecided() == 0.0
    assert float(student.regulariser(tf.constant(2.0))) == pytest.approx(0.0, abs=1e-6)
