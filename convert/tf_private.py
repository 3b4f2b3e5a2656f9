"""Every TensorFlow call outside its public API, in one place.

TensorFlow offers no public way to quantize a model with activation ranges of our own, so the
refined int8 conversion uses the converter's two halves (`calibrate_only`, then
`quantize_calibrated` on the edited ranges) and edits the model through the flatbuffer tools.
`missing()` names whatever of these a TensorFlow release has moved or removed; a test calls it,
so an upgrade fails with that list instead of deep inside a conversion.
"""

from __future__ import annotations

import contextlib
import io

import tensorflow as tf
from tensorflow.lite.python import convert as _lite_convert
from tensorflow.lite.python import util as _lite_util
from tensorflow.lite.tools import flatbuffer_utils

CALIBRATE_ONLY_FLAG = "_experimental_calibrate_only"
BuiltinOperator = flatbuffer_utils.schema_fb.BuiltinOperator
read_flatbuffer = flatbuffer_utils.convert_bytearray_to_object
write_flatbuffer = flatbuffer_utils.convert_object_to_bytearray
strip_strings = flatbuffer_utils.strip_strings


def calibrate_only(converter: tf.lite.TFLiteConverter) -> bytes:
    """The float model with each tensor's calibration min / max recorded in it: the int8
    converter's first half (what its quantization debugger runs)."""
    setattr(converter, CALIBRATE_ONLY_FLAG, True)
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def quantize_calibrated(calibrated: bytes) -> bytes:
    """Full-integer int8 from a calibrated model's recorded ranges, input and output made uint8:
    the converter's second half and its I/O type change."""
    int8 = _lite_convert.mlir_quantize(calibrated)
    return bytes(_lite_util.modify_model_io_type(int8, tf.uint8, tf.uint8))


def missing() -> list[str]:
    """The private names this module relies on that this TensorFlow lacks (empty when all
    are there)."""
    needed = [(_lite_convert, "mlir_quantize"), (_lite_util, "modify_model_io_type"),
              (flatbuffer_utils, "convert_bytearray_to_object"),
              (flatbuffer_utils, "convert_object_to_bytearray"),
              (flatbuffer_utils, "strip_strings"), (flatbuffer_utils, "schema_fb")]
    absent = [f"{module.__name__}.{name}" for module, name in needed
              if not hasattr(module, name)]
    converter = tf.lite.TFLiteConverter.from_keras_model(
        tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)]))
    if not hasattr(converter, CALIBRATE_ONLY_FLAG):
        absent.append(f"TFLiteConverter.{CALIBRATE_ONLY_FLAG}")
    return absent
