"""Training of the Keras models (EfficientNetB0 and EfficientNet-Lite0) and the BUSI split."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up log quiet
