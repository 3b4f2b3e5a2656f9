"""convert.int8_ranges: refined activation ranges for the int8 converter (what they buy:
benchmarks/reports/int8_ranges-<arch>.md)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.lite.tools import flatbuffer_utils
from tiny_models import tiny_classifier

from benchmarks.int8_study import tflite_probabilities
from convert.int8_ranges import (
    RANGE_SCALES,
    activation_samples,
    mse_range,
    quantization_mse,
    quantized,
    recorded_ranges,
    with_exact_input_scaling,
    with_mse_ranges,
)
from convert.tflite import calibrated_model, convert_model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (24, 16, 16, 3)).astype(np.uint8)


@given(st.floats(0.1, 100), st.floats(0.1, 100))
@settings(max_examples=30, deadline=None)
def test_values_on_the_grid_quantize_exactly(low: float, high: float) -> None:
    step = (high + low) / 255
    values = (np.arange(256) - np.round(low / step)) * step
    assert quantization_mse(values, -low, high) < 1e-9 * step ** 2 + 1e-12


def test_mse_range_is_the_scaled_range_with_the_least_error() -> None:
    values = np.random.default_rng(0).standard_t(3, 5000)
    low, high = values.min(), values.max()
    new_low, new_high = mse_range(values, low, high)
    scale = new_high / high
    assert np.isclose(new_low, low * scale) and np.any(np.isclose(RANGE_SCALES, scale))
    errors = [quantization_mse(values, low * s, high * s) for s in RANGE_SCALES]
    assert quantization_mse(values, new_low, new_high) == min(errors)
    assert scale < 1  # heavy tails: the min..max range is not the best one


def test_recorded_ranges_reproduce_the_converters_int8(images) -> None:
    model = tiny_classifier()
    expected = tflite_probabilities(convert_model(model, "int8", images, int8_ranges="minmax"),
                                    images)
    got = tflite_probabilities(quantized(calibrated_model(model, images)), images)
    np.testing.assert_array_equal(got, expected)


def test_every_range_is_refitted_and_none_widens(images) -> None:
    model = tiny_classifier()
    calibrated = calibrated_model(model, images)
    recorded = recorded_ranges(flatbuffer_utils.convert_bytearray_to_object(calibrated))
    tuned, _ = with_mse_ranges(calibrated, images)
    refitted = recorded_ranges(flatbuffer_utils.convert_bytearray_to_object(tuned))
    samples = activation_samples(calibrated, list(recorded), images)
    assert refitted.keys() == recorded.keys()
    changed = 0
    for index, (low, high) in recorded.items():
        want = mse_range(samples[index], low, high)
        np.testing.assert_allclose(refitted[index], want, rtol=1e-6)
        assert low <= refitted[index][0] <= 0 <= refitted[index][1] <= high
        changed += refitted[index] != (low, high)
    assert changed > 0
    keras_probs = model.predict(images.astype(np.float32), verbose=0)
    assert np.abs(tflite_probabilities(quantized(tuned), images) - keras_probs).max() < 0.1


def test_exact_input_scaling_keeps_every_grey_level(images) -> None:
    model = tiny_classifier(lite0_stem=True)
    calibrated = calibrated_model(model, images)

    def rescaling_quantization(blob: bytes) -> dict[str, tuple]:
        details = Interpreter(model_content=quantized(blob)).get_tensor_details()
        return {d["name"].rsplit("/", 1)[-1]: d["quantization"] for d in details
                if "/rescaling" in d["name"] and d["name"].rsplit("/", 1)[-1] in ("mul", "add")}

    exact = rescaling_quantization(with_exact_input_scaling(calibrated, model))
    assert exact["mul"] == pytest.approx((1 / 128, -128))  # pixel p -> level p - 128
    assert exact["add"] == pytest.approx((1 / 128, -1))
    assert rescaling_quantization(calibrated)["mul"][0] > 1 / 128  # what calibration gives


def test_refined_conversion_is_the_three_steps_and_keeps_the_runtime_contract(images) -> None:
    model = tiny_classifier(lite0_stem=True)
    refined = convert_model(model, "int8", images, int8_ranges="refined")
    calibrated = calibrated_model(model, images)
    expected = quantized(with_exact_input_scaling(with_mse_ranges(calibrated, images)[0], model))
    np.testing.assert_array_equal(tflite_probabilities(refined, images),
                                  tflite_probabilities(expected, images))
    interpreter = Interpreter(model_content=refined)
    source = interpreter.get_input_details()[0]
    assert source["dtype"] == np.uint8 and source["quantization"] == (1.0, 0)
    assert {o["dtype"] for o in interpreter.get_output_details()} == {np.uint8}


def test_unknown_int8_ranges_are_refused(images) -> None:
    with pytest.raises(ValueError, match="int8 ranges"):
        convert_model(tiny_classifier(), "int8", images, int8_ranges="percentile")


def two_rescalings() -> keras.Model:
    """Input Rescaling, then a second one whose output is negative too (as keras.applications
    EfficientNetB0 with ImageNet weights has): only the first is the input scaling."""
    image = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(image)
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="rescaling_1")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem_conv")(x)
    backbone = keras.Model(image, x, name="backbone")
    outer_input = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(outer_input))
    return keras.Model(outer_input, keras.layers.Dense(3, activation="softmax")(pooled))


def test_exact_input_scaling_touches_only_the_rescaling_of_the_input(images) -> None:
    keras.utils.set_random_seed(0)
    model = two_rescalings()
    calibrated = calibrated_model(model, images)
    before = recorded_ranges(flatbuffer_utils.convert_bytearray_to_object(calibrated))
    after = recorded_ranges(flatbuffer_utils.convert_bytearray_to_object(
        with_exact_input_scaling(calibrated, model)))
    changed = {index: after[index] for index in before if after[index] != before[index]}
    assert list(changed.values()) == [pytest.approx((0.0, 1.0))]  # pixel / 255 only
    assert min(low for low, _ in after.values()) < -0.5  # the second rescaling kept its range


def test_exact_input_scaling_needs_a_rescaling_on_the_input(images) -> None:
    image = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    model = keras.Model(image, keras.layers.Dense(3, activation="softmax")(pooled))
    with pytest.raises(ValueError, match="Rescaling"):
        with_exact_input_scaling(calibrated_model(model, images, feature_map=False), model)


def test_refined_ranges_leave_the_feature_map_output_check_exact(images) -> None:
    """busi-convert compares the two-output model with a single-output one: refitting must
    treat the feature map the same in both."""
    model = tiny_classifier(seed=1, lite0_stem=True)
    two = convert_model(model, "int8", images, int8_ranges="refined")
    one = convert_model(model, "int8", images, feature_map=False, int8_ranges="refined")
    np.testing.assert_array_equal(tflite_probabilities(one, images),
                                  tflite_probabilities(two, images))
