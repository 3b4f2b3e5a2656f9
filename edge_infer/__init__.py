"""busi-edge light runtime: shared preprocessing and decision rule, and the TFLite classifier.

Importing this package never imports TensorFlow or Keras.
"""

from edge_infer.decision import Decision, decide
from edge_infer.preprocess import ImageError, decode_image, preprocess_image, to_model_input
from edge_infer.spec import CLASS_NAMES, INPUT_SHAPE, INPUT_SIZE, PREPROCESSING_ID

__all__ = [
    "CLASS_NAMES",
    "INPUT_SHAPE",
    "INPUT_SIZE",
    "PREPROCESSING_ID",
    "Decision",
    "ImageError",
    "decide",
    "decode_image",
    "preprocess_image",
    "to_model_input",
]
