"""benchmarks.int8_study: int8-grid weight snapping, empirical bias correction and the study's
TFLite runner (its numbers: benchmarks/reports/int8_study-<arch>.md)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from tiny_models import tiny_classifier

from benchmarks.int8_study import (
    _conv_bn_pairs,
    channel_means,
    debugger_ranking,
    int8_with_float_fallback,
    margin_counts,
    snap_to_int8_grid,
    snapped_with_bias_correction,
    tflite_probabilities,
)
from edge_infer.datasets import load_images, split_files
from edge_infer.tflite_model import TFLiteModel


def folded(kernel: np.ndarray, conv: keras.layers.Layer,
           batch_norm: keras.layers.Layer | None) -> tuple[np.ndarray, int]:
    """The kernel with its BatchNorm folded in (as TFLite quantizes it) and the channel axis."""
    axis = 2 if isinstance(conv, keras.layers.DepthwiseConv2D) else 3
    if batch_norm is None:
        return np.asarray(kernel, np.float64), axis
    fold = np.asarray(batch_norm.gamma) / np.sqrt(np.asarray(batch_norm.moving_variance)
                                                  + batch_norm.epsilon)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    return np.asarray(kernel, np.float64) * fold.reshape(shape), axis


def backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def test_pairs_find_each_convolution_and_its_batch_norm() -> None:
    pairs = _conv_bn_pairs(backbone_of(tiny_classifier()))
    assert [(conv.name, bn.name if bn else None) for conv, bn in pairs] == [
        ("stem_conv", "stem_bn"), ("dw", "dw_bn"), ("project", "project_bn"),
        ("biased_conv", None)]


def test_snapped_folded_weights_sit_on_the_per_channel_int8_grid() -> None:
    model = tiny_classifier()
    for conv, batch_norm in _conv_bn_pairs(backbone_of(model)):
        before, _ = folded(np.asarray(conv.kernel), conv, batch_norm)
        snap_to_int8_grid(conv, batch_norm)
        after, axis = folded(np.asarray(conv.kernel), conv, batch_norm)
        others = tuple(a for a in range(4) if a != axis)
        step = np.abs(after).max(axis=others, keepdims=True) / 127
        levels = after / step
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        np.testing.assert_allclose(np.abs(levels).max(axis=others), 127, atol=1e-3)
        assert np.all(np.abs(after - before) <= step / 2 + 1e-6)  # at most half a step
        again = np.asarray(conv.kernel).copy()
        snap_to_int8_grid(conv, batch_norm)
        np.testing.assert_allclose(np.asarray(conv.kernel), again, rtol=1e-6)


def test_bias_correction_restores_every_layer_output_mean(tmp_path: Path) -> None:
    path = tmp_path / "tiny.keras"
    tiny_classifier().save(path)
    images = np.random.default_rng(1).integers(0, 256, (24, 16, 16, 3)).astype(np.uint8)
    corrected = snapped_with_bias_correction(path, images)
    reference = keras.models.load_model(path)
    corrected_bb, reference_bb = backbone_of(corrected), backbone_of(reference)
    snapped_only = keras.models.load_model(path)
    for conv, batch_norm in _conv_bn_pairs(backbone_of(snapped_only)):
        snap_to_int8_grid(conv, batch_norm)
    gap_before = gap_after = 0.0
    for name in ("stem_bn", "dw_bn", "project_bn", "biased_conv"):
        want = channel_means(reference_bb, reference_bb.get_layer(name), images)
        got = channel_means(corrected_bb, corrected_bb.get_layer(name), images)
        np.testing.assert_allclose(got, want, atol=1e-4)
        uncorrected = backbone_of(snapped_only)
        gap_before += np.abs(channel_means(uncorrected, uncorrected.get_layer(name), images)
                             - want).sum()
        gap_after += np.abs(got - want).sum()
    assert gap_before > 10 * gap_after  # the snapping alone did shift the means


def test_margin_counts_counts_barely_decided_images() -> None:
    probs = np.array([[0.5, 0.499, 0.001], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33], [1, 0, 0]])
    assert margin_counts(probs) == {"below_0.003906": 1, "below_0.02": 2, "below_0.05": 2,
                                    "below_0.1": 2}


def test_study_runner_matches_the_runtime_on_the_shipped_int8(shipped_int8: Path,
                                                              busi_root: Path) -> None:
    images, _ = load_images(split_files("test")[:5], busi_root)
    runtime = TFLiteModel(shipped_int8, 2)
    expected = np.stack([runtime.probabilities(image) for image in images])
    np.testing.assert_allclose(tflite_probabilities(shipped_int8.read_bytes(), images),
                               expected, atol=1e-7)


@pytest.fixture(scope="module")
def shipped_int8() -> Path:
    from edge_infer.manifest import resolve_model

    return resolve_model("efficientnet-lite0/int8").path


def test_float_fallback_keeps_the_uint8_contract_and_stays_close_to_keras() -> None:
    model = tiny_classifier(lite0_stem=True)
    images = np.random.default_rng(5).integers(0, 256, (24, 16, 16, 3)).astype(np.uint8)
    ranking = debugger_ranking(model, images)
    steps = [row["rmse_steps"] for row in ranking]
    assert steps == sorted(steps, reverse=True) and steps[0] > 0
    fallback = bytes(int8_with_float_fallback(model, images, [ranking[0]["tensor"]]))
    source = Interpreter(model_content=fallback).get_input_details()[0]
    assert source["dtype"] == np.uint8 and source["quantization"] == (1.0, 0)
    keras_probs = model.predict(images.astype(np.float32), verbose=0)
    assert np.abs(tflite_probabilities(fallback, images) - keras_probs).max() < 0.05
