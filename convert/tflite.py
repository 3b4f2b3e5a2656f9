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

import flatbuffers
import keras
import numpy as np
import tensorflow as tf

from convert.feature_output import with_feature_map
from convert.int8_choices import DEFAULT_INT8_RANGES, INT8_RANGES
from convert.int8_ranges import with_exact_input_scaling, with_mse_ranges
from convert.tf_private import (
    calibrate_only,
    quantize_calibrated,
    read_flatbuffer,
    strip_strings,
)

VARIANTS: tuple[str, ...] = ("float32", "float16", "dynamic", "int8")
TFLITE_FILE_IDENTIFIER = b"TFL3"  # the schema's file_identifier


def _representative(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


def int8_converter(model: keras.Model, calibration: np.ndarray | None,
                   feature_map: bool = True) -> tf.lite.TFLiteConverter:
    """The full-integer converter: uint8 in and out, ranges calibrated on `calibration`."""
    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 conversion needs calibration images")
    converter = tf.lite.TFLiteConverter.from_keras_model(
        with_feature_map(model) if feature_map else model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter


def calibrated_model(model: keras.Model, calibration: np.ndarray,
                     feature_map: bool = True) -> bytes:
    """The float TFLite model with each tensor's calibration min / max recorded in it (the
    converter's first half, as its quantization debugger uses it)."""
    return calibrate_only(int8_converter(model, calibration, feature_map))


def _int8(model: keras.Model, calibration: np.ndarray | None, feature_map: bool,
          int8_ranges: str) -> bytes:
    """The full-integer model with the chosen activation ranges (names still in)."""
    if int8_ranges == "refined":
        calibrated = calibrated_model(model, calibration, feature_map)
        refined, _ = with_mse_ranges(calibrated, calibration)
        return quantize_calibrated(with_exact_input_scaling(refined, model))
    with contextlib.redirect_stdout(io.StringIO()):
        return int8_converter(model, calibration, feature_map).convert()


def convert_model(model: keras.Model, variant: str, calibration: np.ndarray | None = None,
                  feature_map: bool = True,
                  int8_ranges: str = DEFAULT_INT8_RANGES) -> bytes:
    """Convert a Keras model; int8 needs calibration images (uint8, N x 224 x 224 x 3).
    feature_map: also output the GAP layer's input (see `with_feature_map`);
    int8_ranges: one of INT8_RANGES (refined needs a Rescaling layer on the model's input, as
    every model `python -m busi train` builds has; ValueError otherwise)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    if int8_ranges not in INT8_RANGES:
        raise ValueError(f"unknown int8 ranges {int8_ranges!r}; choose from {INT8_RANGES}")
    if variant == "int8":
        return compacted(_int8(model, calibration, feature_map, int8_ranges))
    converter = tf.lite.TFLiteConverter.from_keras_model(
        with_feature_map(model) if feature_map else model)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


class _Int64VectorSharingBuilder(flatbuffers.Builder):
    """A flatbuffer builder that writes each distinct int64 vector once. In a TFLite model
    those are zero points (per-channel ones all zero: tensors with as many channels can point
    to one vector; flatbuffers allow shared references, TFLite reads each tensor's as before)
    and read-only StableHLO options."""

    def __init__(self, initial_size: int) -> None:
        super().__init__(initial_size)
        self._int64_vectors: dict[bytes, int] = {}

    def CreateNumpyVector(self, x: np.ndarray) -> int:  # flatbuffers' method name
        if x.dtype != np.int64:
            return super().CreateNumpyVector(x)
        key = x.tobytes()
        if key not in self._int64_vectors:
            self._int64_vectors[key] = super().CreateNumpyVector(x)
        return self._int64_vectors[key]


def compacted(model_bytes: bytes) -> bytes:
    """The same model in fewer bytes, for the int8 size target: without debug strings (tensor
    and subgraph names, description, signature: 49 KB of Lite0's int8; the runtime finds its
    tensors by shape) and with identical zero-point vectors stored once (all zeros: 300 KB)."""
    model = read_flatbuffer(model_bytes)
    for buffer in model.buffers:
        if buffer.offset > 1:  # data stored after the flatbuffer (some tools write that layout)
            buffer.data = np.frombuffer(model_bytes[buffer.offset:buffer.offset + buffer.size],
                                        np.uint8)
            buffer.offset = buffer.size = 0
    strip_strings(model)
    builder = _Int64VectorSharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def float32_weight_bytes(model: keras.Model) -> int:
    """Size of the model's weights stored as float32: the baseline of the size target."""
    return int(model.count_params()) * 4
