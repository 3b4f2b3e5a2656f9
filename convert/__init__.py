"""Keras -> TFLite (float16, int8) conversion, verified against Keras."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up log quiet
