"""The variants under test and one runner per runtime: uint8 image in, probabilities out.

Runtimes are imported only when a runner is built, so a TFLite child process never loads
TensorFlow or ONNX Runtime.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Union

import numpy as np

from edge_infer.classifier import Result
from edge_infer.decision import Decision, decide
from edge_infer.preprocess import preprocess_image
from edge_infer.spec import INPUT_SHAPE

BATCH = 32
KERAS_MODES: tuple[str, ...] = ("predict", "tf.function")


@dataclass(frozen=True)
class VariantSpec:
    """One model under test: its runtime, precision, file and validated threshold."""

    name: str
    runtime: str  # "keras", "tflite" or "onnx"
    precision: str
    path: str
    threshold: float
    threshold_source: str
    key: str | None = None  # manifest key (TFLite variants run through edge_infer.Classifier)
    manifest: str | None = None
    temperature: float | None = None  # fitted on validation; None: outputs used as they are

    def to_dict(self) -> dict:
        """The spec as JSON-ready fields (how child processes receive it)."""
        return asdict(self)


def configure_tensorflow_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools; only possible before TensorFlow runs its first op."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


class _BatchRunner:
    """What a runtime that takes batches needs beyond `_run` (a float32 batch -> (N, 3))."""

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (3,) of one preprocessed uint8 image."""
        return self._run(image[None])[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 3), in batches of BATCH."""
        return np.concatenate([self._run(images[i:i + BATCH])
                               for i in range(0, len(images), BATCH)])

    def classify(self, path: str | os.PathLike) -> Decision:
        """Decode, preprocess, run and decide one image file."""
        return decide(self.probabilities(preprocess_image(path)))


class KerasRunner(_BatchRunner):
    """The Keras model through `model.predict` or `model(x, training=False)` in a tf.function."""

    def __init__(self, spec: VariantSpec, mode: str = "predict", threads: int | None = None,
                 model=None) -> None:
        if mode not in KERAS_MODES:
            raise ValueError(f"mode must be one of {KERAS_MODES}, got {mode!r}")
        if threads is not None:
            configure_tensorflow_threads(threads)
        import keras
        import tensorflow as tf

        self.mode = mode
        self.model = model if model is not None else keras.models.load_model(spec.path)
        self._call = tf.function(lambda x: self.model(x, training=False),
                                 input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.float32)
        if self.mode == "predict":
            return self.model.predict(batch, batch_size=BATCH, verbose=0)
        return self._call(batch).numpy()


class TFLiteRunner:
    """A shipped TFLite model through the edge runtime: `Classifier.predict` end to end, and the
    same file on its own interpreter for the model-only timings."""

    def __init__(self, spec: VariantSpec, threads: int) -> None:
        from edge_infer.classifier import Classifier
        from edge_infer.tflite_model import TFLiteModel

        self.classifier = Classifier(spec.key or spec.path, threads=threads,
                                     manifest_file=spec.manifest)
        self.model = TFLiteModel(self.classifier.entry.path, threads)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (3,) of one preprocessed uint8 image (set input, invoke, read output)."""
        return self.model.run(image).probs

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 3), one image per invoke (the models take batch 1)."""
        return self.model.predict(images)

    def classify(self, path: str | os.PathLike) -> Result:
        """The runtime's own path: decode, preprocess, invoke, temperature, decision, check."""
        return self.classifier.predict(path)


class OnnxRunner(_BatchRunner):
    """An ONNX model through one ONNX Runtime CPU session."""

    def __init__(self, spec: VariantSpec, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(spec.path, options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]


Runner = Union[KerasRunner, TFLiteRunner, OnnxRunner]


def make_runner(spec: VariantSpec, threads: int, mode: str = "predict") -> Runner:
    """The runner for a variant at a thread count; `mode` picks the Keras call."""
    if spec.runtime == "keras":
        return KerasRunner(spec, mode, threads)
    if spec.runtime == "tflite":
        return TFLiteRunner(spec, threads)
    if spec.runtime == "onnx":
        return OnnxRunner(spec, threads)
    raise ValueError(f"unknown runtime {spec.runtime!r}")
