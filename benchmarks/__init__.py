"""Accuracy and latency benchmarks of every model variant against Keras."""
