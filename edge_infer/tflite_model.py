"""A TFLite model file behind one interpreter: uint8 images in, class probabilities (and the
last convolutional feature map, when the file has it) out.

uint8 images go straight into an integer model (its input scale must be 1 and zero point 0),
so the int8 path never converts pixels to float; float models get the same values as float32.
Outputs are told apart by rank, not order: rank 2 (1, 3) is the probabilities, rank 4
(1, h, w, C) the feature map. Quantized outputs are dequantized to float32.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edge_infer.spec import CLASS_NAMES, INPUT_SHAPE


@dataclass(frozen=True, eq=False)
class ModelOutput:
    """One image's outputs: probabilities (3,) and the feature map (h, w, C), both float32;
    feature_map is None for a model file with the probabilities only."""

    probs: np.ndarray
    feature_map: np.ndarray | None = None

    @property
    def pooled_features(self) -> np.ndarray | None:
        """The feature map averaged over space (C,): what the classifier head sees."""
        return None if self.feature_map is None else self.feature_map.mean(axis=(0, 1))


class InterpreterMissing(RuntimeError):
    """Neither ai-edge-litert nor tflite-runtime is installed."""


def interpreter_class() -> type:
    """The TFLite Interpreter class: ai-edge-litert, else the older tflite-runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise InterpreterMissing(
                "no TFLite interpreter installed: pip install ai-edge-litert "
                "(or tflite-runtime on older Raspberry Pi OS)"
            ) from None
    return Interpreter


@contextmanager
def native_stderr_silenced(silenced: bool = True) -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null while the block runs (always restored; exceptions
    pass through): the interpreter's C++ log lines ("Created TensorFlow Lite XNNPACK delegate")
    bypass sys.stderr and every logging setting. Process-wide, so for single-threaded use."""
    if not silenced:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TFLiteModel:
    """One interpreter for one model file; not thread-safe (use one per thread). `quiet` drops
    the interpreter's own log lines on stderr while it is created (`native_stderr_silenced`)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1, quiet: bool = False) -> None:
        self.path = os.fspath(path)
        with native_stderr_silenced(quiet):
            self.interpreter = interpreter_class()(model_path=self.path, num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output, self.feature_output = _outputs_by_rank(
            self.path, self.interpreter.get_output_details())
        shape = tuple(int(d) for d in self.input["shape"][1:])
        if shape != INPUT_SHAPE or int(self.output["shape"][-1]) != len(CLASS_NAMES):
            raise ValueError(f"{self.path}: expects {shape} -> {self.output['shape']}, "
                             f"not {INPUT_SHAPE} -> {len(CLASS_NAMES)} classes")
        if self.input_dtype == "uint8" and tuple(self.input["quantization"]) != (1.0, 0):
            raise ValueError(f"{self.path}: uint8 input must have scale 1 and zero point 0, "
                             f"has {self.input['quantization']}")

    @property
    def input_dtype(self) -> str:
        """The input tensor's dtype name: 'uint8' (int8 model, fed the image as is) or
        'float32' (run casts the uint8 image)."""
        return np.dtype(self.input["dtype"]).name

    def io_spec(self) -> dict:
        """Input, output (probabilities) and, if present, feature_map: dtype, shape and
        quantization, as recorded in the manifest."""
        def spec(detail: dict) -> dict:
            scale, zero_point = detail["quantization"]
            return {"dtype": np.dtype(detail["dtype"]).name,
                    "shape": [int(d) for d in detail["shape"]],
                    "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}
        specs = {"input": spec(self.input), "output": spec(self.output)}
        if self.feature_output is not None:
            specs["feature_map"] = spec(self.feature_output)
        return specs

    def run(self, image: np.ndarray) -> ModelOutput:
        """Probabilities and feature map of one preprocessed uint8 image (224, 224, 3)."""
        if image.shape != INPUT_SHAPE or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 {INPUT_SHAPE}, got {image.dtype} {image.shape}")
        batch = image[None] if self.input_dtype == "uint8" else image[None].astype(np.float32)
        self.interpreter.set_tensor(self.input["index"], batch)
        self.interpreter.invoke()
        probs = self._read(self.output)
        if self.feature_output is None:
            return ModelOutput(probs)
        return ModelOutput(probs, self._read(self.feature_output))

    def _read(self, detail: dict) -> np.ndarray:
        """One output tensor of the last invoke, batch dimension dropped, dequantized."""
        raw = self.interpreter.get_tensor(detail["index"])[0]
        scale, zero_point = detail["quantization"]
        if scale:
            return (raw.astype(np.float32) - zero_point) * np.float32(scale)
        return raw.astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 3) for a stack of preprocessed images."""
        return np.stack([self.run(image).probs for image in images])


def _outputs_by_rank(path: str, details: list[dict]) -> tuple[dict, dict | None]:
    """(probabilities detail, feature-map detail or None) of a model's outputs, by rank."""
    ranks = sorted(len(detail["shape"]) for detail in details)
    if ranks not in ([2], [2, 4]):
        raise ValueError(f"{path}: expected outputs of rank 2 (probabilities) and optionally "
                         f"4 (feature map), found ranks {ranks}")
    by_rank = {len(detail["shape"]): detail for detail in details}
    return by_rank[2], by_rank.get(4)
