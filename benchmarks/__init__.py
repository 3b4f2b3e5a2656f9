"""The project's metrics, `edge-infer evaluate`'s figures, and the benchmark of every model
variant against Keras (accuracy, latency, cold start, memory, size)."""
