"""Keras model -> TFLite bytes: float32, float16 weights, dynamic range, or full-integer int8.

The int8 model takes uint8 pixels and returns uint8 probabilities, so the edge runtime feeds
the shared preprocessing output straight in; its activation ranges come from a representative
set of preprocessed BUSI validation images. By default every variant also outputs the last
convolutional feature map (uint8 in the int8 model), from which the runtime computes the
exact class activation map (convert/feature_output.py).
"""

from __future__ import annotations

import contextlib
import io

import keras
import numpy as np
import tensorflow as tf

from convert.feature_output import with_feature_map

VARIANTS: tuple[str, ...] = ("float32", "float16", "dynamic", "int8")


def _representative(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


def convert_model(model: keras.Model, variant: str, calibration: np.ndarray | None = None,
                  feature_map: bool = True) -> bytes:
    """Convert a Keras model; int8 needs calibration images (uint8, N x 224 x 224 x 3).
    feature_map: also output the GAP layer's input (see `with_feature_map`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    source = with_feature_map(model) if feature_map else model
    converter = tf.lite.TFLiteConverter.from_keras_model(source)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 conversion needs calibration images")
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def float32_weight_bytes(model: keras.Model) -> int:
    """Size of the model's weights stored as float32: the baseline of the size target."""
    return int(model.count_params()) * 4
