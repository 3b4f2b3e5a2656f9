"""Keras -> TFLite (float16, int8) conversion, verified against Keras."""
