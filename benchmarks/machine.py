"""The machine and software a benchmark ran on."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

PACKAGES: tuple[str, ...] = ("numpy", "pillow", "tensorflow-cpu", "tensorflow", "keras",
                             "ai-edge-litert", "tflite-runtime", "onnxruntime", "onnx",
                             "tf2onnx", "scikit-learn")


def command_line(command: str) -> str:
    """How this run was invoked, as `python -m busi COMMAND ARGS` (sys.argv holds COMMAND too
    when run through busi.py, and not when run as `python -m benchmarks...`)."""
    args = sys.argv[1:]
    if args and args[0] == command:
        args = args[1:]
    return " ".join([f"python -m busi {command}", shlex.join(args)]).strip()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else the platform's answer)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, cores, OS, Python, package versions and the load average right now."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
