"""Latency of one variant at one thread count, measured in a fresh child process.

Single image end to end (read the file, decode, preprocess, run, decide), the model call
alone, and throughput over every given image. Each (variant, threads) pair gets its own
process, so TensorFlow's thread pools can be pinned and no runtime disturbs another.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

PERCENTILES = (50, 90, 99)


def summarize(seconds: Sequence[float]) -> dict:
    """p50/p90/p99, mean and min in milliseconds, and the number of runs."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    stats = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    stats.update(mean=float(ms.mean()), min=float(ms.min()), n=int(ms.size))
    return stats


def time_calls(call: Callable[[object], object], items: Sequence, warmup: int,
               runs: int) -> list[float]:
    """Seconds per call cycling through items, after warm-up calls, with GC paused."""
    for i in range(warmup):
        call(items[i % len(items)])
    gc.collect()
    gc.disable()
    try:
        seconds = []
        for i in range(runs):
            start = time.perf_counter()
            call(items[i % len(items)])
            seconds.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return seconds


def measure(runner, files: Sequence[str], images: np.ndarray, warmup: int, runs: int) -> dict:
    """End-to-end and model-only latency of single images, batch throughput, and (for the edge
    runtime) the input check's own time per image beside the model."""
    end_to_end = time_calls(runner.classify, files, warmup, runs)
    model_only = time_calls(runner.probabilities, images, warmup, runs)
    runner.predict(images[:min(len(images), 2)])  # warm the batch path
    start = time.perf_counter()
    runner.predict(images)
    elapsed = time.perf_counter() - start
    timings = {"end_to_end_ms": summarize(end_to_end), "model_only_ms": summarize(model_only),
               "throughput_images_per_s": float(len(images) / elapsed),
               "throughput_images": int(len(images))}
    check = getattr(getattr(runner, "classifier", None), "input_check", None)
    if check is not None:  # the runtime's input check alone, on what predict hands it
        from edge_infer.preprocess import decode_image

        pairs = [(runner.model.run(image).pooled_features, decode_image(path).image)
                 for path, image in zip(files, images)]
        timings["input_check_ms"] = summarize(time_calls(lambda pair: check.check(*pair),
                                                         pairs, warmup, runs))
    return timings


def worker(spec_dict: dict, threads: int, files: list[str], warmup: int, runs: int) -> dict:
    """Measure one variant at one thread count (in this process); Keras in both call modes."""
    from benchmarks.variants import KERAS_MODES, KerasRunner, VariantSpec, make_runner
    from edge_infer.preprocess import preprocess_image

    spec = VariantSpec(**spec_dict)
    images = np.stack([preprocess_image(path) for path in files])
    runner = make_runner(spec, threads)
    if spec.runtime != "keras":
        return {spec.name: measure(runner, files, images, warmup, runs)}
    results = {}
    for mode in KERAS_MODES:  # threads are pinned once per process; the model is shared
        runner = runner if runner.mode == mode else KerasRunner(spec, mode, model=runner.model)
        results[f"{spec.name} ({mode})"] = measure(runner, files, images, warmup, runs)
    return results


def child_env() -> dict[str, str]:
    """This environment, with the project importable and TensorFlow's log quiet."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_worker(spec_dict: dict, threads: int, files: list[str], warmup: int,
               runs: int) -> dict:
    """Run `worker` in a fresh Python process and return its measurements."""
    request = json.dumps({"spec": spec_dict, "threads": threads, "files": files,
                          "warmup": warmup, "runs": runs})
    done = subprocess.run([sys.executable, "-m", "benchmarks.latency"], input=request,
                          capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"latency of {spec_dict['name']} at {threads} thread(s) failed:\n"
                           + done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Child entry point: a JSON request on stdin, one JSON line of results on stdout."""
    request = json.loads(sys.stdin.read())
    result = worker(request["spec"], request["threads"], request["files"],
                    request["warmup"], request["runs"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
