"""benchmarks.int8_size: per-tensor requantization of chosen layers of an int8 model (what it
buys: benchmarks/reports/int8_size-<arch>.md)."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.lite.tools import flatbuffer_utils
from tiny_models import tiny_classifier

from benchmarks.int8_size import per_channel_layers, with_per_tensor_weights
from benchmarks.int8_study import tflite_probabilities
from convert.tflite import convert_model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def int8_model(images) -> bytes:
    return convert_model(tiny_classifier(), "int8", images, int8_ranges="minmax")


def _weights(model, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A tensor's dequantized values and its scale(s), broadcastable to them."""
    tensor = model.subgraphs[0].tensors[index]
    dtype = np.int8 if tensor.type == flatbuffer_utils.schema_fb.TensorType.INT8 else np.int32
    values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype).reshape(tensor.shape)
    shape = [1] * values.ndim
    shape[tensor.quantization.quantizedDimension] = -1
    scale = np.asarray(tensor.quantization.scale, np.float64).reshape(shape)
    return values * scale, scale


def test_chosen_layers_become_per_tensor_within_half_a_step(int8_model, images) -> None:
    before = flatbuffer_utils.convert_bytearray_to_object(int8_model)
    layers = per_channel_layers(before)
    assert len(layers) >= 3  # stem, depthwise, projection, head ...
    chosen = layers[1]
    changed = with_per_tensor_weights(int8_model, {chosen["op"]})
    after = flatbuffer_utils.convert_bytearray_to_object(changed)
    for key in ("weights", "bias"):
        old, _ = _weights(before, chosen[key])
        new, scale = _weights(after, chosen[key])
        assert scale.size == 1
        assert np.all(np.abs(new - old) <= scale / 2 + 1e-9)
    assert [layer["op"] for layer in per_channel_layers(after)] == [
        layer["op"] for layer in layers if layer is not chosen]
    saved = len(int8_model) - len(changed)
    assert saved >= 2 * (chosen["channels"] - 1) * (4 + 8) - 64  # scale + zero point, w and b
    probs = tflite_probabilities(changed, images)
    assert np.abs(probs - tflite_probabilities(int8_model, images)).max() < 0.1


def test_no_layer_chosen_changes_nothing(int8_model, images) -> None:
    np.testing.assert_array_equal(
        tflite_probabilities(with_per_tensor_weights(int8_model, set()), images),
        tflite_probabilities(int8_model, images))
