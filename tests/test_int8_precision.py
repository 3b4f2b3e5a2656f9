"""benchmarks.int8_precision: the simulated integer network at other bit widths (its numbers:
benchmarks/reports/int8_precision-<arch>.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import tiny_classifier, tiny_se_classifier

from benchmarks.int8_precision import PRECISIONS, SHIPPED_ROW, bits_text, measured
from benchmarks.int8_qat import QuantSimulation, _on_fixed_grid, fake_quant_weights
from benchmarks.int8_study import REPORTS


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (32, 16, 16, 3)).astype(np.uint8)


def _probs(simulation: QuantSimulation, images: np.ndarray, mode: str = "int8") -> np.ndarray:
    return simulation.probabilities(tf.constant(images, tf.float32), mode).numpy()


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv", "depthwise"])
@pytest.mark.parametrize("bits", [4, 8, 10])
def test_b_bit_weights_have_per_channel_steps_of_max_over_2_to_the_b_minus_1_minus_1(
        bits: int, depthwise: bool) -> None:
    shape = (3, 3, 6, 1) if depthwise else (3, 3, 4, 6)
    kernel = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    quantized = fake_quant_weights(tf.constant(kernel), depthwise, bits).numpy()
    per_channel = (0, 1, 3) if depthwise else (0, 1, 2)
    largest = 2 ** (bits - 1) - 1
    step = np.abs(kernel).max(axis=per_channel, keepdims=True) / largest
    levels = quantized / step
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    np.testing.assert_allclose(np.abs(levels).max(axis=per_channel), largest, rtol=1e-5)
    assert np.all(np.abs(quantized - kernel) <= step / 2 * 1.001)


@pytest.mark.parametrize("bits", [8, 12])
def test_sigmoid_and_output_probabilities_sit_on_a_grid_of_2_to_the_minus_bits(
        images, bits: int) -> None:
    """LOGISTIC and the softmax output have fixed 1 / 2^bits steps at `bits`-bit activations."""
    values = tf.constant(np.linspace(0.0, 0.999, 997), tf.float32)
    gridded = _on_fixed_grid(values, bits).numpy() * 2 ** bits
    np.testing.assert_allclose(gridded, np.round(gridded), atol=1e-3)
    simulation = QuantSimulation(tiny_se_classifier(), activation_bits=bits)
    simulation.calibrate(images)
    probs = _probs(simulation, images)
    np.testing.assert_allclose(probs * 2 ** bits, np.round(probs * 2 ** bits), atol=1e-3)
    if bits > 8:  # finer than the uint8 output's grid
        assert np.abs(probs * 256 - np.round(probs * 256)).max() > 0.01


@pytest.mark.parametrize("build", [tiny_classifier, tiny_se_classifier])
def test_float_on_both_sides_is_the_float_network(images, build) -> None:
    simulation = QuantSimulation(build(), weight_bits=None, activation_bits=None)
    simulation.calibrate(images)
    np.testing.assert_allclose(_probs(simulation, images), _probs(simulation, images, "float"),
                               atol=1e-6)


@pytest.mark.parametrize("build", [tiny_classifier, tiny_se_classifier])
def test_more_bits_on_either_side_come_closer_to_float(images, build) -> None:
    """The error shrinks as weights or activations get more bits, each side alone and both."""
    simulation = QuantSimulation(build())
    simulation.calibrate(images[:16])
    held_out = images[16:]
    reference = _probs(simulation, held_out, "float")

    def error(weight_bits: int | None, activation_bits: int | None) -> float:
        simulation.weight_bits, simulation.activation_bits = weight_bits, activation_bits
        return float(np.abs(_probs(simulation, held_out) - reference).mean())

    assert error(4, None) > error(8, None) > error(12, None) > 0
    assert error(None, 6) > error(None, 8) > error(None, 12) > 0
    assert error(8, 8) > error(12, 12)


def test_measured_counts_flips_and_their_keras_margins() -> None:
    keras_probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45 - 1e-3], [0.2, 0.2, 0.6]] * 4)
    probs = keras_probs.copy()
    probs[1] = [0.1, 0.44, 0.46]  # a near-tie flips
    probs[3] = [0.7, 0.2, 0.1]  # agrees, moved
    row = measured({"test": keras_probs, "non_test": keras_probs},
                   {"test": probs, "non_test": probs})
    assert row["non_test"]["flips"] == 1
    assert row["non_test"]["agreement"] == pytest.approx(11 / 12)
    low, high = row["non_test"]["agreement_interval"]
    assert low < 11 / 12 <= high
    assert [flip["index"] for flip in row["test_flipped"]] == [1]
    assert row["test_flipped"][0]["keras_margin"] == pytest.approx(1e-3)


@pytest.mark.parametrize("arch", ["efficientnet-lite0", "efficientnetb0"])
def test_report_has_a_shipped_row_exactly_when_an_int8_is_shipped(manifest, arch: str) -> None:
    """A report's 'shipped' row is the shipped int8 file: same test agreement and mean |dp|
    as the conversion check recorded in the manifest; without a shipped int8, no such row."""
    report = json.loads((REPORTS / f"int8_precision-{arch}.json").read_text())
    assert report["images"] == {"test": 114, "non_test": 1097}
    simulated = [(row["weights"], row["activations"]) for row in report["rows"]
                 if row["weights"] != SHIPPED_ROW]
    assert simulated == [(bits_text(w), bits_text(a)) for w, a in PRECISIONS]
    entry = manifest["models"].get(f"{arch}/int8")
    shipped = [row for row in report["rows"] if row["weights"] == SHIPPED_ROW]
    if entry is None:
        assert not shipped
        return
    recorded = entry["verification"]["test"]
    assert shipped[0]["test"]["agreement"] == pytest.approx(recorded["agreement"], abs=1e-12)
    assert shipped[0]["test"]["mean_abs_dprob"] == pytest.approx(recorded["mean_abs_dprob"],
                                                                abs=1e-6)
