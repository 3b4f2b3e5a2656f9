"""The architecture's import rules, read from the source: the runtime imports no pipeline code,
the pipeline's arrows point one way, no module-level import cycle, every third-party import is
declared in setup.cfg, and the light runtime loads none of the heavy libraries."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = ("edge_infer", "train", "convert", "benchmarks", "tools", "busi")
# Which project packages each one may import (besides itself).
ALLOWED = {
    "edge_infer": set(),
    "train": {"edge_infer"},
    "convert": {"edge_infer", "train.datasets"},
    "benchmarks": {"edge_infer", "train", "convert"},
    "tools": {"edge_infer"},
    "busi": {"edge_infer", "train", "convert", "benchmarks"},
}
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image",
                 "yaml": "pyyaml", "python_multipart": "python-multipart",
                 "fastapi_offline": "fastapi-offline", "ai_edge_litert": "ai-edge-litert",
                 "tensorflow": "tensorflow-cpu", "tflite_runtime": "tflite-runtime"}
OPTIONAL = {"tflite_runtime"}  # the interpreter's fallback on older Raspberry Pi OS
HEAVY = ("tensorflow", "keras", "sklearn", "scipy", "matplotlib", "fastapi", "onnxruntime")


def modules() -> dict[str, Path]:
    """Every project module by dotted name."""
    found = {}
    for path in sorted(REPO.glob("**/*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] not in PROJECT and relative.name != "busi.py":
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names a file imports (module level only, if asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def owner(module: str) -> str:
    return module.split(".")[0]


def test_each_package_imports_only_what_it_may() -> None:
    known = modules()
    broken = []
    for name, path in known.items():
        package = owner(name)
        for imported in imports(path):
            target = owner(imported)
            if target not in PROJECT or target == package:
                continue
            if not any(imported == rule or imported.startswith(rule + ".") or rule == target
                       for rule in ALLOWED[package]):
                broken.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not broken, "\n".join(broken)


def test_no_module_level_import_cycle() -> None:
    known = modules()
    graph = {name: {m for m in imports(path, top_level_only=True) if m in known and m != name}
             for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt])
                            if nxt in trail else f"import cycle through {nxt}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def declared_distributions() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    text = config["options"]["install_requires"] + "\n".join(
        config["options.extras_require"].values())
    return {re.split(r"[<>=!;\[ ]", line.strip())[0].lower()
            for line in text.splitlines() if line.strip()}


def test_every_third_party_import_is_declared() -> None:
    declared = declared_distributions()
    stdlib = set(sys.stdlib_module_names)
    missing = set()
    for path in [*modules().values(), *REPO.glob("tests/*.py")]:
        for imported in imports(path):
            top = owner(imported)
            if top in stdlib or top in PROJECT or top in OPTIONAL or top == "__future__":
                continue
            if path.parent.name == "tests" and top in {"conftest", "tiny_models", "fake_images",
                                                               "fuzz_corpus", "required"}:
                continue
            if DISTRIBUTIONS.get(top, top).lower().replace("_", "-") not in declared:
                missing.add(f"{top} ({path.relative_to(REPO)})")
    assert not missing, f"imported but not declared in setup.cfg: {sorted(missing)}"


def test_light_runtime_loads_no_heavy_library() -> None:
    code = ("import sys, edge_infer, edge_infer.cli; from edge_infer import Classifier; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_plain_install_packages_only_the_runtime() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    packages = config["options"]["packages"].split()
    assert all(owner(name) == "edge_infer" for name in packages), packages
    scripts = config["options.entry_points"]["console_scripts"].split("\n")
    assert [line.split("=")[0].strip() for line in scripts if line.strip()] == ["edge-infer"]
