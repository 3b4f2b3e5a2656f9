"""Cold start: a fresh Python process that imports a runtime, loads a model and classifies one
image file; timed from spawn to its first result, with the child's own peak RSS.

Peak RSS is the child's VmHWM on Linux: there `getrusage().ru_maxrss` carries the parent's
peak over fork + exec (a 2 GB benchmark parent would make every child look 2 GB). Elsewhere
`getrusage` is used.

TFLite variants take the edge runtime's path (`edge_infer.Classifier`), which must not import
TensorFlow; the child reports whether it did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.latency import child_env


def measure_cold_start(spec_dict: dict, image: str, threads: int, repeats: int) -> dict:
    """Median and every run's spawn-to-first-result seconds, with the largest child peak RSS."""
    request = json.dumps({"spec": spec_dict, "image": image, "threads": threads})
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.coldstart", request],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=child_env())
        line = child.stdout.readline()
        seconds = time.perf_counter() - start
        _, errors = child.communicate()
        if child.returncode != 0 or not line:
            raise RuntimeError(f"cold start of {spec_dict['name']} failed:\n{errors[-3000:]}")
        runs.append({"seconds": seconds, **json.loads(line)})
    return {"seconds": float(np.median([r["seconds"] for r in runs])),
            "runs_s": [r["seconds"] for r in runs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "tensorflow_imported": any(r["tensorflow_imported"] for r in runs),
            "threads": threads, "image": image, "prediction": runs[0]["prediction"]}


def peak_rss_mib() -> float:
    """This process's own peak resident set size in MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main() -> None:
    """Child entry point: import, load, classify one image, print one JSON line, exit."""
    from benchmarks.variants import VariantSpec, make_runner

    request = json.loads(sys.argv[1])
    runner = make_runner(VariantSpec(**request["spec"]), request["threads"])
    decision = runner.classify(request["image"])
    print(json.dumps({"prediction": decision.prediction, "peak_rss_mib": peak_rss_mib(),
                      "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)


if __name__ == "__main__":
    main()
